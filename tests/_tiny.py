"""The tiny federation every test runs, and hand-made inputs for the algorithms' tests.

One run configuration, :data:`TINY`, given as a ``RunConfig`` (:func:`tiny_config`), as
``fedbcs`` arguments (:func:`tiny_argv`) or as its synthetic sites (:func:`tiny_sites`);
a test overrides only the fields it is about. The synthetic nuclei sites are unequal
(1.5, 0.75, 0.5 and 1.25 times ``n_train`` images): 8 images in batches of 3 give the
smallest site two local steps a round.
"""

import copy
import math

import torch

from fedbcs_fl.algorithms import METHODS, algorithm_class, build_algorithm
from fedbcs_fl.algorithms.base import Algorithm, ClientUpdate, LocalContext
from fedbcs_fl.client import local_train, make_optimizer, model_weights
from fedbcs_fl.config import RunConfig
from fedbcs_fl.data import load_sites
from fedbcs_fl.payload import prototype_sets
from fedbcs_fl.simulation import Simulation

# RunConfig fields of the tiny run.
TINY = {
    "dataset": "synthetic-nuclei",
    "rounds": 2,
    "n_train": 8,
    "n_test": 3,
    "image_size": 32,
    "init_features": 8,
    "batch_size": 3,
}
# Method options of the tiny run, given to the methods that have them.
TINY_OPTIONS = {"proto_dim": 8}


def tiny_options(method: str) -> dict:
    return {k: v for k, v in TINY_OPTIONS.items() if k in algorithm_class(method).options}


def tiny_config(method: str = "fedavg", **fields) -> RunConfig:
    """The tiny run of ``method``, resolved; ``fields`` replace RunConfig fields, and their
    ``method_options`` are added to the tiny ones."""
    options = tiny_options(method) | fields.pop("method_options", {})
    return RunConfig(method=method, **(TINY | fields), method_options=options).resolved()


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def tiny_argv(method: str | None = None, **fields) -> list[str]:
    """The tiny run as ``fedbcs`` arguments; with ``method``, also ``--method`` and the
    tiny method options (``compare`` and ``calibrate-data`` take neither)."""
    argv = []
    for name, value in (TINY | fields).items():
        argv += [_flag(name), ",".join(value) if isinstance(value, list) else str(value)]
    if method is not None:
        argv += ["--method", method]
        for name, value in tiny_options(method).items():
            argv += [_flag(name), str(value)]
    return argv


def tiny_sites(num_sites: int | None = None, **fields):
    """The first ``num_sites`` sites (all by default) of the tiny run's data set."""
    return load_sites(tiny_config(**fields))[:num_sites]


def prototype_methods() -> list[str]:
    """The methods whose clients upload prototypes in the tiny run, by their declaration."""
    return [name for name in METHODS if prototype_sets(tiny_algorithm(name).uploads)]


def tiny_algorithm(method: str, **options):
    """``method`` built for the tiny run (its data set's channels and classes) with method
    ``options``."""
    return build_algorithm(tiny_config(method, method_options=options))


def first_conv_and_head(weights: dict) -> tuple[int, int]:
    """(input channels of the first convolution, classes of the segmentation head) of a
    UNet's weights, alone or inside a method's model (e.g. FedBCS's ``backbone.``)."""
    (first,) = [w for k, w in weights.items() if k.endswith("encoder.stages.0.0.weight")]
    (head,) = [w for k, w in weights.items() if k.endswith("segmentation_head.weight")]
    return first.shape[1], head.shape[0]


def context(payload=None, state=None) -> LocalContext:
    return LocalContext(
        global_payload=payload or {},
        state={} if state is None else state,
        device=torch.device("cpu"),
        last_epoch=True,
    )


def round_one_replies(
    algorithm: Algorithm, clients: int = 3
) -> tuple[dict[str, torch.Tensor], list[tuple[str, ClientUpdate]]]:
    """Round 1 of ``algorithm`` through :func:`~fedbcs_fl.client.local_train`, for
    ``clients`` clients (``site-A``, ``site-B``, ...) of one hand-made batch each (two 32×32
    images, their bright pixels foreground): ``(global weights, [(site, update)])``, the
    updates as sent. No data set, no Simulation."""
    torch.manual_seed(0)
    model = algorithm.build_model()
    replies = []
    for index in range(clients):
        gen = torch.Generator().manual_seed(index)
        images = torch.rand(2, algorithm.in_channels, 32, 32, generator=gen)
        batch = (images, (images[:, 0] > 0.6).long())
        local = copy.deepcopy(model)
        optimizer = make_optimizer(local, algorithm.config)
        update = local_train(algorithm, local, optimizer, [batch], {}, {}, 1, torch.device("cpu"))
        replies.append((f"site-{chr(ord('A') + index)}", update))
    return model_weights(model), replies


def run_two_rounds(method: str, num_sites: int = 2):
    """The tiny run of ``method`` on ``num_sites`` sites: two rounds, finite results."""
    simulation = Simulation(tiny_config(method), tiny_sites(num_sites), progress=False)
    history = simulation.run()
    assert all(math.isfinite(record["mean_dice"]) for record in history)
    for record in history:
        assert all(math.isfinite(m["loss"]) for m in record["client_metrics"].values())
    return history, simulation


def logged(record: dict, key: str) -> list[float]:
    """The values of ``key`` in a round's client metrics (absent: not logged)."""
    return [m[key] for m in record["client_metrics"].values() if key in m]
