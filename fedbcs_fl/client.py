"""One client's local training and the evaluation of a model on one split.

Both engines (the simulator and the Flower ClientApp) call these functions; the
algorithm decides the loss, the optimiser step and the payload.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .algorithms.base import Algorithm, ClientUpdate, LocalContext
from .checkpoint import unloadable_entry
from .config import RunConfig
from .data.base import SiteData
from .metrics import segmentation_metrics
from .privacy import DELTA_KEY, EPSILON_KEY, PrototypePrivacy


def make_optimizer(model: nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    """The run's optimiser (``sgd`` with the run's momentum, or ``adam``), with weight
    decay."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; valid: adam, sgd")


def train_loader(dataset, config: RunConfig, client_index: int) -> DataLoader:
    """Client ``client_index``'s shuffled training loader, seeded from the run's seed.

    Its ``generator`` advances with every epoch: an engine that rebuilds the loader each
    round restores the generator's state to keep the same order of batches.
    """
    generator = torch.Generator().manual_seed(config.seed * 1000 + client_index)
    return DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=generator)


def model_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the model's state: what travels to the server."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def check_state(algorithm: Algorithm, state: dict) -> None:
    """Raise ``TypeError`` naming the entry of a client's persistent ``state`` that a
    checkpoint cannot hold (:func:`~fedbcs_fl.checkpoint.unloadable_entry`)."""
    entry = unloadable_entry(state, "state")
    if entry is not None:
        raise TypeError(
            f"{algorithm.name} keeps {entry}, in the client's persistent state, which a "
            "checkpoint cannot hold (tensors, numbers, strings, None, and lists, tuples and "
            "dicts of them): keep this round's objects in ctx.scratch"
        )


def local_train(
    algorithm: Algorithm,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    global_payload: dict[str, torch.Tensor],
    state: dict,
    epochs: int,
    device: torch.device,
    progress: str | None = None,
    on_step: Callable[[int], None] | None = None,
    privacy: PrototypePrivacy | None = None,
) -> ClientUpdate:
    """Train ``model`` (already holding the global weights) for ``epochs`` local epochs.

    ``optimizer`` persists across rounds, as in the released code: its moments carry over
    while the weights are replaced by the global ones. ``state`` is the client's
    persistent dict for algorithm state (e.g. MOON's previous weights), checkpointed
    between rounds. ``on_step`` is called with the step count after every optimiser step.
    ``privacy`` is the site's prototype mechanism this round (None: off); with it the
    prototypes come from a pass of the trained model over the training images one at a
    time (:meth:`~fedbcs_fl.algorithms.base.Algorithm.prototype_pass`), so that no image
    moves another's features through BatchNorm's batch statistics or a training step, and
    the metrics hold ``proto_dp_epsilon``, the ε the site has spent so far.

    However the round ends, even by an exception, its scratch objects are dropped and
    ``state`` is checked to hold only what a checkpoint can.

    Raises:
        TypeError: the algorithm left something in ``state`` that a checkpoint cannot
            hold (:func:`check_state`).
    """
    model.train()
    ctx = LocalContext(
        global_payload=global_payload,
        state=state,
        device=device,
        steps_scheduled=epochs * len(loader),
        privacy=privacy,
    )
    steps, total_loss, examples = 0, 0.0, 0
    bar = tqdm(total=epochs * len(loader), desc=progress, leave=False, disable=progress is None)
    try:
        algorithm.begin_local(model, ctx)
        for epoch in range(epochs):
            ctx.last_epoch = epoch == epochs - 1
            for images, masks in loader:
                images, masks = images.to(device), masks.to(device)
                batch_loss = lambda i=images, m=masks: algorithm.training_loss(model, i, m, ctx)
                loss = algorithm.optimizer_step(model, optimizer, batch_loss)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"local loss became {loss.item()} at step {steps}")
                steps += 1
                ctx.steps_done = steps
                total_loss += float(loss)
                examples += images.shape[0] if ctx.last_epoch else 0
                bar.update()
                if on_step is not None:
                    on_step(steps)
        if privacy is not None:
            algorithm.prototype_pass(model, single_images(loader), ctx)
        payload = algorithm.end_local(model, ctx)
    finally:
        bar.close()
        ctx.scratch.clear()
        check_state(algorithm, state)
    metrics = {"loss": total_loss / max(steps, 1), "steps": float(steps)}
    metrics |= {k: v / max(steps, 1) for k, v in ctx.logs.items()}
    if privacy is not None:
        metrics[EPSILON_KEY] = privacy.epsilon(state)
        metrics[DELTA_KEY] = privacy.delta
    return ClientUpdate(model_weights(model), examples, payload, metrics)


def single_images(loader) -> list | DataLoader:
    """Every image of ``loader`` in a batch of its own, in the data set's order: a
    DataLoader's data set one at a time, or each batch of a list of batches split.

    A data set that augments (``augment``, e.g. the real sets' flips and rotations) is read
    without: an image's prototype then depends on that image alone, and the pass draws
    nothing from the global RNG (nor does its loader, which has a generator of its own), so
    a run's training draws the same with prototype DP as without.
    """
    if isinstance(loader, DataLoader):
        dataset = loader.dataset
        if getattr(dataset, "augment", False):
            dataset = copy.copy(dataset)  # the training loader keeps augmenting
            dataset.augment = False
        return DataLoader(dataset, batch_size=1, shuffle=False, generator=torch.Generator())
    return [(x[i : i + 1], y[i : i + 1]) for x, y in loader for i in range(x.shape[0])]


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device):
    """Hard predictions and masks of a whole split, as CPU int64 tensors ``[N, H, W]``."""
    model.eval()
    preds, masks = [], []
    for images, batch_masks in loader:
        preds.append(model(images.to(device)).argmax(1).cpu())
        masks.append(batch_masks)
    return torch.cat(preds), torch.cat(masks)


def evaluate_site(
    model: nn.Module, site: SiteData, config: RunConfig, distances: bool = True
) -> dict[str, float]:
    """The metrics of ``model`` on ``site``'s test split as both engines score the global
    model: :func:`evaluate_split` in batches of the run's ``eval_batch_size``, over the
    run's ``num_classes``; HD95 and ASSD only with ``distances`` (default)."""
    device = torch.device(config.device)
    return evaluate_split(
        model, site.test, config.eval_batch_size, device, config.num_classes, distances
    )


def evaluate_sites(
    model: nn.Module, sites: list[SiteData], config: RunConfig, distances: bool = True
) -> dict[str, dict[str, float]]:
    """:func:`evaluate_site` on every site: site name → metrics."""
    return {site.name: evaluate_site(model, site, config, distances) for site in sites}


def evaluate_split(
    model: nn.Module,
    dataset,
    batch_size: int,
    device: torch.device,
    num_classes: int,
    distances: bool = True,
) -> dict[str, float]:
    """Dice, and with ``distances`` (default) HD95 and ASSD, per class and their means over
    the foreground classes (:func:`~fedbcs_fl.metrics.segmentation_metrics`) of ``model``
    on one split, in order, ``batch_size`` images at a time.

    The batch size is part of the result: the UNet's BatchNorm keeps no running statistics
    (as released), so in ``eval()`` mode it normalises each batch with its own.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    return segmentation_metrics(*predict(model, loader, device), num_classes, distances)
