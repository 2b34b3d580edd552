"""Where a round's time goes, and how long ``fedbcs --help`` takes (issue 18).

``test_round_phases``: the default experiment (``fedbcs train`` at its defaults: FedBCS on
synthetic-nuclei, 4 sites) for :data:`ROUNDS` rounds into a fresh run folder, :data:`RUNS`
times. Each round's wall time runs from the end of the round before (the start of the run
for round 1) to the end of its own, checkpoint and record included; within it the time of
local training (every client), of the evaluation and of the checkpoint as the rounds'
thread sees it are measured. The first round pays one-time costs (MONAI's import, the
allocator's warm-up) and is left out; the rounds between it and the last are the steady
state of a 30-round run; the last also computes HD95 and ASSD. Fractions of the round, per run, go
to ``extra_info`` as their median and range over the runs, against the targets of
:data:`TARGETS`.

``test_help``: ``fedbcs --help`` and ``fedbcs train --help`` in fresh processes, against
``python -c "import torch"`` (provider ``floor``: what any command that builds a model
pays) timed in the same run.

Run: ``make bench``, or
``OMP_NUM_THREADS=1 .venv/bin/python -m pytest benchmarks/bench_round.py --benchmark-enable -s``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROUNDS, RUNS = 5, 3
# Fraction of a steady round's wall time: at least (train) or at most (the others).
TARGETS = {"train": (">=", 0.85), "checkpoint": ("<=", 0.05)}
PHASES = ("train", "evaluate", "checkpoint")
# The Simulation's method that each phase is the time of.
TIMED_METHODS = ("_train_with_deadline", "evaluate", "_save_checkpoint")


def run_default_experiment(out: Path, sites) -> list[dict[str, float]]:
    """One run of the default experiment in ``out``: per round, its ``wall`` seconds and
    those of each of :data:`PHASES`, and for the last also ``after`` (from the end of the
    last round to the run's return: the wait for the last checkpoint, the final model)."""
    from fedbcs_fl.config import RunConfig
    from fedbcs_fl.run_folder import close_tensorboard
    from fedbcs_fl.simulation import Simulation

    rounds: list[dict[str, float]] = []
    current = dict.fromkeys(PHASES, 0.0)
    ends = [0.0]

    def on_round(record: dict) -> None:
        ends.append(time.perf_counter())
        rounds.append({**current, "wall": ends[-1] - ends[-2]})
        current.update(dict.fromkeys(PHASES, 0.0))

    simulation = Simulation(RunConfig(rounds=ROUNDS), sites, out, False, on_round)
    for phase, name in zip(PHASES, TIMED_METHODS, strict=True):
        setattr(simulation, name, _timed(getattr(simulation, name), current, phase))
    ends[0] = time.perf_counter()
    simulation.run()
    rounds[-1]["after"] = time.perf_counter() - ends[-1]
    close_tensorboard(out)
    return rounds


def _timed(method, totals: dict[str, float], phase: str):
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            totals[phase] += time.perf_counter() - start

    return timed


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def round_fractions(runs: list[list[dict[str, float]]]) -> dict[str, list[float]]:
    """Per run, each phase's share of the steady rounds' wall time (all but the first and
    the last) and of the last round's, and the last round's seconds over a steady round's."""
    fractions: dict[str, list[float]] = {}
    for rounds in runs:
        steady, last = rounds[1:-1], rounds[-1]
        wall = sum(r["wall"] for r in steady)
        for phase in PHASES:
            fractions.setdefault(phase, []).append(sum(r[phase] for r in steady) / wall)
            fractions.setdefault(f"last_{phase}", []).append(last[phase] / last["wall"])
        fractions.setdefault("last_over_steady", []).append(last["wall"] / (wall / len(steady)))
        fractions.setdefault("steady_round_s", []).append(wall / len(steady))
        fractions.setdefault("after_last_s", []).append(last["after"])
    return fractions


def test_round_phases(benchmark):
    from fedbcs_fl.config import RunConfig
    from fedbcs_fl.data import load_sites

    benchmark.group = "round"
    sites = load_sites(RunConfig())
    runs: list[list[dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        benchmark.pedantic(
            lambda: runs.append(run_default_experiment(Path(tmp) / f"run{len(runs)}", sites)),
            rounds=RUNS,
            iterations=1,
        )
    fractions = round_fractions(runs)
    benchmark.extra_info.update({k: statistics.median(v) for k, v in fractions.items()})
    benchmark.extra_info["ratio"] = statistics.median(fractions["train"])
    lines = [f"{name}: {_spread(values)}" for name, values in fractions.items()]
    for phase, (sense, target) in TARGETS.items():
        met = {">=": min, "<=": max}[sense](fractions[phase])
        holds = met >= target if sense == ">=" else met <= target
        lines.append(f"target {phase} {sense} {target}: {'met' if holds else 'NOT met'}")
    print("\nround phases, median [min, max] over runs:\n" + "\n".join(lines))


HELP_COMMANDS = {
    "floor": ["-c", "import torch"],
    "fedbcs --help": ["-c", "import sys; from fedbcs_fl._entry import main; main(['--help'])"],
    "fedbcs train --help": [
        "-c",
        "import sys; from fedbcs_fl._entry import main; main(['train', '--help'])",
    ],
}


@pytest.mark.parametrize("provider", list(HELP_COMMANDS))
def test_help(benchmark, provider):
    benchmark.group = "help"
    command = [sys.executable, *HELP_COMMANDS[provider]]
    benchmark.pedantic(
        lambda: subprocess.run(command, check=False, capture_output=True), rounds=5, iterations=1
    )
