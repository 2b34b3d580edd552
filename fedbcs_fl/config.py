"""Run configuration: one dataclass, the data source's defaults filled in, JSON round trip."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .data.sources import data_source

CONFIG_VERSION = 1

# Settings added to follow the released code (docs/fidelity.md). A config.json without
# them was written before they existed: it loads with the values its run was trained and
# evaluated with, so ``--resume`` and ``fedbcs eval`` reproduce that run.
BEFORE_FIDELITY = {"dice_loss_classes": "foreground", "nuclei_intensity": "dtype"}
BEFORE_FIDELITY_METHOD_OPTIONS = {"fedbcs": {"contrast": "exact"}}

# Baseline options whose defaults changed to follow the original methods (issue 14,
# docs/algorithms.md). A config.json without ``method_defaults_version`` was written
# before: it loads with these values, so its run resumes and evaluates as it ran.
METHOD_DEFAULTS_VERSION = 2
BEFORE_BASELINE_FIXES_METHOD_OPTIONS = {
    "feduv": {"variance_target": "balanced", "uniformity_sigma": "detached"},
    "harmofl": {"amplitude_ratio": 0.1},
    "fedplvm": {"lambda_plvm": 1.0, "prototype_pass": "last-epoch"},
}


@dataclass
class RunConfig:
    """Everything a run depends on; written to ``config.json`` in the run folder.

    Method hyper-parameters live in ``method_options`` (name → value); each method
    fills in its own defaults for the names it declares.
    """

    method: str = "fedbcs"
    dataset: str = "synthetic-nuclei"
    data_root: str | None = None
    sites: list[str] | None = None
    split_file: str | None = None
    rounds: int = 30
    local_epochs: int = 1
    clients_per_round: int | None = None
    batch_size: int = 6
    eval_batch_size: int = 16  # the released code's; BatchNorm uses batch statistics
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float = 1e-4
    momentum: float | None = None
    dice_loss_classes: str = "all"  # soft Dice over "all" classes (released) or "foreground"
    nuclei_intensity: str = "minmax"  # per-image min-max (released) or "dtype" (÷ 255, 65535)
    seed: int = 0
    image_size: int | None = None
    n_train: int = 24
    n_test: int = 12
    init_features: int = 16
    device: str = "cpu"
    eval_every: int = 1
    checkpoint_every: int = 1
    client_timeout: float | None = None
    screen_norm_factor: float = 10.0
    screen_max_examples: int = 10_000_000
    screen_count_factor: float = 4.0  # a site counts ≤ this × the others' median count
    aggregation: str = "mean"  # of the weights: mean (the method's), median, trimmed-mean, krum
    stall_rounds: int = 3  # stop after this many rounds in a row with nothing aggregated
    inject_faults: str | None = None
    data_version: int | None = None  # the synthetic generators' version; None: real data
    method_options: dict = field(default_factory=dict)
    # The method defaults the file was written with: from_json makes an older file's old
    # defaults explicit in method_options (BEFORE_BASELINE_FIXES_METHOD_OPTIONS).
    method_defaults_version: int = METHOD_DEFAULTS_VERSION
    version: int = CONFIG_VERSION

    def resolved(self) -> RunConfig:
        """A copy with the data source's defaults (:class:`~fedbcs_fl.data.RunDefaults`)
        filled in where a field is None; ``ValueError`` for an unknown dataset."""
        source = data_source(self.dataset)
        out = dataclasses.replace(self, method_options=dict(self.method_options))
        for name in ("optimizer", "lr", "momentum", "image_size"):
            if getattr(out, name) is None:
                setattr(out, name, getattr(source.defaults, name))
        if out.data_version is None:
            out.data_version = source.version
        return out

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "config") -> RunConfig:
        data = json.loads(text)
        version = data.get("version")
        if version != CONFIG_VERSION:
            raise ValueError(
                f"{source} was written by config version {version}; this fedbcs reads "
                f"version {CONFIG_VERSION}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source} has unknown fields: {', '.join(unknown)}")
        if "data_version" not in data and data_source(data.get("dataset", cls.dataset)).version:
            data = {**data, "data_version": 1}  # written before the generators had versions
        if not set(BEFORE_FIDELITY) & set(data):
            data = cls._before_fidelity(data)
        if "method_defaults_version" not in data:
            # The old defaults become explicit options, so the loaded config, now of the
            # current version, runs as the file's run did.
            legacy = BEFORE_BASELINE_FIXES_METHOD_OPTIONS.get(data.get("method", cls.method), {})
            data = {**data, "method_options": {**legacy, **data.get("method_options", {})}}
        return cls(**data)

    @classmethod
    def _before_fidelity(cls, data: dict) -> dict:
        """``data`` with what a run written before the fidelity settings used: the
        :data:`BEFORE_FIDELITY` values, evaluation at the training batch size, and the
        method's :data:`BEFORE_FIDELITY_METHOD_OPTIONS`."""
        batch_size = data.get("batch_size", cls.batch_size)
        filled = {**BEFORE_FIDELITY, "eval_batch_size": batch_size, **data}
        legacy = BEFORE_FIDELITY_METHOD_OPTIONS.get(filled.get("method", cls.method), {})
        filled["method_options"] = {**legacy, **filled.get("method_options", {})}
        return filled

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        return cls.from_json(path.read_text(), source=str(path))
