"""HarmoFL: the amplitude swap against NumPy's FFT, the perturbed step by hand, the
equal-weight aggregation with its frozen buffer, and two rounds end to end."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from fedbcs_fl.algorithms import build_algorithm
from fedbcs_fl.algorithms.base import ClientUpdate, LocalContext
from fedbcs_fl.algorithms.harmofl import (
    AMPLITUDE_KEY,
    FROZEN_KEY,
    AmplitudeNormalization,
    low_frequency_amplitude,
    swap_low_frequency_amplitude,
)
from fedbcs_fl.compare import run_config
from fedbcs_fl.config import RunConfig
from fedbcs_fl.losses import segmentation_loss
from fedbcs_fl.simulation import Simulation

from .._tiny import tiny_algorithm, tiny_config, tiny_sites


def _numpy_swap(images, amplitude, half):
    spectrum = np.fft.fftshift(np.fft.fft2(images), axes=(-2, -1))
    magnitude, phase = np.abs(spectrum), np.angle(spectrum)
    centre = images.shape[-1] // 2
    box = slice(centre - half, centre + half + 1)
    magnitude[..., box, box] = amplitude
    out = np.fft.ifft2(np.fft.ifftshift(magnitude * np.exp(1j * phase), axes=(-2, -1)))
    assert np.abs(out.imag).max() < 1e-9  # a symmetric amplitude keeps the image real
    return out.real, magnitude[..., box, box]


def test_amplitude_swap_matches_numpy():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 32, 32, generator=gen, dtype=torch.float64)
    style = torch.rand(4, 3, 32, 32, generator=gen, dtype=torch.float64)
    half = int(32 * 0.1)  # 3: a 7×7 square around frequency 0
    amplitude = low_frequency_amplitude(style, half).mean(0)
    assert amplitude.shape == (3, 7, 7)
    swapped = swap_low_frequency_amplitude(images, amplitude)
    expected, _ = _numpy_swap(images.numpy(), amplitude.numpy(), half)
    np.testing.assert_allclose(swapped.numpy(), expected, atol=1e-10)
    torch.testing.assert_close(
        low_frequency_amplitude(swapped, half), amplitude.expand(2, -1, -1, -1)
    )
    assert not torch.allclose(swapped, images)


def test_amplitude_layer_tracks_then_stops():
    layer = AmplitudeNormalization(channels=3, image_size=32, ratio=0.1, momentum=0.25)
    gen = torch.Generator().manual_seed(1)
    first, second = torch.rand(2, 3, 32, 32, generator=gen), torch.rand(2, 3, 32, 32, generator=gen)
    layer(first)  # the first batch sets the buffer
    first_mean = low_frequency_amplitude(first, 3).mean(0)
    torch.testing.assert_close(layer.running_amplitude, first_mean)
    out = layer(second)
    expected = 0.75 * first_mean + 0.25 * low_frequency_amplitude(second, 3).mean(0)
    torch.testing.assert_close(layer.running_amplitude, expected)
    torch.testing.assert_close(out, swap_low_frequency_amplitude(second, expected))
    layer.tracking = False
    layer(first)
    layer.eval()
    layer.tracking = True
    layer(first)
    torch.testing.assert_close(layer.running_amplitude, expected)
    with pytest.raises(ValueError, match="32"):
        layer(torch.rand(1, 3, 16, 16))


def test_the_default_swaps_the_dc_amplitude_only_and_the_box_option_more():
    """As the released code (``L=0``): each channel's mean becomes the buffer's, and the
    rest of the image is kept; ``amplitude_ratio=0.1`` also swaps the low frequencies."""
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(2, 3, 32, 32, generator=gen, dtype=torch.float64)
    style = 2 * torch.rand(4, 3, 32, 32, generator=gen, dtype=torch.float64)
    for ratio, side in ((None, 1), (0.1, 7)):
        options = {} if ratio is None else {"amplitude_ratio": ratio}
        model = tiny_algorithm("harmofl", **options).build_model().double()
        assert model.amplitude_norm.running_amplitude.shape == (3, side, side)
        model.amplitude_norm(style)  # the buffer starts from this batch
        out = model.amplitude_norm.eval()(images)
        style_means = style.mean(dim=(0, 2, 3)).view(1, 3, 1, 1).expand(2, -1, -1, -1)
        torch.testing.assert_close(out.mean(dim=(2, 3), keepdim=True), style_means)
        detail = out - out.mean(dim=(2, 3), keepdim=True)
        same = torch.allclose(detail, images - images.mean(dim=(2, 3), keepdim=True))
        assert same == (side == 1)


def test_the_box_is_one_spec_away():
    """``harmofl/alpha=0`` is FedAvg with the released amplitude layer (paper Fig. 4b);
    ``harmofl/alpha=0/amplitude_ratio=0.1`` the same with this project's former box."""
    settings = RunConfig(image_size=32)
    for spec, side in (("harmofl/alpha=0", 1), ("harmofl/alpha=0/amplitude_ratio=0.1", 7)):
        config = run_config(settings, spec, seed=0)
        model = build_algorithm(config).build_model()
        assert model.amplitude_norm.running_amplitude.shape == (3, side, side)
        assert config.method_options["alpha"] == 0


def test_perturbed_pass_does_not_track_the_batch_again():
    torch.manual_seed(0)
    algorithm = tiny_algorithm("harmofl", amplitude_momentum=0.5)
    model = algorithm.build_model()
    with torch.no_grad():
        model.amplitude_norm.running_amplitude.fill_(1.0)
    images = torch.rand(2, 3, 32, 32)
    masks = (torch.rand(2, 32, 32) > 0.7).long()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    algorithm.optimizer_step(model, optimizer, lambda: segmentation_loss(model(images), masks))
    expected = 0.5 + 0.5 * low_frequency_amplitude(images, 0).mean(0)  # one update, not two
    torch.testing.assert_close(model.amplitude_norm.running_amplitude, expected)
    assert model.amplitude_norm.tracking


class _Quadratic(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0))


def test_perturbed_step_on_a_quadratic_by_hand():
    algorithm = tiny_algorithm("harmofl", alpha=0.05)
    model = _Quadratic()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = []

    def loss_fn():  # L(w) = (w − 3)², g(w) = 2(w − 3)
        calls.append(model.w.item())
        return (model.w - 3) ** 2

    loss = algorithm.optimizer_step(model, optimizer, loss_fn)
    # g(1) = −4 → perturbed w = 1 + 0.05·(−4)/4 = 0.95; g(0.95) = −4.1; w = 1 − 0.1·(−4.1)
    assert calls == pytest.approx([1.0, 0.95])
    assert model.w.item() == pytest.approx(1.41)
    assert loss.item() == pytest.approx(4.0)


def test_aggregation_equal_weights_then_frozen_amplitude():
    algorithm = tiny_algorithm("harmofl")
    a = ClientUpdate({"w": torch.tensor([1.0]), AMPLITUDE_KEY: torch.tensor([2.0])}, 1)
    b = ClientUpdate({"w": torch.tensor([4.0]), AMPLITUDE_KEY: torch.tensor([6.0])}, 9)
    weights, payload = algorithm.aggregate([a, b], {}, {})
    assert weights["w"].item() == 2.5  # equal weights, not 1:9
    assert weights[AMPLITUDE_KEY].item() == 4.0  # averaged once, in the first round
    assert payload[FROZEN_KEY].item() is True
    global_weights = {"w": torch.tensor([0.0]), AMPLITUDE_KEY: torch.tensor([5.0])}
    weights_2, payload_2 = algorithm.aggregate([a, b], global_weights, payload)
    assert weights_2["w"].item() == 2.5 and weights_2[AMPLITUDE_KEY].item() == 5.0  # frozen
    weights_1, _ = algorithm.aggregate([b], {}, {})  # one client only
    assert weights_1["w"].item() == 4.0 and weights_1[AMPLITUDE_KEY].item() == 6.0
    assert payload_2[FROZEN_KEY].item() is True


def test_clients_stop_tracking_once_frozen():
    algorithm = tiny_algorithm("harmofl")
    model = algorithm.build_model()
    assert AMPLITUDE_KEY in model.state_dict()
    for payload, tracking in (({}, True), ({FROZEN_KEY: torch.tensor(True)}, False)):
        ctx = LocalContext(global_payload=payload, state={}, device=torch.device("cpu"))
        algorithm.begin_local(model, ctx)
        assert model.amplitude_norm.tracking is tracking


@pytest.mark.e2e
@pytest.mark.parametrize("num_sites", [1, 4])
def test_two_rounds_end_to_end_and_resumed(tmp_path, num_sites):
    sites = tiny_sites(num_sites)
    config = tiny_config("harmofl")
    amplitudes = []
    simulation = Simulation(
        config,
        sites,
        progress=False,
        on_round=lambda record: amplitudes.append(simulation.global_weights[AMPLITUDE_KEY]),
    )
    history = simulation.run()
    assert len(history) == 2 and math.isfinite(history[-1]["mean_dice"])
    assert all(math.isfinite(m["loss"]) for m in history[-1]["client_metrics"].values())
    assert amplitudes[0].shape == (3, 1, 1) and (amplitudes[0] > 0).all()
    assert torch.equal(amplitudes[0], amplitudes[1])  # frozen after the first round
    for client in simulation.clients:  # and the clients stopped tracking it
        assert torch.equal(client.model.state_dict()[AMPLITUDE_KEY], amplitudes[0])
    assert set(simulation.global_payload) == {FROZEN_KEY}

    # Stopped after round 1 and resumed from its checkpoint: the buffer stays frozen.
    Simulation(replace(config, rounds=1), sites, out_dir=tmp_path, progress=False).run()
    resumed = Simulation(config, sites, out_dir=tmp_path, progress=False)
    resumed.resume()
    assert resumed.run()[-1]["client_metrics"] == history[-1]["client_metrics"]
    assert torch.equal(resumed.global_weights[AMPLITUDE_KEY], amplitudes[0])
