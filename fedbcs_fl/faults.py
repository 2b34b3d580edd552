"""Fault injection: make chosen clients misbehave in chosen rounds, for tests and drills.

``--inject-faults "site-B:nan@2,site-C:raise@3-5,site-D:reverse=5@*"``: comma-separated
entries ``CLIENT:KIND[=VALUE]@ROUNDS``, ROUNDS one round, ``A-B`` (A to B) or ``*`` (every
round). Kinds:

- before training: ``raise`` (the client fails), ``dropout`` (it disappears mid-round),
  ``timeout`` (it hangs past ``--client-timeout``);
- during training: ``raise_mid_round`` (the client raises after its first local step,
  leaving its round half done);
- on the reply: ``nan``, ``inf`` (in one weight), ``proto_nan`` (in a prototype),
  ``missing_key``, ``extra_key``, ``wrong_shape``, ``wrong_dtype``, ``zero_examples``,
  ``huge_examples``, ``bad_proto_dim``, ``scaled`` (the update times 1000: a norm outlier);
- attacks on the reply: ``reverse=F`` (send G − F·(own step), G the global weights it was
  sent), ``claim=N`` (claim N examples), ``scale_protos=F`` (every prototype row times F),
  ``spoof=SITE`` (reply under another site's name), ``garbage`` (one malformed field, drawn
  from :data:`GARBAGE` by a generator seeded with the run's seed, the client and round).

The prototype drills (``proto_nan``, ``bad_proto_dim``, ``scale_protos``) corrupt the rows
the method declares (``Algorithm.uploads``, :mod:`fedbcs_fl.payload`); for a method that
uploads none they are an error when the drill is read, before training, and so is a drill
that names a client, or spoofs a site, that is not in the run.

``FEDBCS_KILL_AT=ROUND:PHASE`` makes the process SIGKILL itself at ``local`` (after the
first local step of the round), ``aggregate``, ``checkpoint`` (checkpoint written to its
temporary file, not yet renamed) or ``in-flight`` (the same, once the next round has
taken a local step meanwhile: killed while the background write is in flight; ROUND must
not be the last): the crash test's switch.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .algorithms.base import Algorithm, ClientUpdate
from .payload import PrototypeSet, prototype_sets

BEFORE_TRAINING = ("raise", "dropout", "timeout")
DURING_TRAINING = ("raise_mid_round",)
ON_REPLY = (
    "nan",
    "inf",
    "proto_nan",
    "missing_key",
    "extra_key",
    "wrong_shape",
    "wrong_dtype",
    "zero_examples",
    "huge_examples",
    "bad_proto_dim",
    "scaled",
    "reverse",
    "claim",
    "scale_protos",
    "spoof",
    "garbage",
)
KINDS = BEFORE_TRAINING + DURING_TRAINING + ON_REPLY
PROTOTYPE_KINDS = ("proto_nan", "bad_proto_dim", "scale_protos")
# The kinds that take a value, and what it is: KIND=VALUE.
VALUE_KINDS: dict[str, tuple[type, str]] = {
    "reverse": (float, "F"),
    "claim": (int, "N"),
    "scale_protos": (float, "F"),
    "spoof": (str, "SITE"),
}
KILL_PHASES = ("local", "aggregate", "checkpoint", "in-flight")
_ENTRY = re.compile(
    r"(?P<client>[^:=@,]+):(?P<kind>[a-z_]+)(=(?P<value>[^@]+))?@(?P<rounds>\*|\d+(-\d+)?)"
)


class ClientFault(RuntimeError):
    """A client did not deliver a reply this round."""


@dataclass(frozen=True)
class Fault:
    """One entry: ``kind`` (with its ``value``, if it takes one) for ``client`` in rounds
    ``first`` to ``last`` (None: every round from ``first`` on)."""

    client: str
    kind: str
    value: float | int | str | None
    first: int
    last: int | None

    def applies(self, client: str, round_index: int) -> bool:
        return (
            client == self.client
            and self.first <= round_index
            and (self.last is None or round_index <= self.last)
        )


def _value(kind: str, text: str | None, item: str) -> float | int | str | None:
    if kind not in VALUE_KINDS:
        if text is not None:
            raise ValueError(f"fault {item!r}: {kind} takes no value")
        return None
    kind_type, name = VALUE_KINDS[kind]
    if text is None:
        raise ValueError(f"fault {item!r}: {kind} needs a value, {kind}={name}")
    try:
        value = kind_type(text)
    except ValueError:
        value = None
    if value is None or (kind_type is float and not math.isfinite(value)):
        raise ValueError(f"fault {item!r}: {name} must be a finite {kind_type.__name__}")
    return value


def _rounds(text: str, item: str) -> tuple[int, int | None]:
    if text == "*":
        return 1, None
    first, _, last = text.partition("-")
    first, last = int(first), int(last or first)
    if not 1 <= first <= last:
        raise ValueError(f"fault {item!r}: rounds must be A-B with 1 ≤ A ≤ B")
    return first, last


def parse_faults(
    text: str | None, algorithm: Algorithm, clients: list[str] | None = None
) -> list[Fault]:
    """The faults of ``text`` (see the module docstring) for a run of ``algorithm``.

    Args:
        text: the drill, e.g. ``site-B:reverse=5@2-4,site-C:nan@*``.
        algorithm: the method of the run.
        clients: the run's clients (None: any name is taken).

    Raises:
        ValueError: an entry cannot be read, names an unknown kind or client, has a value
            it should not (or lacks one), or drills prototypes ``algorithm`` does not upload.
    """
    if not text:
        return []
    faults = []
    for item in (part.strip() for part in text.split(",")):
        match = _ENTRY.fullmatch(item)
        if match is None:
            raise ValueError(
                f"cannot read fault {item!r}: use CLIENT:KIND[=VALUE]@ROUNDS "
                "(ROUNDS: a round, A-B or *)"
            )
        client, kind = match["client"], match["kind"]
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; valid: {', '.join(KINDS)}")
        if kind in PROTOTYPE_KINDS and not prototype_sets(algorithm.uploads):
            raise ValueError(
                f"fault kind {kind!r} corrupts uploaded prototypes, and {algorithm.name} "
                "uploads none with these options"
            )
        value = _value(kind, match["value"], item)
        named = [client] + ([value] if kind == "spoof" else [])
        unknown = [name for name in named if clients is not None and name not in clients]
        if unknown:
            raise ValueError(
                f"fault {item!r} names {unknown[0]!r}, not a client of this run; "
                f"clients: {', '.join(clients)}"
            )
        faults.append(Fault(client, kind, value, *_rounds(match["rounds"], item)))
    return faults


class FaultInjector:
    """Applies the faults of ``spec`` (see the module docstring) to a run of ``algorithm``.

    Args:
        spec: the drill (None: none).
        algorithm: the method of the run.
        hang_seconds: how long ``timeout`` hangs.
        clients: the run's clients, which a drill must name (None: any).
        seed: the run's seed, which seeds the ``garbage`` drawn.
    """

    def __init__(
        self,
        spec: str | None,
        algorithm: Algorithm,
        hang_seconds: float = 0.0,
        clients: list[str] | None = None,
        seed: int = 0,
    ):
        self.faults = parse_faults(spec, algorithm, clients)
        # The prototypes the prototype drills corrupt: none when the method sends none.
        self.prototypes = prototype_sets(algorithm.uploads)
        self.hang_seconds = hang_seconds
        self.seed = seed

    def kinds(self, client: str, round_index: int) -> list[str]:
        return [f.kind for f in self.faults if f.applies(client, round_index)]

    def before_training(self, client: str, round_index: int) -> None:
        kinds = self.kinds(client, round_index)
        if "raise" in kinds:
            raise RuntimeError(f"injected failure in {client}")
        if "dropout" in kinds:
            raise ClientFault(f"{client} dropped out")
        if "timeout" in kinds:
            time.sleep(self.hang_seconds)

    def after_step(self, client: str, round_index: int, step: int) -> None:
        """Called after every local optimiser step (``step`` counts from 1)."""
        if step == 1 and "raise_mid_round" in self.kinds(client, round_index):
            raise RuntimeError(f"injected failure in {client} after local step {step}")

    def corrupt(
        self,
        client: str,
        round_index: int,
        update: ClientUpdate,
        global_weights: dict[str, torch.Tensor],
    ) -> ClientUpdate:
        """``update`` as ``client`` sends it in ``round_index`` under the drill;
        ``global_weights`` are the weights it was sent (``reverse`` steps back from them)."""
        for fault in self.faults:
            if not fault.applies(client, round_index) or fault.kind not in ON_REPLY:
                continue
            if fault.kind == "garbage":
                rng = random.Random(f"{self.seed}/{client}/{round_index}")
                names = [n for n, (needs, _) in GARBAGE.items() if self.prototypes or not needs]
                fields = GARBAGE[rng.choice(names)][1](update, self.prototypes)
                update = dataclasses.replace(update, **fields)
            else:
                update = _corrupt(update, fault, self.prototypes, global_weights)
        return update


def _first_float(tensors):
    return next(k for k, v in tensors.items() if v.is_floating_point() and v.numel())


def _replace_rows(payload: dict, sets: list[PrototypeSet], change) -> dict:
    """``payload`` with the rows of every set in ``sets`` replaced by ``change(rows)``."""
    return payload | {p.rows: change(payload[p.rows]) for p in sets}


def _corrupt(
    update: ClientUpdate, fault: Fault, prototypes: list[PrototypeSet], global_weights
) -> ClientUpdate:
    kind = fault.kind
    weights = dict(update.weights)
    payload = dict(update.payload)
    count, site = update.num_examples, update.site
    key = _first_float(weights)
    if kind in ("nan", "inf"):
        weights[key] = weights[key].clone()
        weights[key].view(-1)[0] = float(kind)
    elif kind == "proto_nan":
        rows = payload[prototypes[0].rows].clone()
        rows.view(-1)[0] = float("nan")
        payload[prototypes[0].rows] = rows
    elif kind == "missing_key":
        del weights[key]
    elif kind == "extra_key":
        weights["injected.extra"] = torch.zeros(1)
    elif kind == "wrong_shape":
        weights[key] = torch.zeros(weights[key].numel() + 1)
    elif kind == "wrong_dtype":
        weights[key] = weights[key].double()
    elif kind == "zero_examples":
        count = 0
    elif kind == "huge_examples":
        count = 10**12
    elif kind == "bad_proto_dim":
        rows = payload[prototypes[0].rows]
        payload[prototypes[0].rows] = torch.zeros(rows.shape[0], rows.shape[1] + 1)
    elif kind == "scaled":
        weights = {k: v * 1000 if v.is_floating_point() else v for k, v in weights.items()}
    elif kind == "reverse":
        weights = {
            k: g - fault.value * (weights[k] - g) if g.is_floating_point() else weights[k]
            for k, g in global_weights.items()
        }
    elif kind == "claim":
        count = fault.value
    elif kind == "scale_protos":
        payload = _replace_rows(payload, prototypes, lambda rows: rows * fault.value)
    elif kind == "spoof":
        site = fault.value
    return dataclasses.replace(
        update, weights=weights, payload=payload, num_examples=count, site=site
    )


def _weight(update: ClientUpdate, change) -> dict:
    key = _first_float(update.weights)
    return {"weights": update.weights | {key: change(update.weights[key])}}


def _rows(update: ClientUpdate, prototypes: list[PrototypeSet], change) -> dict:
    return {"payload": _replace_rows(update.payload, prototypes[:1], change)}


def _labels(update: ClientUpdate, prototypes: list[PrototypeSet], change) -> dict:
    labels = prototypes[0].labels
    return {"payload": update.payload | {labels: change(update.payload[labels])}}


def _metric(update: ClientUpdate, value) -> dict:
    return {"metrics": update.metrics | {"loss": value}}


# name → (needs prototypes, the reply's fields that garbage replaces, given the reply and
# the method's prototype sets): a fixed list of malformed fields of the kinds broken
# exports and buggy clients send.
GARBAGE: dict[str, tuple[bool, Callable[[ClientUpdate, list[PrototypeSet]], dict]]] = {
    "weights-a-list": (False, lambda u, p: {"weights": list(u.weights.values())}),
    "weight-a-list": (False, lambda u, p: _weight(u, torch.Tensor.tolist)),
    "weight-float16": (False, lambda u, p: _weight(u, torch.Tensor.half)),
    "weight-1e30": (False, lambda u, p: _weight(u, lambda w: w * 1e30)),
    "count-a-float": (False, lambda u, p: {"num_examples": float(u.num_examples)}),
    "count-a-string": (False, lambda u, p: {"num_examples": str(u.num_examples)}),
    "count-none": (False, lambda u, p: {"num_examples": None}),
    "count-true": (False, lambda u, p: {"num_examples": True}),
    "metrics-a-list": (False, lambda u, p: {"metrics": list(u.metrics.values())}),
    "metric-a-string": (False, lambda u, p: _metric(u, "0.5")),
    "metric-a-list": (False, lambda u, p: _metric(u, [0.5])),
    "metric-1e300": (False, lambda u, p: _metric(u, 1e300)),
    "payload-none": (False, lambda u, p: {"payload": None}),
    "payload-value-a-string": (False, lambda u, p: {"payload": {"x": "garbage"}}),
    "site-a-number": (False, lambda u, p: {"site": 7}),
    "prototypes-a-list": (True, lambda u, p: _rows(u, p, torch.Tensor.tolist)),
    "prototypes-int64": (True, lambda u, p: _rows(u, p, torch.Tensor.long)),
    "prototypes-float64": (True, lambda u, p: _rows(u, p, torch.Tensor.double)),
    "prototypes-1e18": (True, lambda u, p: _rows(u, p, lambda rows: rows * 1e18)),
    "labels-bool": (True, lambda u, p: _labels(u, p, lambda labels: labels > 0)),
    "labels-fewer-than-rows": (True, lambda u, p: _labels(u, p, lambda labels: labels[:-1])),
}


# Set, under FEDBCS_KILL_AT=ROUND:in-flight, by the first local step after that round.
_NEXT_ROUND_STEPPED = threading.Event()


def maybe_kill(round_index: int, phase: str) -> None:
    """SIGKILL this process when ``FEDBCS_KILL_AT`` names this round and phase; for
    ``in-flight``, the checkpoint writer's thread waits at ``checkpoint`` for the next
    round's first local step, then kills."""
    target = os.environ.get("FEDBCS_KILL_AT")
    if not target:
        return
    if target == f"{round_index}:{phase}":
        os.kill(os.getpid(), signal.SIGKILL)
    if target == f"{round_index - 1}:in-flight" and phase == "local":
        _NEXT_ROUND_STEPPED.set()
    if target == f"{round_index}:in-flight" and phase == "checkpoint":
        _NEXT_ROUND_STEPPED.wait()
        os.kill(os.getpid(), signal.SIGKILL)
