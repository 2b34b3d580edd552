"""The in-process federation: every client in one process, deterministic on CPU.

Each round: choose the participating clients, train each locally from the global
weights (:func:`fedbcs_fl.client.local_train`), aggregate with the algorithm's server
side, evaluate the global model on every site's test split, and append one line to
``metrics.jsonl``.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .algorithms import build_algorithm
from .algorithms.base import Algorithm, ClientUpdate
from .client import local_train, make_optimizer, model_weights, predict
from .config import RunConfig
from .data.base import SiteData
from .metrics import segmentation_metrics


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def sample_shape(site: SiteData) -> tuple[int, int]:
    """(in_channels, image size) of a site's first training example."""
    image, _ = site.train[0]
    return image.shape[0], image.shape[-1]


@dataclass
class ClientRuntime:
    """A client's persistent objects: its model copy, optimiser, loader and state."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    state: dict = field(default_factory=dict)


def append_jsonl(path: Path, record: dict) -> None:
    """Append one whole line and fsync, so the file never ends with a broken line."""
    line = json.dumps(record, sort_keys=True) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


class Simulation:
    """Run a federated experiment over ``sites`` with ``config``; results in ``out_dir``.

    Args:
        config: the run configuration (dataset defaults are filled in).
        sites: one :class:`SiteData` per client.
        out_dir: where ``config.json``, ``metrics.jsonl`` and the model go (None: nowhere).
        progress: show progress bars and a line per round.
        on_round: optional callback given each round's record.
    """

    def __init__(
        self,
        config: RunConfig,
        sites: list[SiteData],
        out_dir: str | Path | None = None,
        progress: bool = True,
        on_round: Callable[[dict], None] | None = None,
    ):
        self.config = config.resolved()
        self.sites = sites
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.on_round = on_round
        self.device = torch.device(self.config.device)
        torch.manual_seed(self.config.seed)  # model initialisation
        in_channels, _ = sample_shape(sites[0])
        self.algorithm: Algorithm = build_algorithm(self.config, in_channels, num_classes=2)
        self.global_model = self.algorithm.build_model().to(self.device)
        self.global_weights = model_weights(self.global_model)
        self.global_payload: dict[str, torch.Tensor] = {}
        self.clients = [self._client(i, site) for i, site in enumerate(sites)]
        self.selection_rng = np.random.default_rng(self.config.seed)
        self.history: list[dict] = []
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(self.config.to_json())

    def _client(self, index: int, site: SiteData) -> ClientRuntime:
        model = copy.deepcopy(self.global_model)
        generator = torch.Generator().manual_seed(self.config.seed * 1000 + index)
        loader = DataLoader(
            site.train, batch_size=self.config.batch_size, shuffle=True, generator=generator
        )
        return ClientRuntime(site.name, model, make_optimizer(model, self.config), loader)

    def select_clients(self) -> list[ClientRuntime]:
        n = self.config.clients_per_round or len(self.clients)
        if not 1 <= n <= len(self.clients):
            raise ValueError(f"clients_per_round must be in [1, {len(self.clients)}], got {n}")
        if n == len(self.clients):
            return list(self.clients)
        chosen = sorted(self.selection_rng.choice(len(self.clients), size=n, replace=False))
        return [self.clients[i] for i in chosen]

    def train_client(self, client: ClientRuntime, round_index: int) -> ClientUpdate:
        client.model.load_state_dict(self.global_weights)
        label = f"round {round_index} {client.name}" if self.progress else None
        return local_train(
            self.algorithm,
            client.model,
            client.optimizer,
            client.loader,
            self.global_payload,
            client.state,
            self.config.local_epochs,
            self.device,
            progress=label,
        )

    def evaluate(self, model: nn.Module | None = None) -> dict[str, dict[str, float]]:
        """Metrics of the global model (or ``model``) on every site's test split."""
        model = model or self.global_model
        results = {}
        for site in self.sites:
            loader = DataLoader(site.test, batch_size=self.config.batch_size, shuffle=False)
            preds, masks = predict(model, loader, self.device)
            results[site.name] = segmentation_metrics(preds, masks)
        return results

    def run_round(self, round_index: int) -> dict:
        start = time.perf_counter()
        chosen = self.select_clients()
        updates = [self.train_client(c, round_index) for c in chosen]
        down = tensor_bytes(self.global_weights) + tensor_bytes(self.global_payload)
        self.global_weights, self.global_payload = self.algorithm.aggregate(
            updates, self.global_weights, self.global_payload
        )
        self.global_model.load_state_dict(self.global_weights)
        record = {
            "round": round_index,
            "clients": [c.name for c in chosen],
            "client_metrics": {c.name: u.metrics for c, u in zip(chosen, updates, strict=True)},
            "prototypes_uploaded": {
                c.name: self.algorithm.count_prototypes(u.payload)
                for c, u in zip(chosen, updates, strict=True)
            },
            "bytes_up": {
                c.name: tensor_bytes(u.weights) + tensor_bytes(u.payload)
                for c, u in zip(chosen, updates, strict=True)
            },
            "bytes_down": down,
        }
        if round_index % self.config.eval_every == 0 or round_index == self.config.rounds:
            evaluation = self.evaluate()
            for metric in ("dice", "hd95", "assd"):
                record[metric] = {site: m[metric] for site, m in evaluation.items()}
                record[f"mean_{metric}"] = float(np.nanmean(list(record[metric].values())))
        record["seconds"] = time.perf_counter() - start
        return record

    def run(self) -> list[dict]:
        """All rounds; returns the per-round records (also in ``metrics.jsonl``)."""
        rounds = range(1, self.config.rounds + 1)
        bar = tqdm(rounds, desc=self.config.method, disable=not self.progress)
        for r in bar:
            record = self.run_round(r)
            self.history.append(record)
            if self.out_dir is not None:
                append_jsonl(self.out_dir / "metrics.jsonl", record)
            if self.progress and "mean_dice" in record:
                sites = " ".join(f"{k}={v:.3f}" for k, v in record["dice"].items())
                bar.write(f"round {r:3d}  mean Dice {record['mean_dice']:.4f}  ({sites})")
            if self.on_round is not None:
                self.on_round(record)
        if self.out_dir is not None:
            save_file(
                self.global_weights,
                str(self.out_dir / "model.safetensors"),
                metadata={"method": self.config.method, "version": str(self.config.version)},
            )
        return self.history
