"""Prototype differential privacy (fedbcs_fl/privacy.py, docs/privacy.md): the sensitivity
the noise is calibrated to, the noise the accountant asks for, ε over rounds, the
settings' errors, and runs that draw the same noise again."""

import itertools
import math
from functools import partial

import dp_accounting
import pytest
import torch

from fedbcs_fl.algorithms import build_algorithm
from fedbcs_fl.audit import _Kept
from fedbcs_fl.client import local_train, make_optimizer, model_weights
from fedbcs_fl.privacy import (
    PrototypePrivacy,
    epsilon_spent,
    l2_sensitivity,
    noise_for_epsilon,
    per_image_clipped_sums,
    privacy_statement,
    prototype_privacy,
)
from fedbcs_fl.simulation import Simulation
from fedbcs_ops import class_sums
from tests._tiny import prototype_methods, tiny_config, tiny_sites


def _batch(images: int, classes: int = 3, dim: int = 5, seed: int = 0):
    """Features far larger than the clip, so that clipping is what bounds them."""
    gen = torch.Generator().manual_seed(seed)
    features = 10 * torch.randn(images, dim, 8, 8, generator=gen)
    labels = torch.randint(0, classes, (images, 16, 16), generator=gen)
    return features, labels


@pytest.mark.parametrize("removed", [0, 3, 6])
def test_one_image_moves_the_clipped_sums_by_at_most_the_clip(removed):
    clip, classes = 0.5, 3
    features, labels = _batch(7, classes)
    keep = [i for i in range(7) if i != removed]
    with_all = per_image_clipped_sums(partial(class_sums, features), labels, classes, clip)
    without = per_image_clipped_sums(
        partial(class_sums, features[keep]), labels[keep], classes, clip
    )
    sum_change = (with_all[0] - without[0]).norm(dim=1)
    count_change = (with_all[1] - without[1]).abs()
    assert sum_change.max() <= clip + 1e-9 and sum_change.max() > 0.9 * clip
    assert torch.equal(count_change, torch.ones(classes))  # every class is in every image
    moved = torch.cat([(with_all[0] - without[0]).flatten() / clip, count_change])
    assert moved.norm() <= l2_sensitivity(classes) + 1e-9


@pytest.mark.parametrize("method", prototype_methods())
def test_in_a_client_one_image_moves_the_clipped_sums_by_at_most_the_clip(method):
    """The bound holds for what a real client gives the mechanism, BatchNorm and all: the
    prototypes come from one image at a time, so removing an image from a batch leaves
    its batch mates' contributions as they were (given the model: learning rate 0). From
    the training batches, BatchNorm's batch statistics moved them by up to 4 % of C."""
    clip = 0.01  # every image's class means are clipped: any change of direction shows
    algorithm = build_algorithm(tiny_config(method, proto_dp_noise=1.0, proto_dp_clip=clip))
    torch.manual_seed(0)
    initial = model_weights(algorithm.build_model())
    k = algorithm.num_classes
    images = torch.rand(
        5, algorithm.in_channels, 32, 32, generator=torch.Generator().manual_seed(1)
    )
    masks = (images[:, 0] * k).long().clamp(max=k - 1)  # every class in every image

    def given(kept_images: list[int]) -> dict:
        model = algorithm.build_model()
        model.load_state_dict(initial)
        frozen = torch.optim.SGD(model.parameters(), lr=0.0)
        kept = _Kept(1.0, clip, 1e-3, seed=0, site=0, round=1)
        batch = (images[kept_images], masks[kept_images])
        local_train(algorithm, model, frozen, [batch], {}, {}, 1, torch.device("cpu"), privacy=kept)
        return kept.given

    everything, one_less = given([0, 1, 2, 3, 4]), given([0, 1, 2, 4])
    assert everything.keys() == one_less.keys() and everything
    for stream, (sums, counts) in everything.items():
        # Exactly the removed image's clipped class means, norm C each: no batch mate moved.
        change = (sums - one_less[stream][0]).norm(dim=1)
        assert torch.allclose(change, torch.full_like(change, clip), rtol=1e-9, atol=0), stream
        assert torch.equal((counts - one_less[stream][1]).abs(), torch.ones(k)), stream


def test_the_noise_is_what_the_accountant_asks_for():
    config = tiny_config("fedbcs", proto_dp_epsilon=4.0, dp_delta=1e-3, rounds=5)
    privacy = prototype_privacy(config, 2, site=0, n_images=12, round_index=1)
    releases = 5 * 2  # rounds × FedBCS's two streams
    assert privacy.noise_multiplier == noise_for_epsilon(4.0, 1e-3, releases)
    assert epsilon_spent(privacy.noise_multiplier, releases, 1e-3) == pytest.approx(4.0, rel=1e-3)
    # RDP is an upper bound: never less noise than the exact composition of Gaussians.
    exact = dp_accounting.get_sigma_gaussian(4.0, 1e-3) * math.sqrt(releases)
    assert exact <= privacy.noise_multiplier <= 1.2 * exact
    # The noise drawn has that scale: z·sqrt(2K)·C on the sums, z·sqrt(2K) on the counts.
    classes, dim = 2, 50_000
    state = {}
    sums, _ = privacy.release(
        torch.zeros(classes, dim, dtype=torch.float64),
        torch.full((classes,), 1e6, dtype=torch.float64),
        "/encoder",
        state,
    )
    scale = privacy.noise_multiplier * math.sqrt(2 * classes)
    assert sums.std().item() == pytest.approx(scale * config.proto_dp_clip, rel=0.02)
    count_noise = torch.cat(
        [
            PrototypePrivacy(privacy.noise_multiplier, 1.0, 1e-3, 0, 0, r).release(
                torch.zeros(classes, 1), torch.full((classes,), 1e6), "", {}
            )[1]
            - 1e6
            for r in range(1000)
        ]
    )
    assert count_noise.std().item() == pytest.approx(scale, rel=0.1)
    assert state == {"proto_dp/releases": 1}


def test_epsilon_grows_with_the_releases():
    spent = [epsilon_spent(3.0, releases, 1e-4) for releases in range(0, 40, 4)]
    assert spent[0] == 0.0
    assert all(a < b for a, b in itertools.pairwise(spent))


def test_the_noise_depends_on_seed_site_round_and_stream_only():
    def draw(**changes):
        fields = {"noise_multiplier": 1.0, "clip": 1.0, "delta": 1e-3, "seed": 0}
        fields |= {"site": 1, "round": 2} | changes
        stream = fields.pop("stream", "/decoder")
        sums, _ = PrototypePrivacy(**fields).release(
            torch.zeros(2, 4), torch.full((2,), 100.0), stream, {}
        )
        return sums

    torch.manual_seed(1)
    first = draw()
    torch.manual_seed(2)  # the global generator plays no part
    assert torch.equal(first, draw())
    for change in ({"seed": 1}, {"site": 0}, {"round": 3}, {"stream": "/encoder"}):
        assert not torch.equal(draw(), draw(**change)), change


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"proto_dp_epsilon": 0.0}, "proto_dp_epsilon must be in"),
        ({"proto_dp_epsilon": -1.0}, "proto_dp_epsilon must be in"),
        ({"proto_dp_noise": 0.0}, "proto_dp_noise must be in"),
        ({"proto_dp_epsilon": 1.0, "proto_dp_noise": 1.0}, "not both"),
        ({"proto_dp_epsilon": 1.0, "dp_delta": 1.0}, "dp_delta must be in"),
        ({"proto_dp_epsilon": 1.0, "dp_delta": 0.0}, "dp_delta must be in"),
        ({"proto_dp_epsilon": 1.0, "proto_dp_clip": 0.0}, "proto_dp_clip must be in"),
        ({"proto_dp_noise": 1.0, "proto_dp_clip": math.inf}, "proto_dp_clip must be in"),
    ],
)
def test_bad_privacy_settings_are_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        build_algorithm(tiny_config("fedbcs", **fields))


def test_privacy_for_a_method_without_prototypes_is_an_error():
    with pytest.raises(ValueError, match="fedavg, as configured, sends no prototypes"):
        build_algorithm(tiny_config("fedavg", proto_dp_epsilon=1.0))
    with pytest.raises(ValueError, match="sends no prototypes"):
        build_algorithm(tiny_config("fedbcs", proto_dp_noise=1.0, method_options={"cdpa": False}))


def _fedbcs_update(privacy):
    """FedBCS's round-1 update of one hand-made batch, through local_train."""
    algorithm = build_algorithm(tiny_config("fedbcs", proto_dp_noise=1.0))
    torch.manual_seed(0)
    model = algorithm.build_model()
    images = torch.rand(
        4, algorithm.in_channels, 32, 32, generator=torch.Generator().manual_seed(0)
    )
    batch = (images, (images[:, 0] > 0.6).long())
    optimizer = make_optimizer(model, algorithm.config)
    return local_train(
        algorithm, model, optimizer, [batch], {}, {}, 1, torch.device("cpu"), privacy=privacy
    )


def test_private_uploads_are_reproducible_and_counted():
    privacy = PrototypePrivacy(1.0, 1.0, 1e-3, seed=0, site=0, round=1)
    first, second = _fedbcs_update(privacy), _fedbcs_update(privacy)
    assert first.payload.keys() == second.payload.keys() == _fedbcs_update(None).payload.keys()
    for key, value in first.payload.items():
        assert torch.equal(value, second.payload[key]), key
    clean = _fedbcs_update(None).payload["protos/encoder"]
    assert not torch.equal(first.payload["protos/encoder"], clean)
    assert first.metrics["proto_dp_epsilon"] == epsilon_spent(1.0, 2, 1e-3)  # two streams
    assert first.metrics["proto_dp_delta"] == 1e-3


def _private_run(seed: int = 0):
    config = tiny_config("fedproto", proto_dp_epsilon=8.0, seed=seed)
    simulation = Simulation(config, tiny_sites(2), progress=False)
    return config, simulation.run(), simulation.last_replies


@pytest.mark.e2e
def test_a_private_run_reports_epsilon_and_draws_the_same_noise_again():
    config, history, replies = _private_run()
    spent = [record["proto_dp_epsilon"] for record in history]
    for site in ("site-A", "site-B"):
        assert 0 < spent[0][site] < spent[1][site]
        assert spent[1][site] == pytest.approx(8.0, rel=1e-3)  # every round taken: the budget
    statement = privacy_statement(config, history)
    assert "budget ε = 8" in statement and "site-A ε = 8 at δ = 0.00833" in statement
    _, _, again = _private_run()
    for (_, first), (_, second) in zip(replies, again, strict=True):
        assert first.payload.keys() == second.payload.keys()
        assert all(torch.equal(first.payload[k], second.payload[k]) for k in first.payload)
    _, _, other_seed = _private_run(seed=1)
    assert not torch.equal(replies[0][1].payload["protos"], other_seed[0][1].payload["protos"])


def test_a_method_that_records_no_prototypes_in_the_pass_is_refused_under_dp():
    from fedbcs_fl.algorithms._protos import PIXEL_PROTOTYPES
    from fedbcs_fl.algorithms.base import Algorithm

    class TrainingBatchesOnly(Algorithm):  # records in training_loss, not in record_batch
        uploads = (PIXEL_PROTOTYPES,)

    config = tiny_config("fedavg", proto_dp_noise=1.0)
    with pytest.raises(ValueError, match="record its prototypes in the pass after training"):
        TrainingBatchesOnly(config, 3, 2)
    TrainingBatchesOnly(tiny_config("fedavg"), 3, 2)  # without DP it is fine


def test_the_private_pass_reads_images_unaugmented_and_leaves_the_global_rng():
    from torch.utils.data import DataLoader

    from fedbcs_fl.client import single_images
    from fedbcs_fl.data.samples import SegmentationSamples

    images = torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8)
    masks = torch.randint(0, 2, (4, 8, 8), dtype=torch.uint8)
    train = SegmentationSamples(images, masks, ["a", "a", "b", "b"], augment=True)
    loader = DataLoader(train, batch_size=2, shuffle=True)
    before = torch.get_rng_state()
    batches = list(single_images(loader))
    assert torch.equal(torch.get_rng_state(), before)
    assert [x.shape[0] for x, _ in batches] == [1, 1, 1, 1]
    for index, (image, mask) in enumerate(batches):
        assert torch.equal(image[0], images[index].float() / 255)
        assert torch.equal(mask[0], masks[index].long())
    assert train.augment  # the training loader still augments
