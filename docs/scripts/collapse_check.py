"""Why did a pixel-prototype run collapse? (docs/results.md, "Why FedProto, FPL and FedPLVM
collapse").

From a finished run folder of a method whose server sends per-class prototype means
(FedProto, FPL, FedPLVM):

1. the global model's head at each class's global prototype: the logit margin of the
   class over the best other class (negative: the head reads the prototype as another
   class; None for a class without one);
2. one more local round per site from the last global model: each local model's Dice on
   its own training images and the share of pixels it calls each class.

Usage: python docs/scripts/collapse_check.py RUN_FOLDER
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from fedbcs_fl.checkpoint import load_checkpoint
from fedbcs_fl.client import evaluate_split, predict
from fedbcs_fl.config import RunConfig
from fedbcs_fl.data import load_sites
from fedbcs_fl.simulation import Simulation


def head_margins(model: torch.nn.Module, means: torch.Tensor) -> list[float]:
    """Per class row of ``means``, its logit under ``model``'s 1×1 head minus the best
    other class's."""
    head = next(m for n, m in model.named_modules() if n.endswith("segmentation_head"))
    with torch.no_grad():
        logits = head(means[:, :, None, None])[:, :, 0, 0]
    own = logits.diagonal()
    others = logits.clone()
    others.fill_diagonal_(-torch.inf)
    return (own - others.max(dim=1).values).tolist()


def main(run: Path) -> None:
    config = RunConfig.from_json((run / "config.json").read_text(), source=str(run))
    sites = load_sites(config)
    simulation = Simulation(config, sites, progress=False)
    simulation.load_state_dict(load_checkpoint(run / "checkpoint.pt"))
    payload = simulation.global_payload
    if "mean" not in payload:
        sys.exit(f"{config.method} sends no per-class prototype means: nothing to check")
    device = next(simulation.global_model.parameters()).device
    margins = head_margins(simulation.global_model, payload["mean"].to(device))
    present = payload["mean_present"].tolist()
    print(
        "head margin at each class's global prototype:",
        [round(m, 2) if sent else None for m, sent in zip(margins, present, strict=True)],
    )
    batch = config.eval_batch_size
    for client, site in zip(simulation.clients, sites, strict=True):
        update = simulation.train_client(
            client, simulation.completed_rounds + 1, simulation.global_weights, payload
        )
        client.model.load_state_dict(update.weights)
        dice = evaluate_split(
            client.model, site.train, batch, simulation.device, config.num_classes, False
        )["dice"]
        preds, masks = predict(client.model, DataLoader(site.train, batch), simulation.device)
        predicted = torch.bincount(preds.flatten(), minlength=config.num_classes) / preds.numel()
        true = torch.bincount(masks.flatten(), minlength=config.num_classes) / masks.numel()
        print(
            f"{site.name}: local training Dice {100 * dice:.1f}; share of pixels per class "
            f"predicted {[round(v, 3) for v in predicted.tolist()]}, "
            f"true {[round(v, 3) for v in true.tolist()]}"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
