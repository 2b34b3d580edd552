"""What every method's client loss, client state and server side must keep, through the
algorithms' public hooks, so that a method quietly broken (a term left out of the loss,
detached, unweighted; state never refreshed; prototypes from the wrong epoch; the wrong
mean on the server) fails a test rather than a Table 1 row.

The per-method files check each formula against a naive one; here the same contracts are
checked for every method that has them:

- ``training_loss`` is the segmentation loss plus the weighted terms it logs;
- the gradient of ``training_loss`` is the derivative of its value (no term detached from
  the weights), and that of ``prototype_loss`` reaches the features;
- with its weights at 0 a method trains exactly the model FedAvg trains;
- what must be refreshed every round is (3 rounds of 2 local epochs);
- the server's cluster prototypes and their mean with several unequal clusters per class.

Rounds run through :func:`~fedbcs_fl.client.local_train` and the algorithm's ``aggregate``,
on a few hand-made batches of 32×32 images (:class:`Federation`): no Simulation, no data
set, no evaluation.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedbcs_fl.algorithms import build_algorithm
from fedbcs_fl.algorithms.base import Algorithm, ClientUpdate, LocalContext
from fedbcs_fl.algorithms.moon import moon_contrastive_loss
from fedbcs_fl.client import local_train, make_optimizer, model_weights
from fedbcs_fl.payload import prototype_sets

from .._tiny import tiny_algorithm, tiny_config

CPU = torch.device("cpu")
PIXEL_CHANNELS = tiny_config().init_features  # of the last decoder block: the UNet's width

# Method options of these tests: every weight away from 1, so that a term added without
# its weight changes the loss; FedBCS's τ large enough that the released caps of L_contra
# leave it a gradient.
OPTIONS = {
    "fedprox": {"mu": 0.5},
    "moon": {"mu": 0.7},
    "fedproto": {"lambda_proto": 0.6},
    "fpl": {},
    "fedcontrast": {"lambda_own": 0.6, "lambda_others": 1.7},
    "fedplvm": {"lambda_plvm": 0.6},
    "feduv": {"lambda_variance": 0.6, "lambda_uniformity": 1.7, "uniformity_samples": 256},
    "fedbcs": {"lambda_consis": 0.3, "tau": 0.5},
}

# The weight each logged term enters the loss with (FedProx logs its term weighted).
STREAM_TERMS = [(t, s) for t in ("contra", "consis") for s in ("encoder", "decoder")]
TERM_WEIGHTS: dict[str, Callable[[dict], dict[str, float]]] = {
    "fedprox": lambda o: {"fedprox/proximal": 1.0},
    "moon": lambda o: {"moon/contrastive": o["mu"]},
    "fedproto": lambda o: {"fedproto/proto": o["lambda_proto"]},
    "fpl": lambda o: {"fpl/infonce": 1.0, "fpl/mse": 1.0},
    "fedcontrast": lambda o: {
        "fedcontrast/own": o["lambda_own"],
        "fedcontrast/others": o["lambda_others"],
    },
    "fedplvm": lambda o: {"fedplvm/alpha": o["lambda_plvm"], "fedplvm/corr": o["lambda_plvm"]},
    "feduv": lambda o: {
        "feduv/variance": o["lambda_variance"],
        "feduv/uniformity": o["lambda_uniformity"],
    },
    # ½ Σ_stream (L_contra + λ·L_consis)
    "fedbcs": lambda o: {
        f"{t}/{s}": 0.5 * (o["lambda_consis"] if t == "consis" else 1.0) for t, s in STREAM_TERMS
    },
}
PROTOTYPE_LOSS_METHODS = ["fedproto", "fpl", "fedcontrast", "fedplvm"]
PROTOTYPE_METHODS = [*PROTOTYPE_LOSS_METHODS, "fedbcs"]


def method(name: str, **options) -> Algorithm:
    """``name`` for the tiny run with this module's options, then ``options``."""
    return tiny_algorithm(name, **(OPTIONS.get(name, {}) | options))


# ---- data and rounds -------------------------------------------------------------------


def batch(seed: int, foreground: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 32×32 images; the bright pixels of their first channel are foreground
    (about 40 %, in every image), or, without ``foreground``, every pixel is background."""
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    masks = (images[:, 0] > 0.6).long() if foreground else torch.zeros(2, 32, 32).long()
    return images, masks


class EpochLoader:
    """A loader whose ``i``-th pass since :meth:`restart` yields ``epochs[i]`` (and the last
    of them in any pass after), so a test tells the batches of a round's last local epoch
    from the others."""

    def __init__(self, epochs: list[list[tuple[torch.Tensor, torch.Tensor]]]):
        self.epochs, self.passes = epochs, 0

    def restart(self) -> None:
        self.passes = 0

    def __len__(self) -> int:
        return len(self.epochs[0])

    def __iter__(self):
        epoch = self.epochs[min(self.passes, len(self.epochs) - 1)]
        self.passes += 1
        return iter(epoch)


class Client:
    """One client's model copy, optimiser, loader and persistent state."""

    def __init__(self, model: nn.Module, optimizer, loader):
        self.model, self.optimizer, self.loader, self.state = model, optimizer, loader, {}

    def start(self, algorithm: Algorithm, weights, payload) -> tuple[nn.Module, LocalContext]:
        """A copy of the client's model at ``weights`` and a context past ``begin_local``,
        as local training starts (its state is the client's own)."""
        model = copy.deepcopy(self.model)
        model.load_state_dict(weights)
        ctx = LocalContext(global_payload=payload, state=self.state, device=CPU, last_epoch=True)
        algorithm.begin_local(model, ctx)
        return model, ctx


class Federation:
    """Clients trained by ``algorithm`` from ``model``'s weights with
    :func:`~fedbcs_fl.client.local_train`, aggregated by ``algorithm.aggregate``.

    ``loaders`` is one list of batches (or an :class:`EpochLoader`) per client; the
    optimisers are the run's (``algorithm.config``), made once, as the engines do.
    """

    def __init__(self, algorithm: Algorithm, model: nn.Module, loaders, epochs: int = 1):
        self.algorithm, self.epochs = algorithm, epochs
        self.weights, self.payload = model_weights(model), {}
        self.clients = []
        for loader in loaders:
            copied = copy.deepcopy(model)
            optimizer = make_optimizer(copied, algorithm.config)
            self.clients.append(Client(copied, optimizer, loader))

    def round(self) -> list[ClientUpdate]:
        updates = []
        for client in self.clients:
            client.model.load_state_dict(self.weights)
            updates.append(
                local_train(
                    self.algorithm,
                    client.model,
                    client.optimizer,
                    client.loader,
                    self.payload,
                    client.state,
                    self.epochs,
                    CPU,
                )
            )
        self.weights, self.payload = self.algorithm.aggregate(updates, self.weights, self.payload)
        return updates


def federation(
    algorithm: Algorithm, batches: int = 2, epochs: int = 1, model_of: Algorithm | None = None
) -> Federation:
    """Two clients of ``batches`` batches each, from the model ``model_of`` (by default
    ``algorithm``) builds under seed 0."""
    torch.manual_seed(0)
    model = (model_of or algorithm).build_model()
    loaders = [[batch(10 * i + j) for j in range(batches)] for i in range(2)]
    return Federation(algorithm, model, loaders, epochs)


def round_two(name: str, **options) -> tuple[Algorithm, Client, Federation]:
    """``name`` after one round of two clients: the first client, about to train round 2,
    with the server's payload and its own state (the method's terms are all active)."""
    algorithm = method(name, **options)
    fed = federation(algorithm)
    fed.round()
    return algorithm, fed.clients[0], fed


def nudge(model: nn.Module, scale: float = 0.02) -> None:
    """Move every parameter a little, as local steps would (away from the global weights)."""
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def in_double(client: Client, fed: Federation):
    """``client``'s model and state, and the server's weights and payload, in float64."""
    client.model.double()
    client.state.update(to_double(client.state))
    return to_double(fed.weights), to_double(fed.payload)


def to_double(value):
    """``value`` with every floating tensor in it (nested in dicts, lists, tuples) in float64."""
    if isinstance(value, torch.Tensor):
        return value.double() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: to_double(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_double(v) for v in value)
    return value


# ---- the loss is the segmentation loss plus the weighted terms -------------------------


@pytest.mark.parametrize("name", list(TERM_WEIGHTS))
def test_training_loss_is_segmentation_plus_weighted_terms(name):
    """In round 2, a little into local training: every term is live, logged and in the
    loss with its weight."""
    algorithm, client, fed = round_two(name)
    model, ctx = client.start(algorithm, fed.weights, fed.payload)
    nudge(model)
    images, masks = batch(99)
    loss = algorithm.training_loss(model, images, masks, ctx)
    weights = TERM_WEIGHTS[name](algorithm.opt)
    assert set(weights) <= set(ctx.logs), f"{name} logged {sorted(ctx.logs)}"
    for key in weights:  # a term of 0 would pass unnoticed if left out of the loss
        assert ctx.logs[key] > 1e-4, f"{key} = {ctx.logs[key]}"
    with torch.no_grad():
        expected = algorithm.segmentation_loss(model(images), masks).item()
    expected += sum(w * ctx.logs[key] for key, w in weights.items())
    assert loss.item() == pytest.approx(expected, rel=1e-5)


# ---- the gradient reaches the weights and the features ---------------------------------


@pytest.mark.parametrize(
    "name, options",
    [
        *((name, {}) for name in TERM_WEIGHTS if name != "feduv"),
        # FedUV's uniformity term draws pixels at every call, so its value moves with the
        # draw; its variance term alone.
        ("feduv", {"lambda_uniformity": 0.0}),
    ],
)
def test_gradient_of_training_loss_is_its_derivative(name, options):
    """Along a random direction of the weights, ⟨∇L, v⟩ equals (L(w + hv) − L(w − hv)) / 2h
    in float64: a term computed from detached features or weights is in L but not in ∇L."""
    algorithm, client, fed = round_two(name, **options)
    model, ctx = client.start(algorithm, *in_double(client, fed))
    nudge(model)
    images, masks = batch(99)
    images = images.double()
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(7)
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    model.zero_grad()
    algorithm.training_loss(model, images, masks, ctx).backward()
    analytic = sum(
        (p.grad * v).sum() for p, v in zip(params, direction, strict=True) if p.grad is not None
    )

    def loss_at(step: float) -> float:
        moved = copy.deepcopy(model)
        with torch.no_grad():
            for p, v in zip(moved.parameters(), direction, strict=True):
                p.add_(step * v)
        return algorithm.training_loss(moved, images, masks, ctx).item()

    h = 1e-8  # small enough that no ReLU or max-pool of the UNet changes side
    numeric = (loss_at(h) - loss_at(-h)) / (2 * h)
    assert analytic.item() == pytest.approx(numeric, rel=1e-4)


@pytest.mark.parametrize("name", PROTOTYPE_LOSS_METHODS)
def test_prototype_loss_gradient_reaches_the_features(name):
    """In round 2, ``prototype_loss``'s gradient in the features is that of its value."""
    algorithm, client, fed = round_two(name)
    _, ctx = client.start(algorithm, *in_double(client, fed))
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(
        2, PIXEL_CHANNELS, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True
    )
    masks = torch.tensor([[[0, 1, 0], [1, 1, 0], [0, 0, 1]], [[1, 0, 0], [0, 1, 1], [0, 0, 0]]])
    loss = algorithm.prototype_loss(features, masks, ctx)
    assert loss.item() > 1e-4
    assert torch.autograd.gradcheck(
        lambda f: algorithm.prototype_loss(f, masks, ctx), (features,), eps=1e-6, atol=1e-7
    )


# ---- a weight of 0 trains the plain model ------------------------------------------------


@pytest.mark.parametrize(
    "name, zero",
    [
        ("fedprox", {"mu": 0.0}),
        ("moon", {"mu": 0.0}),
        ("fedproto", {"lambda_proto": 0.0}),
        ("fedcontrast", {"lambda_own": 0.0, "lambda_others": 0.0}),
        ("fedplvm", {"lambda_plvm": 0.0}),
        ("feduv", {"lambda_variance": 0.0, "lambda_uniformity": 0.0}),
    ],
)
def test_zero_weights_train_the_fedavg_model(name, zero):
    """Two rounds (the terms are live in the second) with the weights at 0 end with the
    global weights FedAvg's loss trains on the same model, bit for bit.

    Without weight decay: Adam decays a parameter whose gradient is 0 (MOON's projection
    head at μ = 0) but not one that has none (the head under FedAvg's loss).
    """

    def two_rounds(method_name: str, options: dict) -> dict[str, torch.Tensor]:
        config = tiny_config(method_name, weight_decay=0.0, method_options=options)
        fed = federation(build_algorithm(config), model_of=method(name))
        fed.round()
        fed.round()
        return fed.weights

    zeroed, plain = two_rounds(name, OPTIONS[name] | zero), two_rounds("fedavg", {})
    assert plain.keys() == zeroed.keys()
    for key in plain:
        assert torch.equal(zeroed[key], plain[key]), key


# ---- what must be refreshed every round is (3 rounds of 2 local epochs) ------------------


def test_moon_previous_model_is_the_last_round_s():
    """At the start of rounds 2 and 3, z_prev comes from the model the client trained in
    the round before, not an older one."""
    moon = method("moon")
    fed = federation(moon, batches=1, epochs=2)
    images, masks = batch(99)
    previous = None
    for _ in range(3):
        for index, client in enumerate(fed.clients):
            if previous is None:
                continue
            model, ctx = client.start(moon, fed.weights, fed.payload)
            moon.training_loss(model, images, masks, ctx)
            last = copy.deepcopy(model)
            last.load_state_dict(previous[index].weights)
            with torch.no_grad():
                _, z = model.forward_with_projection(images)
                _, z_previous = last.forward_with_projection(images)
            expected = moon_contrastive_loss(z, z, z_previous, moon.opt["tau"]).item()
            assert ctx.logs["moon/contrastive"] == pytest.approx(expected, rel=1e-5)
            assert expected < math.log(2) - 1e-3  # the previous model is not the global one
        previous = fed.round()


def _infonce(features, masks, protos, labels, tau):
    """Mean over pixels with a positive of −log(Σ_pos e^{cos/τ} / Σ e^{cos/τ}), float64."""
    f = features.double().permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    y = masks.reshape(-1)
    cos = F.normalize(f, dim=1) @ F.normalize(protos.double(), dim=1).T
    positive = labels[None, :] == y[:, None]
    has = positive.any(1)
    logits = cos[has] / tau
    pos = logits.masked_fill(~positive[has], -math.inf)
    return (logits.logsumexp(1) - pos.logsumexp(1)).mean().item()


def test_fedcontrast_own_prototypes_are_the_last_round_s():
    """In rounds 2 and 3, L_own contrasts against the prototypes the client sent at the
    end of the round before."""
    fedcontrast = method("fedcontrast")
    fed = federation(fedcontrast, batches=1, epochs=2)
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(2, PIXEL_CHANNELS, 3, 3, generator=gen)
    masks = (torch.rand(2, 3, 3, generator=gen) > 0.5).long()
    previous = None
    for _ in range(3):
        for index, client in enumerate(fed.clients):
            if previous is None:
                continue
            _, ctx = client.start(fedcontrast, fed.weights, fed.payload)
            fedcontrast.prototype_loss(features, masks, ctx)
            sent = previous[index].payload
            tau = fedcontrast.opt["tau"]
            expected = _infonce(features, masks, sent["protos"], sent["labels"], tau)
            assert ctx.logs["fedcontrast/own"] == pytest.approx(expected, rel=1e-4)
        previous = fed.round()


def test_fedprox_anchor_is_the_round_s_global_model():
    """At the start of every round the proximal term is 0: the anchor is that round's
    global model, not an earlier one."""
    fedprox = method("fedprox")
    fed = federation(fedprox, batches=1, epochs=2)
    images, masks = batch(99)
    for _ in range(3):
        for client in fed.clients:
            model, ctx = client.start(fedprox, fed.weights, fed.payload)
            fedprox.training_loss(model, images, masks, ctx)
            assert ctx.logs["fedprox/proximal"] == 0
        updates = fed.round()
        assert all(u.metrics["fedprox/proximal"] > 0 for u in updates)


@pytest.mark.parametrize("name", PROTOTYPE_METHODS)
def test_prototypes_come_from_the_last_local_epoch(name):
    """The first of two local epochs has foreground, the last has none: every round, no
    client sends a foreground prototype."""
    algorithm = method(name)
    torch.manual_seed(0)
    loaders = [EpochLoader([[batch(10 * i)], [batch(10 * i, foreground=False)]]) for i in range(2)]
    fed = Federation(algorithm, algorithm.build_model(), loaders, epochs=2)
    for _ in range(3):
        for loader in loaders:
            loader.restart()
        for update in fed.round():
            for prototypes in prototype_sets(algorithm.uploads):
                labels = update.payload[prototypes.labels]
                assert labels.numel() > 0 and set(labels.tolist()) == {0}, prototypes


# ---- server: several unequal clusters per class ------------------------------------------


def _clustered_rows(dim: int = 6):
    """Five clients' prototypes of two classes, in two directions per class: 3 + 2 clients
    for class 0 (groups a, b), 2 + 3 for class 1 (groups c, d), of unequal norms.

    Returns the per-client ``[2, dim]`` rows and, per class, the groups' client indices in
    order of their first member.
    """
    gen = torch.Generator().manual_seed(0)
    axes = torch.eye(dim)
    groups = {0: [[0, 2, 4], [1, 3]], 1: [[0, 3], [1, 2, 4]]}
    rows = torch.zeros(5, 2, dim)
    for c, (first, second) in groups.items():
        for direction, members in zip((axes[2 * c], axes[2 * c + 1]), (first, second), strict=True):
            for i in members:
                rows[i, c] = (1 + i) * direction + 0.02 * torch.rand(dim, generator=gen)
    return rows, groups


@pytest.mark.parametrize("name", ["fpl", "fedplvm", "fedbcs"])
def test_server_clusters_and_unbiased_prototype_with_unequal_clusters(name):
    """Per class, FINCH finds the two groups; down go their means and the mean of those
    means (not the mean of the rows, which leans to the larger group)."""
    algorithm = method(name)
    rows, groups = _clustered_rows()
    sets = prototype_sets(algorithm.uploads)
    updates = [
        ClientUpdate(
            {},
            1 + i,
            {k: v for p in sets for k, v in ((p.rows, rows[i]), (p.labels, torch.arange(2)))},
        )
        for i in range(5)
    ]
    down = algorithm.aggregate_payload(updates, {})
    # Down go each set's cluster prototypes under its own keys, and their mean under
    # ``mean…`` and ``mean_present…``.
    for p in sets:
        clusters = [
            torch.stack([rows[i, c] for i in members]).mean(0)
            for c in (0, 1)
            for members in groups[c]
        ]
        assert down[p.labels].tolist() == [0, 0, 1, 1]
        torch.testing.assert_close(down[p.rows], torch.stack(clusters))
        unbiased = torch.stack([(clusters[0] + clusters[1]) / 2, (clusters[2] + clusters[3]) / 2])
        torch.testing.assert_close(down[p.rows.replace("protos", "mean")], unbiased)
        assert down[p.rows.replace("protos", "mean_present")].tolist() == [True, True]
