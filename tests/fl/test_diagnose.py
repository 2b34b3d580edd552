"""``fedbcs diagnose``: it finds site style where there is some, and only there.

Tiny hand-made sites and untrained tiny models: what is measured is fixed by how the data
are made (no style, or a per-image channel gain and offset) and by the model's
construction (FSR set to pure instance normalisation), not by training.
"""

import json

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from torch.utils.data import TensorDataset

from fedbcs_fl.algorithms import METHODS, build_algorithm
from fedbcs_fl.cli import main
from fedbcs_fl.client import model_weights
from fedbcs_fl.diagnose import (
    Diagnosis,
    RunDiagnosis,
    chance_and_band,
    check_folds,
    collect_layers,
    diagnose,
    measure_model,
    plot_diagnosis,
    prototype_spread,
    tapped_layers,
)
from fedbcs_fl.run_folder import save_model, write_config
from fedbcs_models import FeatureTaps, UNet, insert_fsr

from .._tiny import tiny_algorithm, tiny_argv, tiny_config

SIZE = 32
SITES = 3
PER_SITE = 16


def _content(generator: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of one distribution for every site, and masks that follow their content."""
    images = torch.rand(n, 3, SIZE, SIZE, generator=generator)
    return images, (images[:, 0] > 0.6).long()


def _sites(style=None, per_site: int = PER_SITE) -> dict[str, TensorDataset]:
    """``SITES`` sites of ``per_site`` images; ``style(site, images, generator)`` renders
    each site's images (default: no style, every site the same)."""
    generator = torch.Generator().manual_seed(0)
    sites = {}
    for site in range(SITES):
        images, masks = _content(generator, per_site)
        if style is not None:
            images = style(site, images, generator)
        sites[f"site-{site}"] = TensorDataset(images, masks)
    return sites


def _gain_and_offset(site: int, images: torch.Tensor, generator: torch.Generator):
    """A per-image, per-channel gain and offset, drawn from a range of the site's own."""
    n, channels = images.shape[:2]
    gain = 0.5 + site + 0.5 * torch.rand(n, channels, 1, 1, generator=generator)
    offset = site + 0.3 * torch.rand(n, channels, 1, 1, generator=generator)
    return gain * images + offset


def _smp_model(fsr_stages) -> torch.nn.Module:
    """A small smp Unet: its BatchNorm keeps running statistics (untrained: mean 0, var
    1), so in eval mode no batch's statistics enter the features."""
    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, encoder_depth=3, decoder_channels=(8, 8, 8))
    return insert_fsr(model, fsr_stages)


def _measured(model, sites, batch_size=PER_SITE, separability_from=("all",), seed=0):
    layers = measure_model(
        model, sites, 2, batch_size, folds=4, seed=seed, separability_from=separability_from
    )
    return {layer["name"]: layer for layer in layers}


def _band():
    return chance_and_band([PER_SITE] * SITES)


def test_no_site_style_is_within_the_noise_band_at_every_layer():
    layers = _measured(_smp_model((2,)), _sites())
    assert "enc2 before FSR" in layers and "dec1" in layers
    low, high = _band()[1]
    outside = {n: m["separability"]["all"] for n, m in layers.items()}
    outside = {n: v for n, v in outside.items() if not low <= v <= high}
    assert not outside, f"band [{low:.3f}, {high:.3f}]"


def test_batch_statistics_over_one_site_never_show_style_that_is_not_there():
    """The paper UNet normalises each site's batch with its own statistics: never above
    the band on data without style (below it is that normalisation, docs/fl.md)."""
    model = UNet(3, 2, init_features=4, fsr_stages=(2, 3, 4))
    layers = _measured(model, _sites(), batch_size=8)
    high = _band()[1][1]
    above = {n: m["separability"]["all"] for n, m in layers.items()}
    assert not {n: v for n, v in above.items() if v > high}, f"band top {high:.3f}"


def test_instance_norm_fsr_takes_gain_and_offset_away():
    """Sites differ only by a per-image channel gain and offset: the channel means tell
    them apart up to FSR; FSR with a = 1, b = 0 (instance norm) leaves none to tell."""
    model = _smp_model((1,))
    fsr = model.encoder_fsr["stage1"]
    with torch.no_grad():
        fsr.logits.copy_(torch.tensor([50.0, -50.0]))  # softmax(h / 0.1) = (1, 0) exactly
    assert fsr.gates(torch.zeros(1))[1].item() == 0.0
    layers = _measured(model, _sites(_gain_and_offset), separability_from=("mean",))
    (low, high) = _band()[1]
    for name in ("input", "enc1 before FSR"):
        assert layers[name]["separability"]["mean"] > high, name
    after = layers["enc1"]
    assert low <= after["separability"]["mean"] <= high
    assert after["variance_ratio"]["mean"] == 0.0  # channel means constant up to rounding
    assert layers["enc1 before FSR"]["variance_ratio"]["mean"] > 1


def test_the_same_seed_gives_the_same_measures():
    model = UNet(3, 2, init_features=4, fsr_stages=(2,))
    sites = _sites(_gain_and_offset, per_site=8)
    first, again = (_measured(model, sites, batch_size=4, seed=3) for _ in range(2))
    assert json.dumps(first) == json.dumps(again)
    other = _measured(model, sites, batch_size=4, seed=4)
    assert json.dumps(other) != json.dumps(first)  # the seed does choose the folds


def test_layers_in_network_order_with_fsr_inputs():
    x = torch.randn(2, 3, 32, 32)
    unet = UNet(3, 2, init_features=4, fsr_stages=(2, 3))
    taps = FeatureTaps(unet)
    names = [layer.name for layer, _ in tapped_layers(x, taps.forward_with_levels(x), taps)]
    assert names == [
        "input", "enc1", "enc2 before FSR", "enc2", "enc3 before FSR", "enc3", "enc4",
        "bottleneck", "dec4", "dec3", "dec2", "dec1",
    ]  # fmt: skip
    model = _smp_model((2,))
    taps = FeatureTaps(model)
    names = [layer.name for layer, _ in tapped_layers(x, taps.forward_with_levels(x), taps)]
    # smp's Unet centre is an Identity: its bottleneck is enc3 itself, not a layer again.
    assert names == ["input", "enc1", "enc2 before FSR", "enc2", "enc3", "dec3", "dec2", "dec1"]


def test_chance_and_band():
    chance, (low, high) = chance_and_band([16, 16, 16])
    sd = np.sqrt(3 * (1 / 3) * (2 / 3) / 16) / 3
    assert chance == pytest.approx(1 / 3)
    assert (low, high) == pytest.approx((1 / 3 - 3 * sd, 1 / 3 + 3 * sd))


def test_prototype_spread_is_the_mean_cosine_distance_between_sites():
    sums = [torch.tensor([[2.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 3.0], [0.0, 0.0]])]
    counts = [torch.tensor([2.0, 1.0]), torch.tensor([3.0, 0.0])]
    # class 0: orthogonal prototypes, distance 1; class 1: one site only.
    assert prototype_spread(sums, counts) == [pytest.approx(1.0), None]
    sums.append(torch.tensor([[1.0, 1.0], [2.0, 2.0]]))
    counts.append(torch.tensor([1.0, 1.0]))
    far = 1 - np.sqrt(0.5)
    assert prototype_spread(sums, counts) == pytest.approx([(1 + 2 * far) / 3, 0.0], abs=1e-6)


def test_too_few_images_or_sites_for_the_folds():
    sites = _sites()
    with pytest.raises(ValueError, match="5 folds need at least 5 images per site; site-0 has 4"):
        check_folds({**sites, "site-0": TensorDataset(torch.zeros(4, 3, 8, 8))}, 5)
    with pytest.raises(ValueError, match="at least 2 sites"):
        check_folds({"site-0": sites["site-0"]}, 4)
    with pytest.raises(ValueError, match="folds must be at least 2"):
        check_folds(sites, 1)


def _saved_run(folder, **fields):
    """A run folder with the config and an untrained model of the tiny run: no training."""
    config = tiny_config(**fields)
    write_config(folder, config)
    save_model(folder, model_weights(build_algorithm(config).build_model()), config)
    return folder


def test_clear_errors_before_any_measure(tmp_path):
    good = _saved_run(tmp_path / "good")
    unfinished = tmp_path / "unfinished"
    write_config(unfinished, tiny_config())
    with pytest.raises(FileNotFoundError, match=r"has no model\.safetensors: has the run finished"):
        diagnose([good, unfinished], progress=False)
    with pytest.raises(FileNotFoundError, match=r"has no config\.json: is it a fedbcs run folder"):
        diagnose([tmp_path / "empty"], progress=False)
    other = _saved_run(tmp_path / "other", dataset="synthetic-prostate")
    with pytest.raises(ValueError, match=r"different datasets .*synthetic-nuclei.*prostate"):
        diagnose([good, other], progress=False)
    with pytest.raises(ValueError, match="split 'val' does not exist for sites site-A"):
        diagnose([good], split="val", progress=False)
    with pytest.raises(ValueError, match="need at least 5 images per site; site-A has 3"):
        diagnose([good], folds=5, progress=False)


def test_bad_cli_arguments_name_the_problem(tmp_path, capsys):
    argv = ["diagnose", "--run", str(_saved_run(tmp_path / "run")), "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--split", "holdout"])
    assert exit_.value.code == 2
    assert "--split: invalid choice: 'holdout'" in capsys.readouterr().err
    assert main([*argv, "--folds", "1"]) == 2
    assert capsys.readouterr().err == "fedbcs diagnose: error: folds must be at least 2, got 1\n"


def _run(label: str, values: list[float], positions: list[list[int]]) -> RunDiagnosis:
    layers = [
        {
            "name": f"layer {p}",
            "position": p,
            "channels": 4,
            "size": [8, 8],
            "separability": {"all": v, "mean": v, "std": v, "spectrum": v},
            "variance_ratio": {"mean": v, "std": v, "spectrum": v, "overall": v},
            "prototype_spread": {"per_class": [v, None], "mean": v},
        }
        for v, p in zip(values, positions, strict=True)
    ]
    return RunDiagnosis(
        label, f"runs/{label}", "fedavg", {"a": 9, "b": 9}, 16, 0.5, [0.3, 0.7], layers
    )


def test_report_marks_the_band_and_plots_runs_with_other_layers():
    runs = [
        _run("plain", [0.9, 0.5, 0.1], [[0, 0, 0], [1, 1, 1], [3, 0, 0]]),
        _run("fsr", [0.9, 0.8, 0.5, 0.5], [[0, 0, 0], [1, 1, 0], [1, 1, 1], [3, 0, 0]]),
    ]
    diagnosis = Diagnosis("synthetic-nuclei", "test", 0, 5, runs)
    text = diagnosis.markdown()
    assert "| layer [0, 0, 0] | 4 × 8 × 8 | **0.900** |" in text
    assert "| layer [3, 0, 0] | 4 × 8 × 8 | *0.100* |" in text
    assert "| layer [1, 1, 1] | 4 × 8 × 8 | 0.500 |" in text
    assert json.loads(diagnosis.to_json())["runs"][1]["label"] == "fsr"
    assert plot_diagnosis(diagnosis).startswith(b"\x89PNG")


@pytest.mark.e2e
def test_cli_diagnoses_trained_runs_side_by_side(tmp_path, capsys):
    runs = []
    for method in ("fedavg", "fedbcs"):
        runs.append(tmp_path / method)
        argv = ["train", *tiny_argv(method, rounds=1), "--quiet", "--out", str(runs[-1])]
        assert main(argv) == 0
    out = tmp_path / "diagnose"
    argv = ["diagnose", "--run", str(runs[0]), "--run", str(runs[1]), "--folds", "3"]
    assert main([*argv, "--out", str(out), "--seed", "1"]) == 0
    document = json.loads((out / "diagnose.json").read_text())
    assert [run["label"] for run in document["runs"]] == ["fedavg", "fedbcs"]
    names = [[layer["name"] for layer in run["layers"]] for run in document["runs"]]
    assert "enc2 before FSR" in names[1] and "enc2 before FSR" not in names[0]
    assert names[0][0] == "input" and names[0][-1] == "dec1"
    text = (out / "diagnose.md").read_text()
    assert "## fedavg" in text and "## fedbcs" in text and "| enc2 before FSR |" in text
    assert (out / "diagnose.png").read_bytes().startswith(b"\x89PNG")
    assert str(out) in capsys.readouterr().out
    again = tmp_path / "again"
    assert main([*argv, "--out", str(again), "--seed", "1"]) == 0
    assert (again / "diagnose.json").read_text() == (out / "diagnose.json").read_text()


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_model_is_tapped_through_its_wrapper(method):
    """The network inside each method's model is found and the whole model runs (HarmoFL's
    amplitude normalisation in front of it too)."""
    model = tiny_algorithm(method).build_model()
    sites = {name: TensorDataset(*_content(torch.Generator(), 2)) for name in ("a", "b")}
    layers = collect_layers(model, sites, 2, batch_size=2)
    names = [features.layer.name for features in layers]
    assert names[0] == "input" and names[-1] == "dec1" and "bottleneck" in names
    assert ("enc2 before FSR" in names) == (method == "fedbcs")
    assert all(set(features.statistics) == {"a", "b"} for features in layers)


def test_runs_are_labelled_by_the_shortest_path_ending_that_tells_them_apart(tmp_path):
    from fedbcs_fl.diagnose import _labels

    runs = [tmp_path / "cmp" / "fedavg" / "seed0", tmp_path / "cmp" / "fedbcs+no-fsr" / "seed0"]
    assert _labels(runs) == ["fedavg/seed0", "fedbcs+no-fsr/seed0"]
    assert _labels([tmp_path / "a", tmp_path / "b"]) == ["a", "b"]
