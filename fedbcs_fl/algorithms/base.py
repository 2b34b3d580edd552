"""The algorithm interface, in Flower's shape, and FedAvg as its plain implementation.

An algorithm has a client side and a server side, and nothing else: the in-process
simulator and the Flower apps both drive the same objects.

Client side (one site, one round):
    ``begin_local`` → for each batch ``training_loss`` → optimiser step → ``end_local``,
    run by :func:`fedbcs_fl.client.local_train`, which returns a :class:`ClientUpdate`:
    the weights, the payload (e.g. prototypes) and the metrics.
Server side (one round):
    ``aggregate(updates, global_weights, global_payload)`` → next weights and payload.

A method subclasses :class:`Algorithm` and overrides only what differs. Its
hyper-parameters, ``options`` (name → :class:`~fedbcs_fl.schema.Option`: default, help,
what values it may take), are declared in its entry of
:data:`~fedbcs_fl.algorithms.methods.METHODS` and read from ``self.opt``; the payload its
clients send, in ``uploads`` (:mod:`fedbcs_fl.payload`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..aggregation import robust_aggregate, weighted_average
from ..data.sources import data_source
from ..losses import segmentation_loss
from ..payload import PrototypeSet, Upload, prototype_sets
from ..privacy import PrototypePrivacy, check_privacy_config, proto_dp_on
from ..schema import Option
from ..weight_privacy import WeightPrivacy, check_weight_privacy_config
from .methods import METHODS

if TYPE_CHECKING:  # the config names the methods, so it imports this package
    from ..config import RunConfig


@dataclass
class ClientUpdate:
    """What a client sends back after local training.

    ``site`` is the site the reply says it comes from (Flower: its site record), a claim
    the engine checks against its own identity of the client (:mod:`fedbcs_fl.identity`);
    None: no claim.
    """

    weights: dict[str, torch.Tensor]
    num_examples: int
    payload: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    site: str | None = None


@dataclass
class LocalContext:
    """What one client's local training sees in one round.

    ``global_payload`` is what the server sent. ``state`` is the client's persistent dict:
    it survives rounds and is checkpointed (e.g. MOON's previous weights), so it holds
    only what a checkpoint can (tensors, numbers, strings, None, and lists, tuples and
    dicts of them; :func:`fedbcs_fl.client.local_train` checks it after every round,
    however the round ends). ``scratch`` holds this round's objects (a frozen model, a
    generator, an anchor copy of the weights) and is emptied when the round ends, however
    it ends. ``sums`` are running sums (e.g. class sums for prototypes);
    ``steps_scheduled`` / ``steps_done`` count optimiser steps this round; ``last_epoch``
    is True during the last local epoch. ``privacy`` is the site's prototype mechanism
    this round (:mod:`fedbcs_fl.privacy`), None when prototype DP is off.
    """

    global_payload: dict[str, torch.Tensor]
    state: dict[str, Any]
    device: torch.device
    steps_scheduled: int = 0
    steps_done: int = 0
    last_epoch: bool = False
    scratch: dict[str, Any] = field(default_factory=dict)
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    logs: dict[str, float] = field(default_factory=dict)
    privacy: PrototypePrivacy | None = None

    def accumulate(self, key: str, value: torch.Tensor) -> None:
        """Add ``value`` into the running sum ``key`` (detached, float64 for exact means)."""
        value = value.detach().to(torch.float64)
        if key in self.sums:
            self.sums[key] += value
        else:
            self.sums[key] = value.clone()

    @property
    def recording(self) -> bool:
        """Whether this training step's features go into the uploaded prototypes: those of
        the last local epoch, unless prototype DP is on. Then they come from a pass of the
        trained model over one image at a time after training
        (:meth:`Algorithm.prototype_pass`), so that an image's contribution depends
        on no other image (docs/privacy.md)."""
        return self.last_epoch and self.privacy is None

    def log(self, key: str, value: float | torch.Tensor) -> None:
        """Add a per-batch scalar to the round's metrics (averaged over batches)."""
        if isinstance(value, torch.Tensor):
            value = value.detach()
        self.logs[key] = self.logs.get(key, 0.0) + float(value)


class Algorithm:
    """FedAvg (McMahan et al. 2017): size-weighted mean of the weights, no extra loss."""

    name: ClassVar[str] = "fedavg"
    # Hyper-parameter name → its declaration, in the method's entry of METHODS (methods.py).
    options: ClassVar[dict[str, Option]] = METHODS[name].options
    # What a client sends beside its weights (fedbcs_fl/payload.py): screening checks every
    # reply against it, the fault drills and paper Table 3 read its prototype sets. A
    # method whose payload depends on its options makes this a property.
    uploads: tuple[Upload, ...] = ()

    def __init__(self, config: RunConfig, in_channels: int, num_classes: int):
        self.config = config
        self.in_channels = in_channels
        self.num_classes = num_classes
        unknown = sorted(set(config.method_options) - set(self.options))
        if unknown:
            valid = ", ".join(sorted(self.options)) or "none"
            raise ValueError(f"{self.name} has no option {', '.join(unknown)}; valid: {valid}")
        self.opt = {}
        for key, option in self.options.items():
            value = config.method_options.get(key)
            if value is None:
                value = option.default
            if value is None:
                value = getattr(data_source(config.dataset).defaults, key)
            try:
                self.opt[key] = option.check(value)
            except ValueError as error:
                raise ValueError(f"{self.name} option {key} {error}") from None
        check_privacy_config(config)
        check_weight_privacy_config(config)
        if proto_dp_on(config) and not prototype_sets(self.uploads):
            raise ValueError(
                f"prototype DP is on but {self.name}, as configured, sends no prototypes"
            )
        if proto_dp_on(config) and type(self).record_batch is Algorithm.record_batch:
            # Its prototypes would come from the training batches, not the private pass.
            raise ValueError(
                f"prototype DP needs {self.name} to record its prototypes in the pass after "
                "training (Algorithm.record_batch), and it does not"
            )

    # ---- model --------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        from fedbcs_models import UNet

        return UNet(self.in_channels, self.num_classes, init_features=self.config.init_features)

    # ---- client side ----------------------------------------------------------------

    def begin_local(self, model: nn.Module, ctx: LocalContext) -> None:
        """Before the first local step; ``model`` already holds the global weights."""

    def training_loss(
        self, model: nn.Module, images: torch.Tensor, masks: torch.Tensor, ctx: LocalContext
    ) -> torch.Tensor:
        """The loss of one batch; add method terms here and log them with ``ctx.log``."""
        return self.segmentation_loss(model(images), masks)

    def segmentation_loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """(CE + soft Dice) / 2 with the run's ``dice_loss_classes``: every method's base."""
        return segmentation_loss(logits, masks, self.config.dice_loss_classes)

    def optimizer_step(self, model, optimizer, loss_fn) -> torch.Tensor:
        """One optimiser step. ``loss_fn()`` computes the batch loss (a closure)."""
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        return loss.detach()

    def record_batch(
        self, model: nn.Module, images: torch.Tensor, masks: torch.Tensor, ctx: LocalContext
    ) -> None:
        """Accumulate one batch's share of what the uploaded prototypes are built from, from
        a forward pass of ``model`` (called by :meth:`prototype_pass`). Nothing for a
        method that uploads none."""

    @torch.no_grad()
    def prototype_pass(self, model: nn.Module, batches, ctx: LocalContext) -> None:
        """:meth:`record_batch` of every ``(images, masks)`` in ``batches``, in eval mode
        at the current weights: a pass after training (prototype DP's, one image at a
        time; FedPLVM's, as released)."""
        training = model.training
        model.eval()
        try:
            for images, masks in batches:
                self.record_batch(model, images.to(ctx.device), masks.to(ctx.device), ctx)
        finally:
            model.train(training)

    def end_local(self, model: nn.Module, ctx: LocalContext) -> dict[str, torch.Tensor]:
        """After the last local step: the payload sent beside the weights."""
        return {}

    # ---- server side ----------------------------------------------------------------

    def aggregate_weights(
        self, updates: list[ClientUpdate], global_weights: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The method's mean of the weights (FedAvg: weighted by example counts)."""
        return weighted_average([u.weights for u in updates], [u.num_examples for u in updates])

    def next_weights(
        self,
        updates: list[ClientUpdate],
        global_weights: dict[str, torch.Tensor],
        weight_privacy: WeightPrivacy | None = None,
    ) -> dict[str, torch.Tensor]:
        """The next global weights: with weight DP on, ``weight_privacy``'s noisy mean of
        the clipped updates (:mod:`fedbcs_fl.weight_privacy`); else by the run's
        ``aggregation``: ``mean`` is the method's :meth:`aggregate_weights`, and a robust
        rule (median, trimmed-mean, krum) replaces it for every method
        (:func:`~fedbcs_fl.aggregation.robust_aggregate`)."""
        if weight_privacy is not None:
            return weight_privacy.aggregate([u.weights for u in updates], global_weights)
        if self.config.aggregation == "mean":
            return self.aggregate_weights(updates, global_weights)
        return robust_aggregate([u.weights for u in updates], self.config.aggregation)

    def aggregate_payload(
        self, updates: list[ClientUpdate], global_payload: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return {}

    def aggregate(
        self,
        updates: list[ClientUpdate],
        global_weights: dict[str, torch.Tensor],
        global_payload: dict[str, torch.Tensor],
        weight_privacy: WeightPrivacy | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The next global weights (:meth:`next_weights`) and payload from this round's
        client updates."""
        weights = self.next_weights(updates, global_weights, weight_privacy)
        return weights, self.aggregate_payload(updates, global_payload)

    # ---- payload contract ------------------------------------------------------------

    def prototype_dim(self, prototypes: PrototypeSet) -> int:
        """D, the width of the rows of one of this method's declared prototype sets."""
        raise NotImplementedError(f"{self.name} declares {prototypes} but not its width")

    def count_prototypes(self, payload: dict[str, torch.Tensor]) -> int:
        """Prototype vectors in a payload (paper Table 3): the rows of the declared
        prototype sets."""
        sets = prototype_sets(self.uploads)
        return sum(int(payload[p.rows].shape[0]) for p in sets if p.rows in payload)
