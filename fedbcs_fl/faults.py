"""Fault injection: make chosen clients misbehave in chosen rounds, for tests and drills.

``--inject-faults "site-B:nan@2,site-C:raise@3"`` (``client:kind@round``; ``*`` as the
round means every round). Kinds:

- before training: ``raise`` (the client fails), ``dropout`` (it disappears mid-round),
  ``timeout`` (it hangs past ``--client-timeout``);
- during training: ``raise_mid_round`` (the client raises after its first local step,
  leaving its round half done);
- on the reply: ``nan``, ``inf`` (in one weight), ``proto_nan`` (in a prototype),
  ``missing_key``, ``extra_key``, ``wrong_shape``, ``wrong_dtype``, ``zero_examples``,
  ``huge_examples``, ``bad_proto_dim``, ``scaled`` (the update times 1000: a norm outlier).

The prototype drills (``proto_nan``, ``bad_proto_dim``) corrupt the rows of the first
prototype set the method declares (``Algorithm.uploads``, :mod:`fedbcs_fl.payload`); for a
method that uploads none they are an error when the drill is read, before training.

``FEDBCS_KILL_AT=ROUND:PHASE`` makes the process SIGKILL itself at ``local`` (after the
first local step of the round), ``aggregate`` or ``checkpoint`` (checkpoint written to
its temporary file, not yet renamed): the crash test's switch.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
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
)
KINDS = BEFORE_TRAINING + DURING_TRAINING + ON_REPLY
PROTOTYPE_KINDS = ("proto_nan", "bad_proto_dim")
KILL_PHASES = ("local", "aggregate", "checkpoint")


class ClientFault(RuntimeError):
    """A client did not deliver a reply this round."""


@dataclass(frozen=True)
class Fault:
    client: str
    kind: str
    round: int | None  # None: every round


def parse_faults(text: str | None, algorithm: Algorithm) -> list[Fault]:
    """The faults of ``text`` (see the module docstring) for a run of ``algorithm``.

    Raises:
        ValueError: an entry cannot be read, names an unknown kind, or drills prototypes
            that ``algorithm`` does not upload.
    """
    if not text:
        return []
    faults = []
    for item in text.split(","):
        try:
            client, rest = item.strip().split(":")
            kind, when = rest.split("@")
            round_index = None if when == "*" else int(when)
        except ValueError:
            raise ValueError(f"cannot read fault {item!r}: use CLIENT:KIND@ROUND") from None
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; valid: {', '.join(KINDS)}")
        if kind in PROTOTYPE_KINDS and not prototype_sets(algorithm.uploads):
            raise ValueError(
                f"fault kind {kind!r} corrupts uploaded prototypes, and {algorithm.name} "
                "uploads none with these options"
            )
        faults.append(Fault(client, kind, round_index))
    return faults


class FaultInjector:
    """Applies the faults of ``spec`` (see the module docstring) to a run of ``algorithm``."""

    def __init__(self, spec: str | None, algorithm: Algorithm, hang_seconds: float = 0.0):
        self.faults = parse_faults(spec, algorithm)
        # The prototypes the prototype drills corrupt: None when the method sends none.
        self.prototypes = next(iter(prototype_sets(algorithm.uploads)), None)
        self.hang_seconds = hang_seconds

    def kinds(self, client: str, round_index: int) -> list[str]:
        return [
            f.kind for f in self.faults if f.client == client and f.round in (None, round_index)
        ]

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

    def corrupt(self, client: str, round_index: int, update: ClientUpdate) -> ClientUpdate:
        for kind in self.kinds(client, round_index):
            if kind in ON_REPLY:
                update = _corrupt(update, kind, self.prototypes)
        return update


def _first_float(tensors):
    return next(k for k, v in tensors.items() if v.is_floating_point() and v.numel())


def _corrupt(update: ClientUpdate, kind: str, prototypes: PrototypeSet | None) -> ClientUpdate:
    weights = dict(update.weights)
    payload = dict(update.payload)
    count = update.num_examples
    key = _first_float(weights)
    if kind in ("nan", "inf"):
        weights[key] = weights[key].clone()
        weights[key].view(-1)[0] = float(kind)
    elif kind == "proto_nan":
        payload[prototypes.rows] = payload[prototypes.rows].clone()
        payload[prototypes.rows].view(-1)[0] = float("nan")
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
        rows = payload[prototypes.rows]
        payload[prototypes.rows] = torch.zeros(rows.shape[0], rows.shape[1] + 1)
    elif kind == "scaled":
        weights = {k: v * 1000 if v.is_floating_point() else v for k, v in weights.items()}
    return dataclasses.replace(update, weights=weights, payload=payload, num_examples=count)


def maybe_kill(round_index: int, phase: str) -> None:
    """SIGKILL this process when ``FEDBCS_KILL_AT`` names this round and phase."""
    target = os.environ.get("FEDBCS_KILL_AT")
    if target and target == f"{round_index}:{phase}":
        os.kill(os.getpid(), signal.SIGKILL)
