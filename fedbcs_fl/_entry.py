"""The ``fedbcs`` console script.

The base install is the layer alone (``fedbcs_ops``, ``fedbcs_models``); the command needs
the federation stack of the ``fl`` extra. Without it, the command says which extra to
install instead of failing on the first missing import. What the extra holds is read
from the installed distribution's metadata, so pyproject.toml stays its one home.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys

DISTRIBUTION = "fedbcs"
EXTRA = "fl"


def missing_requirements(distribution: str = DISTRIBUTION, extra: str = EXTRA) -> list[str]:
    """The distributions that ``extra`` of ``distribution`` asks for and that are not
    installed; empty when ``distribution`` itself is not installed (run from a source tree)."""
    try:
        requirements = importlib.metadata.requires(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    missing = []
    for requirement in requirements:
        if not re.search(rf"extra\s*==\s*['\"]{re.escape(extra)}['\"]", requirement):
            continue
        name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def main(argv: list[str] | None = None) -> int:
    missing = missing_requirements()
    if missing:
        print(
            f"fedbcs: the command needs the federation stack, which this install lacks "
            f"({', '.join(missing)}); install it with: pip install 'fedbcs[{EXTRA}]'",
            file=sys.stderr,
        )
        return 1
    from .cli import main as cli_main

    return cli_main(argv)
