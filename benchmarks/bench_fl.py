"""One local training step of FedBCS (round ≥ 2, with global prototypes) against FedAvg.

Same UNet (init_features 32), batch 6, 128×128, one optimiser step. Time is timed with
pytest-benchmark (group ``fl-step``, baseline provider ``fedavg``), and again with the two
methods' steps alternating in one process (:func:`interleaved_times`; group
``fl-step-interleaved``): the machine's drift between pytest-benchmark's two blocks of
steps can exceed the difference being measured, and alternating exposes both methods to
it alike. The step's peak memory is counted exactly (:func:`step_memory_mib`; group
``fl-step-peak-memory``, in MiB through ``extra_info``).
"""

from __future__ import annotations

import statistics
import time

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
    algorithm = build_algorithm(config)
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

    def loss():
        return algorithm.training_loss(model, images, masks, ctx)

    def step():
        algorithm.optimizer_step(model, optimizer, loss)

    return step, model, loss


@pytest.mark.parametrize("provider", ["fedavg", "fedbcs"])
def test_fl_step_time(benchmark, provider):
    benchmark.group = "fl-step"
    step, _, _ = setup_fl_step(provider)
    step()
    benchmark.pedantic(step, rounds=8, iterations=1)


def interleaved_times(rounds: int = 16) -> dict[str, list[float]]:
    """``rounds`` step times (seconds) of FedAvg and of FedBCS, one step of each in turn
    after a warm-up step of each: pair i ran back to back."""
    steps = {method: setup_fl_step(method)[0] for method in ("fedavg", "fedbcs")}
    times: dict[str, list[float]] = {method: [] for method in steps}
    for step in steps.values():
        step()
    for _ in range(rounds):
        for method, step in steps.items():
            start = time.perf_counter()
            step()
            times[method].append(time.perf_counter() - start)
    return times


def test_fl_step_time_interleaved(benchmark):
    """Two ratios: of the fastest steps, and the median of the per-pair ratios (each pair
    ran back to back, so the machine's drift over the run cancels), with its quartiles."""
    benchmark.group = "fl-step-interleaved"
    times = interleaved_times()
    best = {method: min(seconds) for method, seconds in times.items()}
    pairs = [b / a for a, b in zip(times["fedavg"], times["fedbcs"], strict=True)]
    low, median, high = statistics.quantiles(pairs, n=4)
    ratio = best["fedbcs"] / best["fedavg"]
    benchmark.extra_info.update({f"{method}_s": seconds for method, seconds in best.items()})
    benchmark.extra_info.update(ratio=ratio, pair_ratio_median=median)
    benchmark.extra_info.update(pair_ratio_q1=low, pair_ratio_q3=high)
    print(
        f"\nstep time, interleaved (s): {best}  fedbcs / fedavg = {ratio:.3f} (fastest), "
        f"{median:.3f} (median of {len(pairs)} pairs; quartiles {low:.3f}-{high:.3f})"
    )
    benchmark.pedantic(lambda: None, rounds=1)


def step_memory_mib(method: str) -> dict[str, float]:
    """What one training step holds at its peak, counted exactly (MiB).

    The peak of a step is at the end of the forward pass: the tensors autograd saved for
    the backward (counted once per storage, through ``saved_tensors_hooks``), plus the
    parameters, their gradients and Adam's two moments (4 × the parameter bytes). The
    count is deterministic, unlike the resident set size of a process.
    """
    step, model, loss = setup_fl_step(method)
    step()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss()
    state = 4 * sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "activations": sum(saved.values()) / 2**20,
        "state": state / 2**20,
        "total": (sum(saved.values()) + state) / 2**20,
    }


def test_fl_step_peak_memory(benchmark):
    benchmark.group = "fl-step-peak-memory"
    memory = {method: step_memory_mib(method) for method in ("fedavg", "fedbcs")}
    ratio = memory["fedbcs"]["total"] / memory["fedavg"]["total"]
    for method, parts in memory.items():
        benchmark.extra_info.update({f"{method}_{k}_mib": v for k, v in parts.items()})
    benchmark.extra_info["ratio"] = ratio
    print(f"\nstep memory (MiB): {memory}  fedbcs / fedavg = {ratio:.3f}")
    benchmark.pedantic(lambda: None, rounds=1)
