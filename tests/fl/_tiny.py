"""A tiny federation and hand-made inputs shared by the prototype baselines' tests."""

import math

import torch

from fedbcs_fl.algorithms import build_algorithm
from fedbcs_fl.algorithms.base import LocalContext
from fedbcs_fl.config import RunConfig
from fedbcs_fl.data.synthetic import make_synthetic
from fedbcs_fl.simulation import Simulation


def algorithm(method: str, **options):
    config = RunConfig(method=method, init_features=8, method_options=options).resolved()
    return build_algorithm(config, in_channels=3, num_classes=2)


def context(payload=None, state=None) -> LocalContext:
    return LocalContext(
        global_payload=payload or {},
        state={} if state is None else state,
        device=torch.device("cpu"),
        last_epoch=True,
    )


def run_two_rounds(method: str, num_sites: int = 2):
    """Two rounds on ``num_sites`` synthetic nuclei sites, two local steps each."""
    sites = make_synthetic("synthetic-nuclei", n_train=6, n_test=3, image_size=32)[:num_sites]
    config = RunConfig(
        method=method, rounds=2, n_train=6, n_test=3, image_size=32, init_features=8, batch_size=3
    )
    simulation = Simulation(config, sites, progress=False)
    history = simulation.run()
    assert all(math.isfinite(record["mean_dice"]) for record in history)
    for record in history:
        assert all(math.isfinite(m["loss"]) for m in record["client_metrics"].values())
    return history, simulation


def logged(record: dict, key: str) -> list[float]:
    """The values of ``key`` in a round's client metrics (absent: not logged)."""
    return [m[key] for m in record["client_metrics"].values() if key in m]
