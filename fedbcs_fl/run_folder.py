"""The run folder: every file a run writes, written the same way by both engines.

| file | written by |
|---|---|
| ``config.json`` | :func:`write_config`, before the first round |
| ``metrics.jsonl`` | :func:`append_record`, one line per round |
| ``summary.md``, ``dice.png`` | :func:`write_run_summary`, after the last round |
| ``model.safetensors`` | :func:`save_model`, after the last round |

The simulator also keeps ``checkpoint.pt`` there (:mod:`fedbcs_fl.checkpoint`) and, for
real data, ``split.json``.

Every file is written whole to a temporary file in the same folder, flushed, fsynced and
renamed over the old one (then the folder is fsynced), so a crash at any point leaves
either the old file or the new one, never half of one. ``metrics.jsonl`` is the one file
that grows: each record is appended as one whole line and fsynced, so a kill leaves at
most a torn last line, which :func:`read_records` drops.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save

from .config import RunConfig
from .results import CLASS_NOTE, classes_of, final_round, plot_dice, summary_tables

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.md"
PLOT_FILE = "dice.png"
MODEL_FILE = "model.safetensors"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, before_rename=None) -> None:
    """Write ``data`` to ``path`` atomically. ``before_rename`` is a test hook."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if before_rename is not None:
        before_rename()
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def default_run_dir(config: RunConfig, flower: bool = False) -> Path:
    """``runs/<method>-<dataset>-seed<n>``, or ``runs/flower-...`` for a Flower run."""
    prefix = "flower-" if flower else ""
    return Path("runs") / f"{prefix}{config.method}-{config.dataset}-seed{config.seed}"


def holds_run(folder: str | Path) -> bool:
    """Whether ``folder`` already holds a run (finished or not): it has round records."""
    return (Path(folder) / METRICS_FILE).exists()


def is_finished(folder: str | Path) -> bool:
    """Whether ``folder`` holds a finished run: its final model is written."""
    return (Path(folder) / MODEL_FILE).exists()


def write_config(folder: str | Path, config: RunConfig) -> None:
    """``config.json`` of a run, in ``folder`` (created if need be)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / CONFIG_FILE, config.to_json())


def read_config(folder: str | Path) -> RunConfig:
    """The :class:`RunConfig` of the run in ``folder``."""
    return RunConfig.load(Path(folder) / CONFIG_FILE)


def _jsonl_line(record: dict) -> str:
    return json.dumps(record, sort_keys=True) + "\n"


def append_record(folder: str | Path, record: dict) -> None:
    """Append a round record to ``metrics.jsonl`` as one whole line, and fsync."""
    with open(Path(folder) / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(_jsonl_line(record))
        f.flush()
        os.fsync(f.fileno())


def read_records(folder: str | Path) -> list[dict]:
    """The round records of ``folder``'s ``metrics.jsonl``, in order.

    A last line without its newline was torn by a kill mid-append and is dropped.

    Raises:
        FileNotFoundError: ``folder`` has no ``metrics.jsonl``.
        ValueError: a whole line is not JSON (the message names the file and the line);
            appends never leave one, so the file was changed by other hands.
    """
    path = Path(folder) / METRICS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {folder} a fedbcs run folder?")
    *lines, _torn = path.read_text(encoding="utf-8").split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {number} is not a JSON record: {error}") from None
    return records


def keep_records(folder: str | Path, last_round: int) -> list[dict]:
    """Rewrite ``metrics.jsonl`` atomically with only the records up to ``last_round``
    (none when there is no such file yet), and return them: what resuming keeps."""
    kept = []
    if holds_run(folder):
        kept = [r for r in read_records(folder) if r["round"] <= last_round]
    atomic_write_text(Path(folder) / METRICS_FILE, "".join(map(_jsonl_line, kept)))
    return kept


def write_summary(
    path: str | Path,
    title: str,
    setting: str,
    runs: list[tuple[str, list[dict]]],
    baseline: str | None = None,
) -> str:
    """Write a ``summary.md``: a title, a line on the setting, and
    :func:`~fedbcs_fl.results.summary_tables`, which it returns."""
    tables = summary_tables(runs, baseline)
    atomic_write_text(path, f"# {title}\n\n{setting}\n\n{tables}")
    return tables


def write_run_summary(
    folder: str | Path,
    config: RunConfig,
    records: list[dict],
    baseline: str | Path | None = None,
    flower: bool = False,
) -> str:
    """``summary.md`` and ``dice.png`` of a finished run; returns the summary's tables.

    Args:
        folder: the run folder.
        config: the run's configuration.
        records: the run's round records.
        baseline: a run folder to report Δ against (default: none).
        flower: a Flower run (default False): the title says so, and the setting says
            that each site's SuperNode evaluated the model.
    """
    folder = Path(folder)
    runs = [(config.method, records)]
    label = None
    if baseline:
        label = read_config(baseline).method + " (baseline)"
        runs.insert(0, (label, read_records(baseline)))
    title = f"{config.method} on {config.dataset}" + (" (Flower)" if flower else "")
    evaluated = ", evaluated by each site's SuperNode" if flower else ""
    setting = (
        f"{config.rounds} rounds, seed {config.seed}. Foreground Dice (%) of the global model "
        f"on each site's test split{evaluated}."
    )
    if classes_of(final_round(records)):
        setting += f" {CLASS_NOTE}"
    tables = write_summary(folder / SUMMARY_FILE, title, setting, runs, label)
    atomic_write_bytes(folder / PLOT_FILE, plot_dice(records, title=title))
    return tables


def save_model(folder: str | Path, weights: dict[str, torch.Tensor], config: RunConfig) -> None:
    """The global model as ``model.safetensors`` (metadata: method, config version)."""
    metadata = {"method": config.method, "version": str(config.version)}
    data = save({k: v.contiguous() for k, v in weights.items()}, metadata)
    atomic_write_bytes(Path(folder) / MODEL_FILE, data)
