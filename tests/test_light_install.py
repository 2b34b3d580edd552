"""The light install: ``pip install fedbcs`` is the layer (``fedbcs_ops``,
``fedbcs_models``); the federation stack is the ``fl`` extra.

The end-to-end check builds the wheel, installs it without its dependencies into a fresh
virtual environment, and makes only the base requirements' distributions visible there
(their files linked from this environment, so nothing is downloaded and the torch already
on disk is reused). The layer must work in it, the federation stack must be absent, and
the ``fedbcs`` command must name the extra to install.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import fedbcs_models
import fedbcs_ops
from fedbcs_fl import _entry

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement).group(0)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_base_install_is_the_layer_and_the_extra_holds_the_federation_stack():
    project = _pyproject()["project"]
    base = {_canonical(_name(r)) for r in project["dependencies"]}
    assert base == {"torch", "numpy", "einops", "segmentation-models-pytorch"}
    fl = {_canonical(_name(r)) for r in project["optional-dependencies"]["fl"]}
    assert {"flwr", "monai", "finch-clust", "nibabel"} <= fl
    installs = re.findall(r"pip install .*-e '\.\[([a-z,]+)\]'", (ROOT / "Makefile").read_text())
    assert installs and all("fl" in extras.split(",") for extras in installs)


def _public_callables(module):
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                public = not attr.startswith("_") or attr in ("__init__", "forward")
                if public and inspect.isfunction(member):
                    yield f"{module.__name__}.{name}.{attr}", member
        elif inspect.isfunction(obj):
            yield f"{module.__name__}.{name}", obj


@pytest.mark.parametrize("module", [fedbcs_ops, fedbcs_models], ids=lambda m: m.__name__)
def test_public_api_is_fully_annotated(module):
    unannotated = []
    for name, function in _public_callables(module):
        signature = inspect.signature(function)
        for parameter in signature.parameters.values():
            variadic = parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
            bare = parameter.annotation is inspect.Parameter.empty
            if parameter.name not in ("self", "cls") and not variadic and bare:
                unannotated.append(f"{name}({parameter.name})")
        no_return = signature.return_annotation is inspect.Signature.empty
        if no_return and function.__name__ != "__init__":
            unannotated.append(f"{name} -> ?")
    assert not unannotated
    assert (Path(module.__file__).parent / "py.typed").is_file()


def test_the_command_names_the_extra_when_the_stack_is_missing(monkeypatch, capsys):
    requirements = ["torch>=2.4", 'flwr>=1.42; extra == "fl"', 'pytest>=8; extra == "test"']
    monkeypatch.setattr(importlib.metadata, "requires", lambda name: requirements)
    installed = {"torch"}

    def version(name):
        if name not in installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return "1"

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert _entry.missing_requirements() == ["flwr"]
    assert _entry.main(["--help"]) == 1
    assert "pip install 'fedbcs[fl]'" in capsys.readouterr().err
    installed.add("flwr")
    assert _entry.missing_requirements() == []


def _base_closure() -> list[importlib.metadata.Distribution]:
    """The installed distributions that the base requirements need, transitively
    (requirements behind an extra are not followed)."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    pending = [_name(r) for r in _pyproject()["project"]["dependencies"]]
    while pending:
        name = _canonical(pending.pop())
        if name in seen:
            continue
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # a platform-only requirement that this machine does not have
        seen[name] = distribution
        for requirement in distribution.requires or []:
            if "extra ==" not in requirement and "extra==" not in requirement:
                pending.append(_name(requirement))
    return list(seen.values())


def _link_distributions(distributions, into: Path) -> None:
    for distribution in distributions:
        root = Path(distribution.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in distribution.files or []}
        for top in tops:
            source = root / top
            target = into / top
            if top != ".." and source.exists() and not target.exists():
                target.symlink_to(source)


@pytest.mark.e2e
def test_wheel_without_extras_gives_the_layer_and_points_at_the_extra(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, ROOT],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("fedbcs-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", python]
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--quiet", wheel],
        check=True,
        capture_output=True,
    )
    base = tmp_path / "base"
    base.mkdir()
    _link_distributions(_base_closure(), base)
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "fedbcs-base.pth").write_text(f"{base}\n")

    layer = (
        "import torch\n"
        "from fedbcs_ops import FSR\n"
        "from fedbcs_models import UNet, insert_fsr\n"
        "y = FSR(4)(torch.randn(2, 4, 8, 8))\n"
        "assert y.shape == (2, 4, 8, 8) and torch.isfinite(y).all()\n"
        "model = insert_fsr(UNet(in_channels=3, classes=2, init_features=4), [1, 2])\n"
        "assert model(torch.randn(2, 3, 16, 16)).shape == (2, 2, 16, 16)\n"
        "import importlib.util as u\n"
        "assert u.find_spec('flwr') is None and u.find_spec('monai') is None\n"
        "import fedbcs_ops, pathlib\n"
        "assert (pathlib.Path(fedbcs_ops.__file__).parent / 'py.typed').is_file()\n"
    )
    # -I: this environment's site-packages only; neither the tree under test nor PYTHONPATH.
    checked = subprocess.run([python, "-I", "-c", layer], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    command = subprocess.run(
        [venv / "bin" / "fedbcs", "train", "--help"], capture_output=True, text=True
    )
    assert command.returncode == 1
    assert "pip install 'fedbcs[fl]'" in command.stderr
    assert "Traceback" not in command.stderr
