"""Flower's flat run and node configs ↔ :class:`~fedbcs_fl.config.RunConfig`.

Derived from the run settings' declarations (:data:`~fedbcs_fl.config.RUN_SETTINGS`,
their ``flower``): the run config (``[tool.flwr.app.config]`` in pyproject.toml,
overridden by ``flwr run --run-config``) has one kebab-case key per setting declared
``flower="key"``; "" stands for None, and so does the setting's ``flower_none`` (0 where
0 is no valid value; a momentum of 0 is a momentum). ``method-options`` and
``extra-config`` (the settings declared ``flower="extra"``) are JSON objects. Data
location is per node: each SuperNode's node config names its ``partition-id`` and, where
needed, ``dataset``, ``site`` and the settings declared ``flower="node"`` (``data-root``,
``split-file``).

The ServerApp reads no data, so for ``folder`` data (whose classes and channels come from
each site's ``dataset.json``) the run config gives ``in-channels`` and ``num-classes``;
``fedbcs flower-local`` fills them in from the data, and every node checks its
``dataset.json`` against them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from ..config import RUN_SETTINGS, RunConfig
from ..data import data_source, load_sites
from ..data.base import SiteData


def _declared(where: str) -> tuple[str, ...]:
    return tuple(name for name, declared in RUN_SETTINGS.items() if declared.flower == where)


# RunConfig fields with a key of their own in ``[tool.flwr.app.config]`` (kebab-case).
FLAT_FIELDS = _declared("key")
# RunConfig fields in the ``extra-config`` JSON object, where they differ from the default.
EXTRA_FIELDS = _declared("extra")
# RunConfig fields that are not run-wide: the node config says where its data is.
NODE_FIELDS = _declared("node")
# Flower-side settings of a run, beside the RunConfig fields (defaults in pyproject.toml).
ENGINE_DEFAULTS: dict[str, Any] = {
    "min-nodes": 2,
    "round-timeout": 3600.0,
    "fail-partition": -1,
    "out-dir": "",
}
# JSON-object keys: the method's hyper-parameters, and the EXTRA_FIELDS.
JSON_KEYS = ("method-options", "extra-config")


def _key(field_name: str) -> str:
    return field_name.replace("_", "-")


def to_run_config(config: RunConfig, **engine: Any) -> dict[str, Any]:
    """The Flower run config of ``config`` plus engine settings (e.g. ``out_dir=``)."""
    flat: dict[str, Any] = {}
    for name in FLAT_FIELDS:
        value = getattr(config, name)
        if value is None:
            value = RUN_SETTINGS[name].flower_none
        elif isinstance(value, list):
            value = ",".join(value)
        flat[_key(name)] = value
    extra = {
        name: getattr(config, name)
        for name in EXTRA_FIELDS
        if getattr(config, name) != RUN_SETTINGS[name].default
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
    values: dict[str, Any] = {}
    for name in FLAT_FIELDS:
        if _key(name) not in run_config:
            continue
        value, declared = run_config[_key(name)], RUN_SETTINGS[name]
        if declared.default is None and value in ("", declared.flower_none):
            value = None
        elif declared.type is list:
            value = declared.parse(str(value)) or None
        values[name] = value
    extra = _json_object(run_config, "extra-config")
    unknown = sorted(set(extra) - set(EXTRA_FIELDS))
    if unknown:
        raise ValueError(
            f"extra-config cannot set {', '.join(unknown)}; valid: {', '.join(EXTRA_FIELDS)}"
        )
    values |= extra
    for name in NODE_FIELDS:
        if node_config.get(_key(name)):
            values[name] = str(node_config[_key(name)])
    dataset = node_config.get("dataset")
    if dataset and dataset != values.get("dataset", RunConfig.dataset):
        raise ValueError(
            f"this node holds {dataset!r} data but the run trains on {values.get('dataset')!r}"
        )
    values["method_options"] = _json_object(run_config, "method-options")
    return RunConfig.from_dict(values, source="the Flower run config").resolved()


def engine_setting(run_config: Mapping[str, Any], name: str) -> Any:
    """An engine setting of the run (``min-nodes``, ``out-dir``, ...), or its default."""
    return run_config.get(name, ENGINE_DEFAULTS[name])


def node_site(config: RunConfig, node_config: Mapping[str, Any]) -> tuple[SiteData, int]:
    """This node's site and partition id.

    The node config's ``site`` names the site; without it, ``partition-id`` indexes the
    run's ``sites`` (default: all sites of the data set, in canonical order; for
    ``folder``, the folders of the node's ``data-root``, sorted by name).
    """
    partition_id = int(node_config.get("partition-id", 0))
    if node_config.get("site"):
        names, index = [str(node_config["site"])], 0
    else:
        names = config.sites or data_source(config.dataset).site_names(config.data_root)
        index = partition_id
    if not 0 <= index < len(names):
        raise ValueError(f"partition-id {partition_id} is out of range: sites are {names}")
    return load_sites(dataclasses.replace(config, sites=[names[index]]))[0], partition_id
