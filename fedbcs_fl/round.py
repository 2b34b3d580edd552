"""One federated round on the server side, the same in every engine.

An engine (the in-process simulator, the Flower strategy) asks its clients, gathers their
replies, names each by its own identity of the client (:mod:`fedbcs_fl.identity`), and
names the clients that sent none; :func:`aggregate_round` does the rest: it screens the
replies (:func:`~fedbcs_fl.screening.screen_updates`), bounds their example counts
(:func:`~fedbcs_fl.screening.cap_example_counts`), aggregates the accepted ones with the
algorithm's server side, keeps the result only if it is usable
(:func:`~fedbcs_fl.screening.global_problem`) and writes the round's record. On the
rounds :func:`is_evaluation_round` picks, the engine adds the evaluation of the new
global model (:func:`evaluation_fields`), with HD95 and ASSD on those of them
:func:`is_surface_round` picks, then the round's ``seconds``. An engine stops
the run when :func:`stalled_rounds` reaches the run's ``stall_rounds``.

A round record, one line of ``metrics.jsonl``, has
- ``round``, ``clients`` (who was asked), ``aggregated`` (whose replies made the new
  global model; none when it is the old one), ``faults`` (client → why it sent no
  reply), ``rejected`` (client → why its reply was refused: by the engine, as it could
  not be read or claimed another site, or by screening), ``capped`` (client → the
  examples it claimed and those counted) and ``discarded`` (why the aggregate was not
  kept, or null);
- per client whose reply passed screening: ``client_metrics``, ``prototypes_uploaded``
  (paper Table 3) and ``bytes_up`` (weights + payload); a rejected reply is not read;
- ``bytes_down``: the global weights and payload each client was sent;
- with prototype DP on, ``proto_dp_epsilon``: per client whose reply passed screening,
  the ε it has spent so far (:mod:`fedbcs_fl.privacy`);
- with weight DP on, ``weight_dp_epsilon``: per site aggregated in this round or an
  earlier one, the ε it has spent so far on the weights, and ``weight_dp_delta``
  (:mod:`fedbcs_fl.weight_privacy`);
- on evaluation rounds: ``dice`` per site (the mean over the foreground classes) and its
  ``mean_dice`` over sites, and ``dice_per_class``: per site, ``{class id: figure}`` for
  every foreground class; on surface rounds also the same of ``hd95`` and ``assd`` (not
  computed on the other rounds, so absent there, never NaN for "not computed");
- ``seconds``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .algorithms.base import Algorithm, ClientUpdate
from .metrics import METRICS, per_class
from .privacy import EPSILON_KEY
from .screening import ScreeningPolicy, cap_example_counts, global_problem, screen_updates
from .weight_privacy import WeightPrivacy


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """The bytes of a dict of tensors' values, as they travel."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


@dataclass(frozen=True)
class RoundResult:
    """What a round leaves behind.

    Args:
        weights: the next global weights (the old ones when no reply was accepted).
        payload: the next global payload (likewise).
        record: the round's record, without the evaluation and ``seconds``.
    """

    weights: dict[str, torch.Tensor]
    payload: dict[str, torch.Tensor]
    record: dict

    @property
    def aggregated(self) -> list[str]:
        """The clients whose replies made the new global model (none: it is the old one)."""
        return self.record["aggregated"]


def aggregate_round(
    algorithm: Algorithm,
    round_index: int,
    clients: list[str],
    replies: list[tuple[str, ClientUpdate]],
    faults: dict[str, str],
    global_weights: dict[str, torch.Tensor],
    global_payload: dict[str, torch.Tensor],
    policy: ScreeningPolicy,
    refused: dict[str, str] | None = None,
    weight_privacy: WeightPrivacy | None = None,
    history: Sequence[dict] = (),
) -> RoundResult:
    """Screen ``replies``, record the round, and aggregate the accepted replies.

    Args:
        algorithm: the method; its ``aggregate`` is the server side.
        round_index: the round, from 1.
        clients: every client asked this round, in the order the record lists them.
        replies: ``(client, update)`` of each client that replied, in aggregation order.
        faults: ``{client: reason}`` of each client asked that sent no reply.
        global_weights: the weights the clients were sent.
        global_payload: the payload the clients were sent.
        policy: the screening thresholds.
        refused: ``{client: reason}`` of the replies the engine refused before screening
            (default none).
        weight_privacy: this round's weight mechanism (default None: weight DP off).
        history: the run's records of the earlier rounds, which the ε spent on the
            weights so far is counted from (default none).
    """
    accepted, rejected = screen_updates(algorithm, replies, global_weights, policy)
    accepted, capped = cap_example_counts(accepted, policy)
    record = {
        "round": round_index,
        "clients": clients,
        "aggregated": [name for name, _ in accepted],
        "faults": faults,
        "rejected": (refused or {}) | rejected,
        "capped": capped,
        "discarded": None,
        # Only screened replies are read: a rejected one may hold anything.
        "client_metrics": {name: u.metrics for name, u in accepted},
        "prototypes_uploaded": {
            name: algorithm.count_prototypes(u.payload) for name, u in accepted
        },
        "bytes_up": {
            name: tensor_bytes(u.weights) + tensor_bytes(u.payload) for name, u in accepted
        },
        "bytes_down": tensor_bytes(global_weights) + tensor_bytes(global_payload),
    }
    spent = {name: u.metrics[EPSILON_KEY] for name, u in accepted if EPSILON_KEY in u.metrics}
    if spent:
        record[EPSILON_KEY] = spent
    weights, payload = global_weights, global_payload  # kept when nothing is usable
    if accepted:
        new_weights, new_payload = algorithm.aggregate(
            [update for _, update in accepted], global_weights, global_payload, weight_privacy
        )
        discarded = global_problem((("", new_weights), ("payload ", new_payload)), policy)
        if discarded:  # e.g. prototypes that passed screening but whose means overflow
            record |= {"aggregated": [], "discarded": discarded}
        else:
            weights, payload = new_weights, new_payload
    if weight_privacy is not None:
        record |= weight_privacy.spent([*history, record])
    return RoundResult(weights, payload, record)


def stalled_rounds(records: list[dict]) -> int:
    """How many of the last ``records`` in a row aggregated no reply."""
    count = 0
    for record in reversed(records):
        if record["aggregated"]:
            break
        count += 1
    return count


class FederationStalled(RuntimeError):
    """No reply was aggregated for the run's ``stall_rounds`` rounds in a row."""

    @classmethod
    def after(cls, records: list[dict]) -> FederationStalled:
        """The error after ``records``, naming what went wrong in the last round."""
        last = records[-1]
        reasons = [
            *(f"{c}: {r}" for kind in ("faults", "rejected") for c, r in last[kind].items()),
            *([last["discarded"]] if last.get("discarded") else []),
        ]
        return cls(
            f"the federation stalled: no reply was aggregated in the last "
            f"{stalled_rounds(records)} rounds (to round {last['round']}); last round: "
            + ("; ".join(reasons) or "no client replied")
        )


def is_evaluation_round(config, round_index: int) -> bool:
    """Every ``eval_every`` rounds and after the last: both engines evaluate then."""
    return round_index % config.eval_every == 0 or round_index == config.rounds


def is_surface_round(config, round_index: int) -> bool:
    """Whether an evaluation round also computes HD95 and ASSD: the last round, and every
    ``surface_metrics_every`` rounds where that is given. Both engines ask this."""
    every = config.surface_metrics_every
    last = round_index == config.rounds
    return is_evaluation_round(config, round_index) and (
        last or (every is not None and round_index % every == 0)
    )


def evaluation_fields(evaluation: dict[str, dict[str, float]]) -> dict:
    """The evaluation keys of a round record: per-site and mean (NaN-skipping) Dice, and
    HD95 and ASSD where every site has them, and per site each foreground class's, from
    ``{site: segmentation_metrics(...)}``."""
    fields = {}
    for metric in METRICS:
        if not all(metric in m for m in evaluation.values()):
            continue  # not computed this round
        fields[metric] = {site: m[metric] for site, m in evaluation.items()}
        fields[f"mean_{metric}"] = float(np.nanmean(list(fields[metric].values())))
        fields[f"{metric}_per_class"] = {
            site: per_class(m, metric) for site, m in evaluation.items()
        }
    return fields
