"""The in-process federation: every client in one process, deterministic on CPU.

Each round: choose the participating clients, train each locally from the global
weights (:func:`fedbcs_fl.client.local_train`), hand the replies to the engine-neutral
server side (:func:`fedbcs_fl.round.aggregate_round`: screen, aggregate, record), evaluate
the global model on every site's test split (HD95 and ASSD on the rounds
:func:`~fedbcs_fl.round.is_surface_round` picks), append the record to ``metrics.jsonl``
(:mod:`fedbcs_fl.run_folder`) and write a checkpoint, in the background while the next
round trains (:class:`~fedbcs_fl.checkpoint.CheckpointWriter`). A client that raises,
drops out or runs past ``client_timeout`` is reported and the round goes on with the
others; if no reply is accepted the global model stays as it was, and after
``stall_rounds`` such rounds in a row the run stops with
:class:`~fedbcs_fl.round.FederationStalled`. Each client is enrolled as its site
(:mod:`fedbcs_fl.identity`): a reply that claims another site is rejected under the name
of the client that sent it.

With a ``client_timeout``, a client trains its round on a copy of its model, optimiser,
state and shuffling generator, in a daemon thread. A reply in time (or an error) is
adopted, so the run equals, bit for bit, one without the timeout; a round past the
deadline is abandoned: the client keeps what it had before the round, the worker stops at
its next step, and a worker that never returns cannot keep the process alive.

A killed run resumes from its last checkpoint (:meth:`Simulation.resume`) and ends with
the same model, bit for bit, as an uninterrupted run, also when it was killed while a
checkpoint was being written: the write is of a copy of the state, renamed into place
whole, and the run returns only once the last one is written. The run folder is held
(:func:`~fedbcs_fl.run_folder.hold_run_folder`) while the rounds run.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .algorithms import build_algorithm
from .algorithms.base import Algorithm, ClientUpdate
from .checkpoint import CHECKPOINT_NAME, CheckpointWriter, load_checkpoint
from .client import evaluate_sites, local_train, make_optimizer, model_weights, train_loader
from .config import RunConfig
from .data.base import SiteData
from .faults import ClientFault, FaultInjector, maybe_kill
from .identity import Enrolment
from .payload import prototype_sets
from .privacy import prototype_privacy
from .results import dice_line
from .round import (
    FederationStalled,
    aggregate_round,
    evaluation_fields,
    is_evaluation_round,
    is_surface_round,
    stalled_rounds,
)
from .run_folder import (
    RESUME_MAY_CHANGE,
    append_record,
    hold_run_folder,
    keep_records,
    resume_conflicts,
    save_model,
    write_config,
)
from .screening import ScreeningPolicy
from .weight_privacy import weight_privacy


@dataclass
class ClientRuntime:
    """A client's persistent objects: its model copy, optimiser, loader and state."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    generator: torch.Generator
    state: dict = field(default_factory=dict)

    def fork(self, config: RunConfig) -> ClientRuntime:
        """A copy sharing only the data: a round trained on it leaves this client as it
        is until :meth:`adopt` (and for good if the round is abandoned)."""
        model, optimizer, state = copy.deepcopy((self.model, self.optimizer, self.state))
        loader = train_loader(self.loader.dataset, config, 0)
        loader.generator.set_state(self.generator.get_state())
        return ClientRuntime(self.name, model, optimizer, loader, loader.generator, state)

    def adopt(self, fork: ClientRuntime) -> None:
        """Take over what a round trained on ``fork`` left."""
        self.model, self.optimizer, self.state = fork.model, fork.optimizer, fork.state
        self.loader, self.generator = fork.loader, fork.generator


def load_resume_checkpoint(out_dir: str | Path, config: RunConfig) -> dict | None:
    """The checkpoint a run of ``config`` resumes ``out_dir`` from (None: there is none yet,
    and the run starts again from round 1), checked to fit ``config``.

    Raises:
        ValueError: the checkpoint was written with settings that differ from ``config``
            in one resuming may not change (:func:`~fedbcs_fl.run_folder.resume_conflicts`:
            ``config.json`` was edited, or other options were given with ``--resume``), or
            ``config`` asks for fewer rounds than the checkpoint has done.
    """
    path = Path(out_dir) / CHECKPOINT_NAME
    if not path.exists():
        return None
    checkpoint = load_checkpoint(path)
    if "config" in checkpoint:  # checkpoints written before it was kept have none
        saved = RunConfig.from_json(checkpoint["config"], source=str(path))
        changed = resume_conflicts(saved, config)
        if changed:
            raise ValueError(
                f"the run in {out_dir} was started with other settings than it is resumed "
                f"with: {', '.join(changed)} changed, and resuming may change only "
                f"{', '.join(RESUME_MAY_CHANGE)}"
            )
    if config.rounds < checkpoint["round"]:
        raise ValueError(
            f"{out_dir} has done {checkpoint['round']} rounds: rounds must be at least that, "
            f"got {config.rounds}"
        )
    return checkpoint


class Simulation:
    """Run a federated experiment over ``sites`` with ``config``; results in ``out_dir``.

    Args:
        config: the run configuration (dataset defaults are filled in).
        sites: one :class:`SiteData` per client.
        out_dir: where ``config.json``, ``metrics.jsonl``, checkpoints and the model go
            (None: nowhere, and no checkpoints).
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
        self.algorithm: Algorithm = build_algorithm(self.config)
        self.faults = FaultInjector(  # a drill the method or the sites cannot run stops here
            self.config.inject_faults,
            self.algorithm,
            hang_seconds=2 * (self.config.client_timeout or 0),
            clients=[site.name for site in sites],
            seed=self.config.seed,
        )
        self.global_model = self.algorithm.build_model().to(self.device)
        self.global_weights = model_weights(self.global_model)
        self.global_payload: dict[str, torch.Tensor] = {}
        self.clients = [self._client(i, site) for i, site in enumerate(sites)]
        self.selection_rng = np.random.default_rng(self.config.seed)
        self.policy = ScreeningPolicy.of(self.config)
        self.enrolment = Enrolment({client.name: client.name for client in self.clients})
        self.completed_rounds = 0
        self.history: list[dict] = []
        self.last_replies: list[tuple[str, ClientUpdate]] = []  # the last round's, as sent

    def _client(self, index: int, site: SiteData) -> ClientRuntime:
        model = copy.deepcopy(self.global_model)
        loader = train_loader(site.train, self.config, index)
        optimizer = make_optimizer(model, self.config)
        return ClientRuntime(site.name, model, optimizer, loader, loader.generator)

    # ---- one round ----------------------------------------------------------------

    def select_clients(self) -> list[ClientRuntime]:
        n = self.config.clients_per_round or len(self.clients)
        if not 1 <= n <= len(self.clients):
            raise ValueError(f"clients_per_round must be in [1, {len(self.clients)}], got {n}")
        if n == len(self.clients):
            return list(self.clients)
        chosen = sorted(self.selection_rng.choice(len(self.clients), size=n, replace=False))
        return [self.clients[i] for i in chosen]

    def train_client(
        self,
        client: ClientRuntime,
        round_index: int,
        weights: dict[str, torch.Tensor],
        payload: dict[str, torch.Tensor],
        abandoned: threading.Event | None = None,
    ) -> ClientUpdate:
        """Train ``client``'s round from the global ``weights`` and ``payload``; once
        ``abandoned`` is set, stop with ClientFault before training or after a step."""

        def stop_if_abandoned() -> None:
            if abandoned is not None and abandoned.is_set():
                raise ClientFault(f"{client.name}'s round {round_index} was abandoned")

        self.faults.before_training(client.name, round_index)
        stop_if_abandoned()
        client.model.load_state_dict(weights)
        label = f"round {round_index} {client.name}" if self.progress else None

        def after_step(step: int) -> None:
            stop_if_abandoned()
            self.faults.after_step(client.name, round_index, step)
            maybe_kill(round_index, "local")

        return local_train(
            self.algorithm,
            client.model,
            client.optimizer,
            client.loader,
            payload,
            client.state,
            self.config.local_epochs,
            self.device,
            progress=label,
            on_step=after_step,
            privacy=prototype_privacy(
                self.config,
                len(prototype_sets(self.algorithm.uploads)),
                # by name: a round under a client timeout trains a fork of the client
                [c.name for c in self.clients].index(client.name),
                len(client.loader.dataset),
                round_index,
            ),
        )

    def _train_with_deadline(self, client: ClientRuntime, round_index: int) -> ClientUpdate:
        """Train, or raise ClientFault past ``client_timeout`` (see the module docstring)."""
        weights, payload = self.global_weights, self.global_payload
        timeout = self.config.client_timeout
        if timeout is None:
            return self.train_client(client, round_index, weights, payload)
        attempt = client.fork(self.config)
        abandoned = threading.Event()
        outcome: dict = {}

        def work() -> None:
            try:
                outcome["update"] = self.train_client(
                    attempt, round_index, weights, payload, abandoned
                )
            except BaseException as error:  # handed to the caller, as without a timeout
                outcome["error"] = error

        worker = threading.Thread(target=work, name=f"{client.name} round {round_index}")
        worker.daemon = True  # a client that never returns must not keep the process alive
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            abandoned.set()
            raise ClientFault(f"{client.name} timed out after {timeout:g} s")
        client.adopt(attempt)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["update"]

    def evaluate(
        self, model: nn.Module | None = None, distances: bool = True
    ) -> dict[str, dict[str, float]]:
        """Metrics of the global model (or ``model``) on every site's test split, in
        batches of ``eval_batch_size``; HD95 and ASSD only with ``distances``."""
        model = model or self.global_model
        return evaluate_sites(model, self.sites, self.config, distances)

    def run_round(self, round_index: int) -> dict:
        start = time.perf_counter()
        chosen = self.select_clients()
        replies: list[tuple[str, ClientUpdate]] = []
        faults: dict[str, str] = {}
        refused: dict[str, str] = {}
        for client in chosen:
            try:
                update = self._train_with_deadline(client, round_index)
                update = self.faults.corrupt(client.name, round_index, update, self.global_weights)
            except ClientFault as fault:
                faults[client.name] = str(fault)
                continue
            except Exception as error:  # a failing client must not stop the federation
                faults[client.name] = f"raised {type(error).__name__}: {error}"
                continue
            name, problem = self.enrolment.admit(client.name, update.site)
            if problem:
                refused[name] = problem
            else:
                replies.append((name, update))
        self.last_replies = replies
        maybe_kill(round_index, "aggregate")
        result = aggregate_round(
            self.algorithm,
            round_index,
            [c.name for c in chosen],
            replies,
            faults,
            self.global_weights,
            self.global_payload,
            self.policy,
            refused,
            weight_privacy(self.config, len(self.clients), round_index),
            self.history,
        )
        self.global_weights, self.global_payload = result.weights, result.payload
        if result.aggregated:
            self.global_model.load_state_dict(self.global_weights)
        record = result.record
        if is_evaluation_round(self.config, round_index):
            distances = is_surface_round(self.config, round_index)
            record |= evaluation_fields(self.evaluate(distances=distances))
        record["seconds"] = time.perf_counter() - start
        return record

    # ---- checkpoints ------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to continue after the last completed round, bit for bit."""
        return {
            "version": self.config.version,
            "method": self.config.method,
            "round": self.completed_rounds,
            "global_weights": self.global_weights,
            "global_payload": self.global_payload,
            "clients": {
                c.name: {
                    "optimizer": c.optimizer.state_dict(),
                    "state": c.state,
                    "generator": c.generator.get_state(),
                }
                for c in self.clients
            },
            "selection_rng": json.dumps(self.selection_rng.bit_generator.state),
            "torch_rng": torch.get_rng_state(),
            "config": self.config.to_json(),  # resuming checks config.json against it
        }

    def load_state_dict(self, state: dict) -> None:
        if state["method"] != self.config.method or state["version"] != self.config.version:
            raise ValueError(
                f"checkpoint of {state['method']} (config version {state['version']}) does not "
                f"fit this {self.config.method} run (version {self.config.version})"
            )
        self.completed_rounds = int(state["round"])
        self.global_weights = state["global_weights"]
        self.global_payload = state["global_payload"]
        self.global_model.load_state_dict(self.global_weights)
        for client in self.clients:
            saved = state["clients"][client.name]
            client.optimizer.load_state_dict(saved["optimizer"])
            client.state = saved["state"]
            client.generator.set_state(saved["generator"])
        self.selection_rng.bit_generator.state = json.loads(state["selection_rng"])
        torch.set_rng_state(state["torch_rng"])

    def _save_checkpoint(self, checkpoints: CheckpointWriter) -> None:
        rounds = self.completed_rounds
        checkpoints.write(
            self.out_dir / CHECKPOINT_NAME,
            self.state_dict(),
            before_rename=lambda: maybe_kill(rounds, "checkpoint"),
        )

    def resume(self, checkpoint: dict | None = None) -> None:
        """Continue from ``out_dir``'s checkpoint; metrics after it are dropped.

        Args:
            checkpoint: what :func:`load_resume_checkpoint` gave, if the caller has it
                (default: load it here, with the same checks).
        """
        with hold_run_folder(self.out_dir):
            if checkpoint is None:
                checkpoint = load_resume_checkpoint(self.out_dir, self.config)
            if checkpoint is not None:
                self.load_state_dict(checkpoint)
            self.history = keep_records(self.out_dir, self.completed_rounds)

    # ---- the whole run ----------------------------------------------------------------

    def run(self) -> list[dict]:
        """All remaining rounds; returns the per-round records (also in ``metrics.jsonl``).

        Raises:
            FederationStalled: ``stall_rounds`` rounds in a row aggregated no reply (their
                records and checkpoint are written first).
            RunFolderInUse: another process holds ``out_dir``.
            OSError: a file of the run folder could not be written (e.g. a full disk; a
                checkpoint's error is raised the round after, or at the end); what was
                written before is intact, and the run can be resumed.
        """
        if self.out_dir is None:
            return self._run_rounds(None)
        # Leaving the writer waits for the last checkpoint, before the folder is released.
        with hold_run_folder(self.out_dir), CheckpointWriter() as checkpoints:
            return self._run_rounds(checkpoints)

    def _run_rounds(self, checkpoints: CheckpointWriter | None) -> list[dict]:
        if self.out_dir is not None:
            write_config(self.out_dir, self.config)
        rounds = range(self.completed_rounds + 1, self.config.rounds + 1)
        bar = tqdm(rounds, desc=self.config.method, disable=not self.progress)
        for r in bar:
            record = self.run_round(r)
            self.history.append(record)
            self.completed_rounds = r
            if self.out_dir is not None:
                append_record(self.out_dir, record)
                if r % self.config.checkpoint_every == 0 or r == self.config.rounds:
                    self._save_checkpoint(checkpoints)
            if self.progress:
                bar.write(self._round_line(record))
            if self.on_round is not None:
                self.on_round(record)
            if stalled_rounds(self.history) >= self.config.stall_rounds:
                raise FederationStalled.after(self.history)
        if self.out_dir is not None:
            checkpoints.wait()  # a finished run's model is never ahead of its checkpoint
            save_model(self.out_dir, self.global_weights, self.config)
        return self.history

    @staticmethod
    def _round_line(record: dict) -> str:
        line = f"round {record['round']:3d}"
        if "mean_dice" in record:
            line += f"  {dice_line(record)}"
        for kind in ("faults", "rejected", "capped"):
            if record.get(kind):
                line += f"  {kind}: " + "; ".join(f"{c}: {r}" for c, r in record[kind].items())
        if record.get("discarded"):
            line += f"  discarded: {record['discarded']}"
        return line

    def fault_summary(self) -> str:
        """Every fault and rejection of the run, one line each ("" when there were none)."""
        lines = []
        for record in self.history:
            for kind in ("faults", "rejected", "capped"):
                for client, reason in record.get(kind, {}).items():
                    lines.append(f"round {record['round']}: {client} {kind.rstrip('s')}: {reason}")
            if record.get("discarded"):
                lines.append(f"round {record['round']}: {record['discarded']}")
        return "\n".join(lines)
