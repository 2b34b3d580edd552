"""Flower records ↔ the engine-neutral objects the algorithms use.

A train reply is one :class:`~flwr.app.RecordDict` with four records::

    "arrays"   ArrayRecord   the model weights (the key stock FedAvg uses)
    "payload"  ArrayRecord   the algorithm's payload (e.g. prototypes), possibly empty
    "metrics"  MetricRecord  "num-examples" and the local metrics
    "site"     ConfigRecord  "name" and "partition-id" of the replying site

The train instruction carries the global weights ("arrays"), the global payload
("payload") and the round's ConfigRecord ("config").

A reply comes from a node that may be broken or hostile: reading one never fails on what it
holds but with a ``ValueError`` that says what could not be read, and it reads no more
than it must. What it reads, the server screens (:mod:`fedbcs_fl.screening`).

Per-node state that outlives a round (the optimiser's state_dict, the algorithm's
``state`` dict) is kept in ``context.state`` by :func:`store` / :func:`restore`: its
tensors in an ArrayRecord, the structure around them as JSON in a ConfigRecord.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from ..algorithms.base import ClientUpdate
from ..metrics import METRICS

WEIGHTS_KEY = "arrays"
PAYLOAD_KEY = "payload"
METRICS_KEY = "metrics"
SITE_KEY = "site"
CONFIG_KEY = "config"
NUM_EXAMPLES = "num-examples"
PARTITION_ID = "partition-id"


def to_record(tensors: dict[str, torch.Tensor]) -> ArrayRecord:
    """An ArrayRecord of a tensor dict (copied to CPU; an empty dict gives an empty one)."""
    return ArrayRecord(torch_state_dict={k: v.detach().cpu() for k, v in tensors.items()})


def from_record(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """The tensor dict of an ArrayRecord, exactly (dtype, shape and bits)."""
    return dict(record.to_torch_state_dict())


def train_reply(update: ClientUpdate, site: str, partition_id: int) -> RecordDict:
    """The content of a train reply: weights, payload, metrics and the site's name."""
    metrics = {k: float(v) for k, v in update.metrics.items()}
    metrics[NUM_EXAMPLES] = update.num_examples
    return RecordDict(
        {
            WEIGHTS_KEY: to_record(update.weights),
            PAYLOAD_KEY: to_record(update.payload),
            METRICS_KEY: MetricRecord(metrics),
            SITE_KEY: site_record(site, partition_id),
        }
    )


def site_record(site: str, partition_id: int) -> ConfigRecord:
    """Who replied: the site's name and partition id."""
    return ConfigRecord({"name": site, PARTITION_ID: partition_id})


_RECORD_TYPES = {
    WEIGHTS_KEY: ArrayRecord,
    PAYLOAD_KEY: ArrayRecord,
    METRICS_KEY: MetricRecord,
    SITE_KEY: ConfigRecord,
}


def _records(content: RecordDict, keys: tuple[str, ...]) -> dict[str, Any]:
    """The records ``keys`` of a reply, each of its type, or ``ValueError``."""
    missing = [key for key in keys if key not in content]
    if missing:
        raise ValueError(f"the reply lacks the records {missing}: is the ClientApp fedbcs'?")
    records = {key: content[key] for key in keys}
    for key, record in records.items():
        if not isinstance(record, _RECORD_TYPES[key]):
            kind = _RECORD_TYPES[key].__name__
            raise ValueError(f"the reply's {key!r} is a {type(record).__name__}, not a {kind}")
    return records


def _partition_id(site: ConfigRecord) -> int:
    partition_id = site.get(PARTITION_ID)
    if type(partition_id) is not int:  # bool is no partition
        raise ValueError(f"its {PARTITION_ID} {partition_id!r} is not an integer")
    return partition_id


def _tensors(record: ArrayRecord, key: str) -> dict[str, torch.Tensor]:
    try:
        return from_record(record)
    except Exception as error:  # the arrays are the node's bytes: anything may fail
        raise ValueError(f"its {key!r} cannot be read as tensors ({error})") from None


def read_train_reply(content: RecordDict) -> tuple[ClientUpdate, int]:
    """``(update, partition id)`` of a train reply's content.

    The update holds what the node sent as it is (an example count that is no integer, a
    metric that is a list), for screening to judge, and in ``site`` the site it claims.

    Raises:
        ValueError: a record is missing or of another type, the partition id is not an
            integer, or the arrays cannot be read as tensors.
    """
    records = _records(content, (WEIGHTS_KEY, PAYLOAD_KEY, METRICS_KEY, SITE_KEY))
    partition_id = _partition_id(records[SITE_KEY])
    metrics = dict(records[METRICS_KEY])
    update = ClientUpdate(
        weights=_tensors(records[WEIGHTS_KEY], WEIGHTS_KEY),
        num_examples=metrics.pop(NUM_EXAMPLES, None),
        payload=_tensors(records[PAYLOAD_KEY], PAYLOAD_KEY),
        metrics=metrics,
        site=records[SITE_KEY].get("name"),
    )
    return update, partition_id


def read_evaluate_reply(
    content: RecordDict, expected: tuple[str, ...] = METRICS
) -> tuple[dict[str, float], object, int]:
    """``(metrics, claimed site, partition id)`` of an evaluate reply's content.

    Args:
        content: the reply's content.
        expected: the metrics it must hold: the round's evaluation fields
            (:func:`~fedbcs_fl.metrics.metric_names`; default all of them).

    Raises:
        ValueError: a record is missing or of another type, the partition id is not an
            integer, or a metric of ``expected`` is missing or not a number (NaN is a
            number here: HD95 of an empty prediction).
    """
    records = _records(content, (METRICS_KEY, SITE_KEY))
    partition_id = _partition_id(records[SITE_KEY])
    metrics = dict(records[METRICS_KEY])
    for name in expected:
        if type(metrics.get(name)) is not float:
            raise ValueError(f"its metric {name!r} is {metrics.get(name)!r}, not a number")
    return metrics, records[SITE_KEY].get("name"), partition_id


# ---- persistent node state ---------------------------------------------------------


def _encode(value: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """JSON-able structure of ``value`` with its tensors moved into ``tensors``."""
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value.detach().cpu()
        return {"tensor": key}
    if isinstance(value, torch.Generator):
        key = str(len(tensors))
        tensors[key] = value.get_state()
        return {"generator": key}
    if isinstance(value, dict):
        if not all(isinstance(k, str | int) for k in value):
            raise TypeError(f"{path}: only str and int dict keys can be kept")
        return {"dict": [[k, _encode(v, tensors, f"{path}[{k!r}]")] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        kind = "list" if isinstance(value, list) else "tuple"
        return {kind: [_encode(v, tensors, f"{path}[{i}]") for i, v in enumerate(value)]}
    if value is None or isinstance(value, bool | int | float | str):
        return {"value": value}
    raise TypeError(f"{path}: a {type(value).__name__} cannot be kept in a node's state")


def _decode(node: dict, tensors: dict[str, torch.Tensor]) -> Any:
    ((kind, content),) = node.items()
    if kind == "tensor":
        return tensors[content]
    if kind == "generator":
        generator = torch.Generator()
        generator.set_state(tensors[content])
        return generator
    if kind == "dict":
        return {k: _decode(v, tensors) for k, v in content}
    if kind == "list":
        return [_decode(v, tensors) for v in content]
    if kind == "tuple":
        return tuple(_decode(v, tensors) for v in content)
    return content


def store(state: RecordDict, name: str, value: Any) -> None:
    """Keep ``value`` (tensors, generators, dicts, lists, tuples, scalars) in ``state``.

    Raises:
        TypeError: ``value`` holds something else (e.g. an ``nn.Module``), naming where.
    """
    tensors: dict[str, torch.Tensor] = {}
    structure = json.dumps(_encode(value, tensors, name))
    state[f"{name}.arrays"] = to_record(tensors)
    state[f"{name}.structure"] = ConfigRecord({"json": structure})


def restore(state: RecordDict, name: str) -> Any:
    """The value :func:`store` kept under ``name``, or None if there is none."""
    if f"{name}.structure" not in state:
        return None
    tensors = from_record(state.array_records[f"{name}.arrays"])
    return _decode(json.loads(str(state.config_records[f"{name}.structure"]["json"])), tensors)
