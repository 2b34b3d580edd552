"""Benchmarks: pytest-benchmark, one group per (op, shape, mode), providers by name.

Run ``make bench`` (or ``python -m pytest benchmarks --benchmark-enable``); the ratios
against each group's baseline provider, measured in the same run, are printed at the
end and written to ``.benchmarks/ratios.md``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from .ratios import BASELINES, ratio_table

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.fixture
def backend_env(monkeypatch):
    """Set FEDBCS_OPS_BACKEND for a provider; ``reference`` and ``floor`` ignore it."""

    def use(provider: str) -> None:
        if provider == "triton" and DEVICE != "cuda":
            pytest.skip("the triton provider needs a CUDA GPU")
        monkeypatch.setenv("FEDBCS_OPS_BACKEND", "triton" if provider == "triton" else "torch")

    return use


def pytest_sessionfinish(session, exitstatus):
    bs = getattr(session.config, "_benchmarksession", None)
    if bs is None or bs.disabled or not bs.benchmarks:
        return
    rows = [
        (b.group, b.params["provider"], b.stats.min)
        for b in bs.benchmarks
        if b.stats and b.params and "provider" in b.params
    ]
    table = ratio_table(rows, BASELINES)
    for b in bs.benchmarks:
        if "ratio" in b.extra_info:
            details = ", ".join(f"{k} = {v:.4g}" for k, v in sorted(b.extra_info.items()))
            table += f"\n{b.group}: {details}\n"
    out = Path(os.environ.get("FEDBCS_BENCH_REPORT", ".benchmarks/ratios.md"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    session.config.pluginmanager.get_plugin("terminalreporter").write_line("\n" + table)
