"""The Flower strategy that runs any fedbcs :class:`~fedbcs_fl.algorithms.Algorithm`.

It keeps Flower's FedAvg round loop, sampling and logging, and hands the server side to
the engine-neutral round: ``aggregate_train`` decodes each reply into a
:class:`ClientUpdate` (its weights, and its payload as a second ArrayRecord, which stock
FedAvg would reject) and calls :func:`~fedbcs_fl.round.aggregate_round`, which screens,
records and calls ``algorithm.aggregate``, as in the simulator; the next global payload
travels beside the weights in every train instruction. Replies are ordered by partition
id before aggregation, so a run is deterministic whatever order the replies arrive in,
and matches the simulator, which trains its clients in site order.

A site is who its node enrolled as (:class:`~fedbcs_fl.identity.Enrolment`): each node id
is bound to the site it names in its first reply, in node id order within a round; a node
that claims a site another node holds, or later another site than its own, is rejected,
and a reply that cannot be read is rejected with what could not be read. After
``stall_rounds`` rounds in a row with nothing aggregated the run stops
(:class:`~fedbcs_fl.round.FederationStalled`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from ..algorithms.base import Algorithm
from ..config import RunConfig
from ..identity import Enrolment
from ..metrics import metric_names
from ..round import (
    FederationStalled,
    aggregate_round,
    evaluation_fields,
    is_evaluation_round,
    is_surface_round,
    stalled_rounds,
)
from ..screening import ScreeningPolicy
from ..weight_privacy import weight_privacy
from .records import PAYLOAD_KEY, read_evaluate_reply, read_train_reply, to_record


class AlgorithmStrategy(FedAvg):
    """FedAvg's round loop with the algorithm's server side.

    Args:
        algorithm: the method's :class:`Algorithm` (its ``aggregate`` is the server side).
        config: the resolved run configuration (``eval_every``, ``rounds``).
        on_round: called with each round's record once the round's evaluation is in:
            the simulator's keys (``round``, ``clients``, ``aggregated``, ``faults``,
            ``client_metrics``, ``prototypes_uploaded``, ``bytes_up``, ``bytes_down``,
            ``dice`` and its ``mean_dice``, and ``hd95``/``assd`` and theirs on the rounds
            :func:`~fedbcs_fl.round.is_surface_round` picks, ``seconds``) plus
            ``evaluation_faults``. A node is named by the site it enrolled as, else as
            ``node <id>``.
        **fedavg: FedAvg's sampling settings (``fraction_train=1.0``,
            ``min_train_nodes=2``, ``min_evaluate_nodes=2``, ``min_available_nodes=2``).

    Raises (from ``aggregate_evaluate``, once the round's record is out):
        FederationStalled: ``config.stall_rounds`` rounds in a row aggregated no reply.
    """

    def __init__(
        self,
        algorithm: Algorithm,
        config: RunConfig,
        on_round: Callable[[dict], None],
        **fedavg,
    ):
        super().__init__(**fedavg)
        self.algorithm = algorithm
        self.config = config
        self.on_round = on_round
        self.global_weights: dict[str, torch.Tensor] = {}
        self.global_payload: dict[str, torch.Tensor] = {}
        self.enrolment = Enrolment()
        self.record: dict = {}
        self.history: list[dict] = []
        self.round_start = 0.0
        self.policy = ScreeningPolicy.of(config)

    def _faults(self, replies: list[Message]) -> dict[str, str]:
        return {
            self.enrolment.name(m.metadata.src_node_id): m.error.reason
            for m in replies
            if m.has_error()
        }

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's instructions, with the global payload as a second ArrayRecord."""
        self.round_start = time.perf_counter()
        self.global_weights = dict(arrays.to_torch_state_dict())
        messages = list(super().configure_train(server_round, arrays, config, grid))
        payload = to_record(self.global_payload)
        for message in messages:
            message.content[PAYLOAD_KEY] = payload
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The algorithm's aggregation of the valid replies, in partition order."""
        replies = list(replies)
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        refused: dict[str, str] = {}
        decoded = []
        for message in sorted(valid, key=lambda m: m.metadata.src_node_id):
            node = message.metadata.src_node_id
            try:
                update, partition_id = read_train_reply(message.content)
            except ValueError as error:
                refused[self.enrolment.name(node)] = f"unreadable reply: {error}"
                continue
            name, problem = self.enrolment.admit(node, update.site)
            if problem:
                refused[name] = problem
            else:
                decoded.append((partition_id, name, update, message))
        decoded.sort(key=lambda reply: reply[0])
        faults = self._faults(replies)
        result = aggregate_round(
            self.algorithm,
            server_round,
            sorted([*(name for _, name, _, _ in decoded), *refused, *faults]),
            [(name, update) for _, name, update, _ in decoded],
            faults,
            self.global_weights,
            self.global_payload,
            self.policy,
            refused,
            # the run waits for every site: min_available_nodes of them
            weight_privacy(self.config, self.min_available_nodes, server_round),
            self.history,
        )
        self.record, self.global_payload = result.record, result.payload
        if not result.aggregated:  # the global model stays as it was
            return to_record(result.weights), None
        kept = [m.content for _, name, _, m in decoded if name in result.aggregated]
        return to_record(result.weights), self.train_metrics_aggr_fn(kept, self.weighted_by_key)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's instructions on evaluation rounds (as the simulator's), none otherwise."""
        if not is_evaluation_round(self.config, server_round):
            return []
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Per-site metrics into the round's record; the record goes to ``on_round``.

        Raises:
            FederationStalled: as the class says, after ``on_round``.
        """
        replies = list(replies)
        valid, _ = self._check_and_log_replies(replies, is_train=False, validate=False)
        faults = self._faults(replies)
        expected = metric_names(is_surface_round(self.config, server_round))
        per_site, read = [], []
        for message in sorted(valid, key=lambda m: m.metadata.src_node_id):
            node = message.metadata.src_node_id
            try:
                metrics, claimed, partition_id = read_evaluate_reply(message.content, expected)
            except ValueError as error:
                faults[self.enrolment.name(node)] = f"unreadable reply: {error}"
                continue
            name, problem = self.enrolment.admit(node, claimed)
            if problem:
                faults[name] = problem
                continue
            per_site.append((partition_id, name, metrics))
            read.append(message.content)
        per_site.sort(key=lambda reply: reply[0])
        if per_site:
            self.record |= evaluation_fields({name: m for _, name, m in per_site})
        if replies:
            self.record["evaluation_faults"] = faults
        self.record["seconds"] = time.perf_counter() - self.round_start
        self.on_round(self.record)
        self.history.append(self.record)
        if stalled_rounds(self.history) >= self.config.stall_rounds:
            raise FederationStalled.after(self.history)
        if not read:
            return None
        return self.evaluate_metrics_aggr_fn(read, self.weighted_by_key)
