"""fedbcs_models builds on fedbcs_ops through its public names only (design.md's layers)."""

from __future__ import annotations

import ast
from pathlib import Path

import fedbcs_models
import fedbcs_ops

PUBLIC = set(fedbcs_ops.__all__)


def private_ops_uses(source: str) -> list[tuple[int, str]]:
    """``(line, name)`` of each private ``fedbcs_ops`` name that ``source`` imports or reads.

    Private: a module or name starting with ``_`` under ``fedbcs_ops``, or a name imported
    from ``fedbcs_ops`` that its ``__all__`` does not list.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            path = node.module.split(".")
            if path[0] != "fedbcs_ops":
                continue
            if any(part.startswith("_") for part in path):
                found.append((node.lineno, node.module))
            elif path == ["fedbcs_ops"]:
                found += [(node.lineno, a.name) for a in node.names if a.name not in PUBLIC]
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, a.name)
                for a in node.names
                if a.name.startswith("fedbcs_ops.") and "._" in a.name
            ]
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "fedbcs_ops"
            and node.attr not in PUBLIC
        ):
            found.append((node.lineno, f"fedbcs_ops.{node.attr}"))
    return sorted(found)


def test_the_scan_finds_private_uses():
    source = (
        "from fedbcs_ops._validate import check_tensor\n"
        "from fedbcs_ops import class_sums, _backend\n"
        "import fedbcs_ops._fsr\n"
        "import fedbcs_ops\n"
        "fedbcs_ops._modules.FSR\n"
        "from fedbcs_ops import FSR, reference\n"
        "from ._taps import FeatureTaps\n"
    )
    assert private_ops_uses(source) == [
        (1, "fedbcs_ops._validate"),
        (2, "_backend"),
        (3, "fedbcs_ops._fsr"),
        (5, "fedbcs_ops._modules"),
    ]


def test_fedbcs_models_uses_only_public_fedbcs_ops_names():
    package = Path(fedbcs_models.__file__).parent
    private = [
        f"{path.name}:{line}: {name}"
        for path in sorted(package.glob("*.py"))
        for line, name in private_ops_uses(path.read_text())
    ]
    assert not private, "fedbcs_models uses private fedbcs_ops names:\n" + "\n".join(private)
