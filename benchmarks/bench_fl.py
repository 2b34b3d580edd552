"""One local training step of FedBCS (round ≥ 2, with global prototypes) against FedAvg.

Same UNet (init_features 32), batch 6, 128×128, one optimiser step. Time is timed with
pytest-benchmark (group ``fl-step``, baseline provider ``fedavg``); peak memory is the
growth of the peak resident set over one step, each provider measured in a fresh process
(group ``fl-step-peak-memory``, reported in MiB through ``extra_info``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from fedbcs_fl.algorithms import build_algorithm
from fedbcs_fl.algorithms.base import ClientUpdate, LocalContext
from fedbcs_fl.client import make_optimizer
from fedbcs_fl.config import RunConfig

BATCH, SIZE, FEATURES = 6, 128, 32


def setup_fl_step(method: str):
    """A zero-argument callable doing one local step of ``method`` from round 2."""
    torch.manual_seed(0)
    config = RunConfig(method=method, init_features=FEATURES, dataset="synthetic-nuclei")
    config = config.resolved()
    algorithm = build_algorithm(config, in_channels=3, num_classes=2)
    model = algorithm.build_model()
    optimizer = make_optimizer(model, config)
    images = torch.rand(BATCH, 3, SIZE, SIZE)
    masks = (torch.rand(BATCH, SIZE, SIZE) > 0.7).long()
    # Round 1 on this batch gives the client payload; the server turns four such clients
    # into the global payload that round 2 trains against.
    ctx = LocalContext(global_payload={}, state={}, device=torch.device("cpu"), last_epoch=True)
    algorithm.training_loss(model, images, masks, ctx)
    payload = algorithm.end_local(model, ctx)
    noisy = [
        {
            k: v + 0.1 * torch.randn_like(v) if v.is_floating_point() else v
            for k, v in payload.items()
        }
        for _ in range(4)
    ]
    global_payload = algorithm.aggregate_payload([ClientUpdate({}, 1, p) for p in noisy], {})
    ctx = LocalContext(global_payload=global_payload, state={}, device=torch.device("cpu"))

    def step():
        algorithm.optimizer_step(
            model, optimizer, lambda: algorithm.training_loss(model, images, masks, ctx)
        )

    return step


@pytest.mark.parametrize("provider", ["fedavg", "fedbcs"])
def test_fl_step_time(benchmark, provider):
    benchmark.group = "fl-step"
    step = setup_fl_step(provider)
    step()
    benchmark.pedantic(step, rounds=5, iterations=1)


_PEAK_SCRIPT = """
import json, os, resource, sys
from benchmarks.bench_fl import setup_fl_step
step = setup_fl_step(sys.argv[1])
page = os.sysconf("SC_PAGE_SIZE")
with open("/proc/self/statm") as f:
    before = int(f.read().split()[1]) * page
step()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"before": before, "peak": peak}))
"""


def step_peak_memory_mib(method: str) -> float:
    """Peak memory one step adds over the set-up state (MiB), in a fresh process.

    ``MALLOC_MMAP_THRESHOLD_=0`` makes every allocation its own mapping, returned on
    free, so the resident set follows the live tensors instead of malloc's caches.
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="0")
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, method],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
        env=env,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return (result["peak"] - result["before"]) / 2**20


def test_fl_step_peak_memory(benchmark):
    benchmark.group = "fl-step-peak-memory"
    peaks = {method: step_peak_memory_mib(method) for method in ("fedavg", "fedbcs")}
    ratio = peaks["fedbcs"] / peaks["fedavg"]
    benchmark.extra_info.update({f"step_peak_mib_{k}": v for k, v in peaks.items()})
    benchmark.extra_info["ratio"] = ratio
    print(f"\nstep peak memory (MiB): {peaks}  fedbcs / fedavg = {ratio:.3f}")
    benchmark.pedantic(lambda: None, rounds=1)
