"""The Flower ServerApp: the run's rounds, and the run folder the simulator writes.

The ServerApp builds the initial model exactly as the simulator does (seeded from the
run's seed), runs :class:`~fedbcs_fl.flower.strategy.AlgorithmStrategy` for the
configured rounds and writes, into ``out-dir`` on the SuperLink's machine and through
:mod:`fedbcs_fl.run_folder` (atomically, as the simulator): ``config.json``,
``metrics.jsonl`` (one line per round, the simulator's keys plus
``evaluation_faults``), ``summary.md``, ``dice.png`` and ``model.safetensors``.
"""

from __future__ import annotations

from collections.abc import Mapping
from logging import INFO
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from ..algorithms import build_algorithm
from ..client import model_weights
from ..config import RunConfig
from ..results import dice_line
from ..run_folder import (
    append_record,
    console_log,
    default_run_dir,
    hold_run_folder,
    holds_run,
    save_model,
    write_config,
    write_run_summary,
)
from .settings import engine_setting, from_run_config
from .strategy import AlgorithmStrategy

app = ServerApp()


def output_dir(config: RunConfig, run_config: Mapping[str, Any]) -> Path:
    """The run's results folder: ``out-dir``, or ``runs/flower-<method>-<dataset>-seed<n>``."""
    out = str(engine_setting(run_config, "out-dir"))
    if out:
        return Path(out).expanduser()
    return default_run_dir(config, flower=True)


def sampling(config: RunConfig, min_nodes: int) -> dict[str, Any]:
    """FedAvg's sampling settings: ``clients_per_round`` of ``min_nodes`` train each round
    (all by default), every node evaluates, and round 1 waits for ``min_nodes``."""
    per_round = config.clients_per_round or min_nodes
    if not 1 <= per_round <= min_nodes:
        raise ValueError(f"clients-per-round must be in [1, min-nodes={min_nodes}]")
    return {
        "fraction_train": per_round / min_nodes,
        "min_train_nodes": per_round,
        "fraction_evaluate": 1.0,
        "min_evaluate_nodes": min_nodes,
        "min_available_nodes": min_nodes,
    }


def run_server(grid: Grid, run_config: Mapping[str, Any]) -> list[dict]:
    """Run every round on ``grid`` and write the results; returns the round records.

    The results folder is held (:func:`~fedbcs_fl.run_folder.hold_run_folder`) for the
    whole run: a folder that another run holds, or that already holds a run, is refused
    before round 1.
    """
    config = from_run_config(run_config)
    out = output_dir(config, run_config)
    with hold_run_folder(out):
        if holds_run(out):
            raise ValueError(f"{out} already holds a run; choose another out-dir")
        with console_log(out):
            return _run_rounds(grid, run_config, config, out)


def _run_rounds(
    grid: Grid, run_config: Mapping[str, Any], config: RunConfig, out: Path
) -> list[dict]:
    write_config(out, config)

    torch.manual_seed(config.seed)  # the simulator's model initialisation
    algorithm = build_algorithm(config)
    initial = model_weights(algorithm.build_model())

    records: list[dict] = []

    def on_round(record: dict) -> None:
        records.append(record)
        append_record(out, record)
        if "mean_dice" in record:
            log(INFO, "round %d: %s", record["round"], dice_line(record))

    strategy = AlgorithmStrategy(
        algorithm,
        config,
        on_round,
        **sampling(config, int(engine_setting(run_config, "min-nodes"))),
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(torch_state_dict=initial),
        num_rounds=config.rounds,
        timeout=float(engine_setting(run_config, "round-timeout")),
    )
    save_model(out, result.arrays.to_torch_state_dict(), config)
    write_run_summary(out, config, records, flower=True)
    log(INFO, "results in %s", out.resolve())
    return records


@app.main()
def main(grid: Grid, context: Context) -> None:
    """The ServerApp entry point."""
    run_server(grid, context.run_config)
