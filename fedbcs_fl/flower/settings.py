"""Flower's flat run and node configs ↔ :class:`~fedbcs_fl.config.RunConfig`.

The run config (``[tool.flwr.app.config]`` in pyproject.toml, overridden by
``flwr run --run-config``) has one kebab-case key per RunConfig field; "" stands for None
(the dataset's default, or "all"), and so does 0 where 0 is no valid value
(``ZERO_MEANS_NONE``; a momentum of 0 is a momentum); ``method-options`` and
``extra-config`` (any other RunConfig field) are JSON objects. Data
location is per node: each SuperNode's node config names its ``partition-id`` and, where
needed, ``dataset``, ``data-root``, ``split-file`` and ``site``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from ..config import RunConfig
from ..data import SYNTHETIC_SITES, load_sites
from ..data.base import SiteData

# RunConfig fields with a key of their own in ``[tool.flwr.app.config]`` (kebab-case).
FLAT_FIELDS = (
    "method",
    "dataset",
    "sites",
    "rounds",
    "local_epochs",
    "clients_per_round",
    "batch_size",
    "eval_batch_size",
    "optimizer",
    "lr",
    "weight_decay",
    "momentum",
    "dice_loss_classes",
    "nuclei_intensity",
    "seed",
    "image_size",
    "n_train",
    "n_test",
    "init_features",
    "device",
    "eval_every",
    "aggregation",
    "stall_rounds",
)
# Flat fields whose None is written 0 (0 is never a valid value of theirs); other None
# fields are written "".
ZERO_MEANS_NONE = ("clients_per_round", "image_size", "lr")
# RunConfig fields that are not run-wide: the node config says where its data is.
NODE_FIELDS = ("data_root", "split_file")
# Flower-side settings of a run, beside the RunConfig fields (defaults in pyproject.toml).
ENGINE_DEFAULTS: dict[str, Any] = {
    "min-nodes": 2,
    "round-timeout": 3600.0,
    "fail-partition": -1,
    "out-dir": "",
}
# JSON-object keys: the method's hyper-parameters, and any other RunConfig field.
JSON_KEYS = ("method-options", "extra-config")


def _key(field_name: str) -> str:
    return field_name.replace("_", "-")


def _defaults() -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(RunConfig) if f.name != "method_options"}


def to_run_config(config: RunConfig, **engine: Any) -> dict[str, Any]:
    """The Flower run config of ``config`` plus engine settings (e.g. ``out_dir=``).

    Fields without a key of their own go, where they differ from their default, into
    ``extra-config``.
    """
    flat: dict[str, Any] = {}
    for name in FLAT_FIELDS:
        value = getattr(config, name)
        if value is None:
            value = 0 if name in ZERO_MEANS_NONE else ""
        elif isinstance(value, list):
            value = ",".join(value)
        flat[_key(name)] = value
    skip = {*FLAT_FIELDS, *NODE_FIELDS, "version"}
    extra = {
        name: getattr(config, name)
        for name, default in _defaults().items()
        if name not in skip and getattr(config, name) != default
    }
    flat["method-options"] = json.dumps(config.method_options, sort_keys=True)
    flat["extra-config"] = json.dumps(extra, sort_keys=True)
    for name, value in engine.items():
        key = _key(name)
        if key not in ENGINE_DEFAULTS:
            valid = ", ".join(ENGINE_DEFAULTS)
            raise ValueError(f"unknown engine setting {name!r}; valid: {valid}")
        flat[key] = value
    return flat


def _json_object(run_config: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = json.loads(str(run_config.get(key) or "{}"))
    if not isinstance(value, dict):
        raise ValueError(f"{key} must be a JSON object, got {value!r}")
    return value


def from_run_config(
    run_config: Mapping[str, Any], node_config: Mapping[str, Any] = {}
) -> RunConfig:
    """The resolved RunConfig of a Flower run config (and a node's data location)."""
    defaults = _defaults()
    values: dict[str, Any] = {}
    for name in FLAT_FIELDS:
        if _key(name) not in run_config:
            continue
        value = run_config[_key(name)]
        if defaults[name] is None and (value == "" or (value == 0 and name in ZERO_MEANS_NONE)):
            value = None
        elif name == "sites":
            value = [s.strip() for s in str(value).split(",") if s.strip()] or None
        values[name] = value
    extra = _json_object(run_config, "extra-config")
    unknown = sorted(set(extra) - set(defaults) | set(extra) & {*FLAT_FIELDS, *NODE_FIELDS})
    if unknown:
        raise ValueError(f"extra-config cannot set {', '.join(unknown)}")
    values |= extra
    for name in NODE_FIELDS:
        if node_config.get(_key(name)):
            values[name] = str(node_config[_key(name)])
    dataset = node_config.get("dataset")
    if dataset and dataset != values.get("dataset", defaults["dataset"]):
        raise ValueError(
            f"this node holds {dataset!r} data but the run trains on {values.get('dataset')!r}"
        )
    return RunConfig(**values, method_options=_json_object(run_config, "method-options")).resolved()


def engine_setting(run_config: Mapping[str, Any], name: str) -> Any:
    """An engine setting of the run (``min-nodes``, ``out-dir``, ...), or its default."""
    return run_config.get(name, ENGINE_DEFAULTS[name])


def node_site(config: RunConfig, node_config: Mapping[str, Any]) -> tuple[SiteData, int]:
    """This node's site and partition id.

    The node config's ``site`` names the site; without it, ``partition-id`` indexes the
    run's ``sites`` (default: all sites of the data set, in canonical order).
    """
    partition_id = int(node_config.get("partition-id", 0))
    names = config.sites or SYNTHETIC_SITES.get(config.dataset)
    if node_config.get("site"):
        names = [str(node_config["site"])]
        index = 0
    else:
        index = partition_id
    if names is not None:
        if not 0 <= index < len(names):
            raise ValueError(f"partition-id {partition_id} is out of range: sites are {names}")
        return load_sites(dataclasses.replace(config, sites=[names[index]]))[0], partition_id
    sites = load_sites(config)
    if not 0 <= index < len(sites):
        raise ValueError(f"partition-id {partition_id} is out of range: {len(sites)} sites")
    return sites[index], partition_id
