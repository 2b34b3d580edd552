"""The run folder: every file a run writes, written the same way by both engines.

| file | written by |
|---|---|
| ``config.json`` | :func:`write_config`, before the first round |
| ``metrics.jsonl`` | :func:`append_record`, one line per round |
| ``tensorboard/`` | :func:`append_record` too: the round's scalars (:func:`scalars`) |
| ``summary.md``, ``dice.png`` | :func:`write_run_summary`, after the last round |
| ``model.safetensors`` | :func:`save_model`, after the last round |
| ``train.log`` | :func:`console_log`: what the console showed, appended on resume |

The simulator also keeps ``checkpoint.pt`` there (:mod:`fedbcs_fl.checkpoint`) and, for
real data, ``split.json``, which a resumed run reads its split from (:func:`split_file`).

A run holds the folder's lock (``.lock``, :func:`hold_run_folder`) from before it reads
its data to its last write, so a second run on the same folder stops at once instead of
mixing its files with the first's. The folder is checked to be one this process can
write in before anything else happens.

Every file is written whole to a temporary file in the same folder, flushed, fsynced and
renamed over the old one (then the folder is fsynced), so a crash at any point leaves
either the old file or the new one, never half of one. ``metrics.jsonl`` is the one file
that grows: each record is appended as one whole line and fsynced, so a kill leaves at
most a torn last line, which :func:`read_records` drops; any other line that is not a
round record is an error naming it.

``--resume`` continues a run with the configuration it was started with; the settings it
may change are :data:`RESUME_MAY_CHANGE` (:func:`resume_conflicts`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from safetensors.torch import load_file, save
from torch import nn

from .config import RunConfig
from .data.sources import data_source
from .privacy import privacy_statement
from .results import CLASS_NOTE, classes_of, communication, final_round, plot_dice, summary_tables
from .weight_privacy import weight_privacy_statement

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.md"
PLOT_FILE = "dice.png"
MODEL_FILE = "model.safetensors"
LOG_FILE = "train.log"
TENSORBOARD_DIR = "tensorboard"
SPLIT_FILE = "split.json"
LOCK_FILE = ".lock"
# What ``--resume`` may change: the rounds (to extend a run, or end it early but not
# before the rounds it has done) and where the data are (the split file checks that the
# cases are the same).
RESUME_MAY_CHANGE = ("rounds", "data_root")


class RunFolderInUse(RuntimeError):
    """Another run holds the run folder's lock."""


# The locks this process holds, by folder: holding is re-entrant (the CLI holds a folder
# from before it reads the data, the Simulation for its rounds).
_LOCKS: dict[Path, FileLock] = {}


def _check_folder_path(folder: Path) -> None:
    """``ValueError`` when ``folder`` is a file or lies under one."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file, not a run folder")
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{folder} cannot be a run folder: {parent} is a file")
            return


@contextmanager
def hold_run_folder(folder: str | Path) -> Iterator[Path]:
    """Create ``folder`` if need be and hold its lock while inside; yields the folder.

    Raises:
        ValueError: ``folder`` is a file, lies under one, or cannot be written in (a
            read-only disk, no permission).
        RunFolderInUse: another process holds the folder (the lock is released by the
            system when a process ends, even by SIGKILL, so a killed run can be resumed).
    """
    folder = Path(folder)
    _check_folder_path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        key = folder.resolve()
        lock = _LOCKS.setdefault(key, FileLock(key / LOCK_FILE, timeout=0, thread_local=False))
        lock.acquire()
    except Timeout:
        raise RunFolderInUse(
            f"{folder} is in use by another run (it holds {folder / LOCK_FILE}): wait for it "
            "to end, or choose another folder"
        ) from None
    except OSError as error:
        raise ValueError(f"cannot write in run folder {folder}: {error.strerror}") from None
    try:
        yield folder
    finally:
        lock.release()


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
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as error:  # e.g. a full disk: leave the old file, and no partial copy
        tmp.unlink(missing_ok=True)
        raise OSError(error.errno, f"cannot write {path}: {error.strerror}") from None
    if before_rename is not None:
        before_rename()
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_report(out: str | Path, stem: str, json_text: str, markdown: str, png: bytes) -> None:
    """A report's ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` in ``out`` (created),
    each written atomically: what ``calibrate-data`` and ``diagnose`` leave."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{stem}.json", json_text)
    atomic_write_text(out / f"{stem}.md", markdown)
    atomic_write_bytes(out / f"{stem}.png", png)


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


def split_file(folder: str | Path) -> Path | None:
    """The run's own ``split.json``, which a resumed real-data run reads its split from, so
    that cases added to the data since can not move between train and test; None when the
    run has none (synthetic data, or a run killed before it wrote one)."""
    path = Path(folder) / SPLIT_FILE
    return path if path.exists() else None


def resume_conflicts(saved: RunConfig, resumed: RunConfig) -> list[str]:
    """The settings in which ``resumed`` differs from ``saved`` that resuming may not change
    (all but :data:`RESUME_MAY_CHANGE`); method options by the values the method uses, so
    an option given at its default is no change."""
    from .algorithms import build_algorithm  # the algorithms import this module's users

    before, after = dataclasses.asdict(saved), dataclasses.asdict(resumed)
    changed = [
        name
        for name in before
        if name not in (*RESUME_MAY_CHANGE, "method_options") and before[name] != after[name]
    ]
    if saved.method != resumed.method:
        return changed
    options = build_algorithm(saved).opt, build_algorithm(resumed).opt
    changed += [
        name
        for name in sorted(set(options[0]) | set(options[1]))
        if options[0].get(name) != options[1].get(name)
    ]
    return changed


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
    """Append a round record to ``metrics.jsonl`` as one whole line, and fsync; then its
    :func:`scalars` to the folder's TensorBoard log."""
    with open(Path(folder) / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(_jsonl_line(record))
        f.flush()
        os.fsync(f.fileno())
    writer = _tensorboard_writer(Path(folder), record["round"])
    for tag, value in scalars(record).items():
        writer.add_scalar(tag, value, record["round"])
    writer.flush()


def scalars(record: dict) -> dict[str, float]:
    """The TensorBoard scalars of a round record: per-site and mean Dice, HD95 and ASSD,
    each client's loss terms, bytes up (all clients) and down, and the round's seconds."""
    out = {}
    for metric in ("dice", "hd95", "assd"):
        for site, value in record.get(metric, {}).items():
            out[f"{metric}/{site}"] = value
        if f"mean_{metric}" in record:
            out[f"{metric}/mean"] = record[f"mean_{metric}"]
    for client, metrics in record.get("client_metrics", {}).items():
        for term, value in metrics.items():
            if term != "steps":
                out[f"loss/{term}/{client}"] = value
    if "bytes_up" in record:
        out["bytes/up"] = sum(record["bytes_up"].values())
        out["bytes/down"] = record["bytes_down"]
    if "seconds" in record:
        out["seconds"] = record["seconds"]
    return {tag: float(value) for tag, value in out.items()}


_WRITERS: dict[Path, object] = {}


def _tensorboard_writer(folder: Path, first_round: int):
    """This process's TensorBoard writer of ``folder``, opened at its first record. It
    purges the events from ``first_round`` on, so a resumed run's redone rounds replace
    what the killed process logged for them."""
    key = folder.resolve()
    if key not in _WRITERS:
        from torch.utils.tensorboard import SummaryWriter

        _WRITERS[key] = SummaryWriter(str(key / TENSORBOARD_DIR), purge_step=first_round)
    return _WRITERS[key]


def close_tensorboard(folder: str | Path) -> None:
    """Close ``folder``'s TensorBoard writer, if this process opened one."""
    writer = _WRITERS.pop(Path(folder).resolve(), None)
    if writer is not None:
        writer.close()


class _Tee(io.TextIOBase):
    """Writes to ``stream`` and, line by line, to ``log``: of a line redrawn with carriage
    returns (a progress bar) only its last state reaches the log."""

    def __init__(self, stream, log):
        self.stream, self.log, self.pending = stream, log, ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.log.write(line.rsplit("\r", 1)[-1] + "\n")
        if lines:
            self.log.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def finish(self) -> None:
        last = self.pending.rsplit("\r", 1)[-1]
        if last:
            self.log.write(last + "\n")
        self.pending = ""
        self.log.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    @property
    def encoding(self):
        return getattr(self.stream, "encoding", "utf-8")

    def fileno(self) -> int:
        return self.stream.fileno()


@contextlib.contextmanager
def console_log(folder: str | Path) -> Iterator[Path]:
    """Copy what this process prints to stdout and stderr into ``folder/train.log``
    (appended: a resumed run continues the log), while it still reaches the console."""
    path = Path(folder) / LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as log:
        tees = [_Tee(sys.stdout, log), _Tee(sys.stderr, log)]
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = tees
        # Flower logs through its own handler, bound to the stream it found at import.
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s: %(message)s"))
        flower = logging.getLogger("flwr")
        flower.addHandler(handler)
        try:
            yield path
        finally:
            flower.removeHandler(handler)
            sys.stdout, sys.stderr = saved
            for tee in tees:
                tee.finish()


def read_records(folder: str | Path) -> list[dict]:
    """The round records of ``folder``'s ``metrics.jsonl``, in order.

    A last line without its newline was torn by a kill mid-append and is dropped.

    Raises:
        FileNotFoundError: ``folder`` has no ``metrics.jsonl``.
        ValueError: a whole line is not JSON, not a round record (a JSON object with an
            integer ``round``), or not a later round than the line before it (the message
            names the file and the line); appends never leave one, so the file was changed
            by other hands.
    """
    path = Path(folder) / METRICS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {folder} a fedbcs run folder?")
    *lines, _torn = path.read_text(encoding="utf-8").split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {number} is not a JSON record: {error}") from None
        if not isinstance(record, dict) or type(record.get("round")) is not int:
            raise ValueError(
                f"{path} line {number} is not a round record (a JSON object with an "
                'integer "round")'
            )
        if records and record["round"] <= records[-1]["round"]:
            raise ValueError(
                f"{path} line {number} is round {record['round']}, after round "
                f"{records[-1]['round']}: the file holds more than one run's records"
            )
        records.append(record)
    return records


def keep_records(folder: str | Path, last_round: int) -> list[dict]:
    """Rewrite ``metrics.jsonl`` atomically with only the records up to ``last_round``
    (none when there is no such file yet), and return them: what resuming keeps."""
    kept = []
    if holds_run(folder):
        kept = [r for r in read_records(folder) if r["round"] <= last_round]
    atomic_write_text(Path(folder) / METRICS_FILE, "".join(map(_jsonl_line, kept)))
    return kept


def _site_names(config: RunConfig) -> list[str]:
    return sorted(name.lower() for name in config.sites or data_source(config.dataset).sites)


def read_baseline(folder: str | Path, config: RunConfig) -> tuple[str, list[dict]]:
    """The label and round records of a run to report Δ against, for a run of ``config``.

    Raises:
        ValueError: the baseline ran on other data (data set, generator version, sites,
            image size, or synthetic test images), or has no round records.
        FileNotFoundError: ``folder`` is not a run folder.
    """
    base = read_config(folder)
    fields = ["dataset", "data_version", "image_size"]
    fields += ["n_test"] if data_source(config.dataset).version is not None else []
    differ = [
        f"{name} {getattr(base, name)!r}, not {getattr(config, name)!r}"
        for name in fields
        if getattr(base, name) != getattr(config, name)
    ]
    if _site_names(base) != _site_names(config):
        differ.append(f"sites {', '.join(_site_names(base))}")
    if differ:
        raise ValueError(
            f"baseline {folder} ran on other data ({'; '.join(differ)}): its Dice cannot be "
            "compared with this run's"
        )
    records = read_records(folder)
    if not records:
        raise ValueError(f"baseline {folder} has no round records")
    return base.method + " (baseline)", records


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
    label = base_records = None
    if baseline:
        label, base_records = read_baseline(baseline, config)
        runs.insert(0, (label, base_records))
    title = f"{config.method} on {config.dataset}" + (" (Flower)" if flower else "")
    evaluated = ", evaluated by each site's SuperNode" if flower else ""
    setting = (
        f"{_key_settings(config)}. Wall time {_duration(records)}. Foreground metrics of "
        f"the global model on each site's test split{evaluated}.\n\n{communication(records)}"
    )
    if classes_of(final_round(records)):
        setting += f" {CLASS_NOTE}"
    for privacy in (privacy_statement(config, records), weight_privacy_statement(config, records)):
        if privacy:
            setting += f"\n\n{privacy}"
    tables = write_summary(folder / SUMMARY_FILE, title, setting, runs, label)
    plot = plot_dice(records, title, None if label is None else (label, base_records))
    atomic_write_bytes(folder / PLOT_FILE, plot)
    close_tensorboard(folder)
    return tables


def _key_settings(config: RunConfig) -> str:
    options = ", ".join(f"{k}={v}" for k, v in sorted(config.method_options.items()))
    return (
        f"{config.rounds} rounds of {config.local_epochs} local epoch(s), seed {config.seed}, "
        f"{config.optimizer} lr {config.lr}, batch {config.batch_size}, "
        f"image {config.image_size}², init_features {config.init_features}"
        + (f"; method options {options}" if options else "")
    )


def _duration(records: list[dict]) -> str:
    seconds = sum(r.get("seconds", 0.0) for r in records)
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s (the rounds' own time, summed)"


def save_model(folder: str | Path, weights: dict[str, torch.Tensor], config: RunConfig) -> None:
    """The global model as ``model.safetensors`` (metadata: method, config version)."""
    metadata = {"method": config.method, "version": str(config.version)}
    data = save({k: v.contiguous() for k, v in weights.items()}, metadata)
    atomic_write_bytes(Path(folder) / MODEL_FILE, data)


def read_model(path: str | Path, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights in the safetensors file ``path``, checked to fit ``like`` (a model's
    state dict: the same names, shapes and dtypes) and to be finite.

    Raises:
        FileNotFoundError: there is no ``path``.
        ValueError: the file is not a readable safetensors file (truncated, corrupt, or of
            another format), or its weights do not fit ``like`` or are not finite; the
            message names the first offending tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        weights = load_file(str(path))
    except Exception as error:  # safetensors' own SafetensorError, or an OSError
        raise ValueError(f"{path} is not a readable safetensors model: {error}") from None
    missing, extra = sorted(set(like) - set(weights)), sorted(set(weights) - set(like))
    if missing or extra:
        parts = [
            f"{len(names)} tensor(s) {kind} ({', '.join(names[:3])})"
            for kind, names in (("missing", missing), ("unexpected", extra))
            if names
        ]
        raise ValueError(f"{path} does not fit this model: {'; '.join(parts)}")
    for name, expected in like.items():
        found = weights[name]
        if found.shape != expected.shape or found.dtype != expected.dtype:
            raise ValueError(
                f"{path}: {name} is {found.dtype} {list(found.shape)}; this model's is "
                f"{expected.dtype} {list(expected.shape)}"
            )
    bad = [n for n, w in weights.items() if w.is_floating_point() and not w.isfinite().all()]
    if bad:
        raise ValueError(
            f"{path} has NaN or infinite weights in {len(bad)} tensor(s), e.g. {bad[0]}"
        )
    return weights


def model_from_file(path: str | Path, config: RunConfig) -> nn.Module:
    """The model ``config.method`` builds for ``config.dataset``, holding the weights of the
    safetensors file ``path`` (on CPU), checked by :func:`read_model`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is unreadable, or its weights do not fit that model or are
            not finite (the message names them).
    """
    from .algorithms import build_algorithm

    model = build_algorithm(config).build_model()
    model.load_state_dict(read_model(path, model.state_dict()))
    return model


def load_model(folder: str | Path) -> tuple[nn.Module, RunConfig]:
    """The final global model of the run in ``folder`` (on CPU) and the run's config.

    Raises:
        FileNotFoundError: ``folder`` has no ``config.json`` or no ``model.safetensors``
            (the run has not finished); the message says which.
        ValueError: the weights do not fit the model the config builds.
    """
    folder = Path(folder)
    for name, missing in (
        (CONFIG_FILE, "is it a fedbcs run folder?"),
        (MODEL_FILE, "has the run finished?"),
    ):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} has no {name}: {missing}")
    config = read_config(folder).resolved()
    return model_from_file(folder / MODEL_FILE, config), config
