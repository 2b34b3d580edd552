"""docs/data.md's worked example ("Your own data"), run as written: its Python builds the
two-site, three-class folder, and its ``fedbcs`` commands check it and train FedBCS."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from fedbcs_fl.cli import main

DOCS = Path(__file__).resolve().parents[2] / "docs" / "data.md"


def _section() -> str:
    text = DOCS.read_text(encoding="utf-8")
    start = text.index("## Your own data")
    return text[start : text.index("\n## ", start)]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", _section(), flags=re.DOTALL)


def _commands() -> dict[str, list[str]]:
    """The example's ``fedbcs`` commands by subcommand, as argument lists."""
    (bash,) = _blocks("bash")
    lines = [line.split("#")[0].strip() for line in bash.splitlines()]
    return {args[1]: args[1:] for args in map(shlex.split, lines) if args[:1] == ["fedbcs"]}


def _build_folder(folder: Path, monkeypatch) -> None:
    monkeypatch.chdir(folder)
    (code,) = _blocks("python")
    exec(compile(code, str(DOCS), "exec"), {"__name__": "make_data"})


def test_the_example_builds_a_folder_that_check_data_passes_as_shown(tmp_path, monkeypatch, capsys):
    _build_folder(tmp_path, monkeypatch)
    assert main(_commands()["check-data"]) == 0
    shown = re.search(r"`check-data` prints\n\n```\n(.*?)```", _section(), flags=re.DOTALL)
    assert capsys.readouterr().out == shown.group(1)


@pytest.mark.e2e
def test_the_example_trains_fedbcs_on_three_classes(tmp_path, monkeypatch, capsys):
    _build_folder(tmp_path, monkeypatch)
    train = _commands()["train"]
    assert "--method" not in train  # FedBCS, the default
    assert main([*train, "--rounds", "1", "--quiet"]) == 0  # one round of the five
    summary = (tmp_path / "runs" / "my-first" / "summary.md").read_text()
    assert "| Method | hospital-a | hospital-b | AVG | class 1 | class 2 | Round |" in summary
