"""``fedbcs diagnose``: how much of each layer's features still tells which site an image
came from (the paper's motivation, section 1 and Fig. 1, as a measurement).

Each run's final model sees every site's split of the run's own data and, at every layer
(:func:`tapped_layers`: the input as layer 0, each encoder stage, the input of each FSR,
the bottleneck, each decoder stage), three measures are taken:

1. Site separability. Per image and channel the mean, the standard deviation and the mean
   amplitude spectrum (:func:`~fedbcs_ops.spectral_mean_amplitude`), the
   :data:`STATISTICS`. A logistic regression predicts the site from them, cross-validated
   over ``folds`` stratified folds; its balanced accuracy is compared with chance,
   1 / sites (:func:`separability`). Reported from all three statistics together (the
   headline) and from each alone.
2. Between/within ratio: per statistic and channel, the variance over sites of the site
   means over the mean within-site variance
   (:func:`~fedbcs_fl.calibrate.variance_ratio`), averaged over channels; ``overall`` is
   the mean over the statistics. No classifier involved.
3. Prototype spread: per class, the mean cosine distance ``1 − cos`` over pairs of sites
   between the sites' class prototypes (class means of the layer's features over the
   split, from :func:`~fedbcs_ops.class_sums` with full-resolution labels: each feature
   pixel weighs by its label block's class histogram). What CDPA aligns.

In the ratio, a statistic that varies across images by no more than
:data:`CONSTANT_TOLERANCE` of the largest value it can take for its channel (the
channel's RMS for the mean and the standard deviation, RMS / sqrt(h·w) for the spectrum,
by Parseval) is constant up to float rounding and counts 0: after instance normalisation
the channel means are 0 up to rounding, and a ratio of rounding over rounding (or 0 / 0)
would say nothing.

Batching: each site's images go through the model in the split's order, in batches of
the run's ``eval_batch_size`` and never mixed with other sites' images, as evaluation
does. The UNet's BatchNorm normalises each batch with its own statistics (no running
statistics, as released), so the features, and these measures, depend on the batch
size: a batch of one site's images has that site's style removed to first order. It
also makes the sites' feature means equal at every such BatchNorm, and cross-validation
then learns each site's mean from images that balance the held-out one: separability
falls below chance there, which means no style is left, not some (docs/fl.md).

Example:
    >>> diagnosis = diagnose(["runs/fedavg", "runs/fedbcs"])  # doctest: +SKIP
    >>> write_reports(diagnosis, "runs/diagnose")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from fedbcs_models import FeatureTaps, TappedForward, tappable_module
from fedbcs_ops import class_sums, prototypes_from_sums, spectral_mean_amplitude

from .calibrate import variance_ratio
from .data import data_source, load_sites
from .results import Panel, line_panels
from .run_folder import load_model, write_report

STATISTICS = ("mean", "std", "spectrum")
SEPARABILITY_FEATURES = ("all", *STATISTICS)
SPLITS = ("train", "val", "test")
# Half-width of the noise band around chance, in binomial standard deviations.
BAND_SIGMAS = 3
CONSTANT_TOLERANCE = 1e-5
REPORT_FILES = ("diagnose.json", "diagnose.md", "diagnose.png")


# ---- the layers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """A place in the network. ``position`` orders places of different models on one axis:
    (0, 0, 0) the input, (1, k, 0) FSR's input at encoder stage k, (1, k, 1) the output of
    stage k, (2, 0, 0) the bottleneck, (3, −i, 0) decoder level i (1 the finest)."""

    name: str
    position: tuple[int, int, int]


INPUT = Layer("input", (0, 0, 0))


def tapped_layers(
    x: torch.Tensor, tapped: TappedForward, taps: FeatureTaps
) -> list[tuple[Layer, torch.Tensor]]:
    """Every layer of one tapped forward pass in the order the network runs, with its
    features: the input ``x``, per encoder stage k FSR's input (``enck before FSR``,
    where the model has FSR there) and the stage's output (``enck``: after FSR, as the
    next stage and the skip connection see it), the bottleneck (where it is not the
    deepest encoder level itself) and the decoder levels (``decN`` … ``dec1``, dec1 the
    finest)."""
    layers = [(INPUT, x)]
    for stage, level in zip(taps.encoder_stages, tapped.encoder, strict=True):
        if stage in tapped.fsr:
            layers.append((Layer(f"enc{stage} before FSR", (1, stage, 0)), tapped.fsr[stage][0]))
        layers.append((Layer(f"enc{stage}", (1, stage, 1)), level))
    if not any(tapped.bottleneck is level for level in tapped.encoder):
        layers.append((Layer("bottleneck", (2, 0, 0)), tapped.bottleneck))
    for index in reversed(range(len(tapped.decoder))):
        layers.append((Layer(f"dec{index + 1}", (3, -index, 0)), tapped.decoder[index]))
    return layers


def feature_statistics(features: torch.Tensor) -> dict[str, np.ndarray]:
    """The :data:`STATISTICS` of ``features [B, C, h, w]``, each ``[B, C]`` float64: per
    image and channel the mean, the (population) standard deviation and the mean
    amplitude spectrum."""
    features = features.double()
    std, mean = torch.std_mean(features, dim=(2, 3), correction=0)
    spectrum = spectral_mean_amplitude(features)
    return {
        name: v.cpu().numpy() for name, v in zip(STATISTICS, (mean, std, spectrum), strict=True)
    }


@dataclass
class LayerFeatures:
    """What one layer's features give over every site's split, gathered batch by batch.

    Attributes:
        layer: where.
        channels: C.
        size: ``(h, w)`` of its feature maps.
        statistics: site → statistic → ``[N_site, C]`` (:func:`feature_statistics`).
        sums, counts: site → the class sums ``[K, C]`` and counts ``[K]`` (float64) of
            :func:`~fedbcs_ops.class_sums` over the site's split.
    """

    layer: Layer
    channels: int
    size: tuple[int, int]
    statistics: dict[str, dict[str, np.ndarray]]
    sums: dict[str, torch.Tensor]
    counts: dict[str, torch.Tensor]


@torch.no_grad()
def collect_layers(
    model: nn.Module,
    splits: dict[str, Dataset],
    num_classes: int,
    batch_size: int,
    device: str | torch.device = "cpu",
    progress: str | None = None,
) -> list[LayerFeatures]:
    """Run each site's split through ``model`` and gather :class:`LayerFeatures` of every
    layer (:func:`tapped_layers`).

    Args:
        model: a method's model, or any model holding a network
            :class:`~fedbcs_models.FeatureTaps` can tap (:func:`~fedbcs_models.tappable_module`);
            the whole model runs, so a wrapper that transforms the input (HarmoFL) does too.
        splits: site name → its dataset of ``(image, mask)``.
        num_classes: K.
        batch_size: images per forward pass; each batch holds one site's images only, in
            the split's order (the BatchNorm caveat in the module docstring).
        device: where the model runs (default CPU).
        progress: the label of a progress bar over the batches (default None: no bar).
    """
    model = model.to(device).eval()
    taps = FeatureTaps(tappable_module(model))
    loaders = {site: DataLoader(data, batch_size=batch_size) for site, data in splits.items()}
    bar = tqdm(
        total=sum(map(len, loaders.values())),
        desc=progress and f"{progress}: batches",
        unit="batch",
        disable=progress is None,
    )
    gathered: dict[Layer, LayerFeatures] = {}
    for site, loader in loaders.items():
        per_layer: dict[Layer, dict[str, list[np.ndarray]]] = {}
        for images, masks in loader:
            images, masks = images.to(device), masks.to(device)
            tapped = taps.forward_with_levels(images, through=model)
            for layer, features in tapped_layers(images, tapped, taps):
                if layer not in gathered:
                    gathered[layer] = LayerFeatures(
                        layer, features.shape[1], tuple(features.shape[-2:]), {}, {}, {}
                    )
                found = gathered[layer]
                for name, values in feature_statistics(features).items():
                    per_layer.setdefault(layer, {}).setdefault(name, []).append(values)
                sums, counts = class_sums(features, masks, num_classes)
                found.sums[site] = found.sums.get(site, 0) + sums.double().cpu()
                found.counts[site] = found.counts.get(site, 0) + counts.double().cpu()
            bar.update()
        for layer, statistics in per_layer.items():
            gathered[layer].statistics[site] = {
                name: np.concatenate(batches) for name, batches in statistics.items()
            }
    bar.close()
    return list(gathered.values())


# ---- the measures ---------------------------------------------------------------------------


def chance_and_band(site_counts: list[int], sigmas: float = BAND_SIGMAS) -> tuple[float, list]:
    """Chance balanced accuracy 1/S and the noise band ``chance ± sigmas·sd`` around it
    (within [0, 1]).

    sd is the balanced accuracy's standard deviation when each prediction is a guess,
    right with probability p = 1/S: the mean over sites of Binomial(N_s, p) / N_s, so
    ``sd = sqrt(Σ_s p(1−p) / N_s) / S``. Cross-validation adds variance of its own: for
    5-fold logistic regression on pure noise (3–4 sites, 12–30 images each) the measured
    spread is about 1.2 sd, so 3 sd is about 2.5 of it (about 1% of layers outside by
    chance).
    """
    sites = len(site_counts)
    p = 1 / sites
    sd = math.sqrt(sum(p * (1 - p) / n for n in site_counts)) / sites
    return p, [max(p - sigmas * sd, 0.0), min(p + sigmas * sd, 1.0)]


def constant_columns(statistics: dict[str, np.ndarray], size: tuple[int, int]) -> dict:
    """Per statistic ``[N, C]`` (all of :data:`STATISTICS`), which of its C columns vary
    across the N images by no more than :data:`CONSTANT_TOLERANCE` of their largest
    possible value (the channel's RMS; RMS / sqrt(h·w) for the spectrum): float rounding."""
    rms = np.sqrt(np.mean(statistics["mean"] ** 2 + statistics["std"] ** 2, axis=0))
    bounds = {"mean": rms, "std": rms, "spectrum": rms / math.sqrt(size[0] * size[1])}
    return {
        name: statistics[name].std(0) <= CONSTANT_TOLERANCE * bound
        for name, bound in bounds.items()
    }


def separability(features: np.ndarray, sites: np.ndarray, folds: int, seed: int) -> float:
    """Balanced accuracy of a logistic regression (on standardized features) predicting
    ``sites [N]`` from ``features [N, D]``, over ``folds`` stratified folds shuffled by
    ``seed``: each image's site is predicted by the model fitted on the other folds."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folding = StratifiedKFold(folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        predicted = cross_val_predict(classifier, features, sites, cv=folding)
    return float(balanced_accuracy_score(sites, predicted))


def ratios(statistics: dict[str, dict[str, np.ndarray]], size: tuple[int, int]) -> dict:
    """Per statistic the mean over channels of the between/within variance ratio, and
    ``overall``, their mean; a channel whose statistic is constant up to rounding counts 0.

    Args:
        statistics: site → statistic → ``[N_site, C]``.
        size: ``(h, w)`` of the layer (for the spectrum's floor).
    """
    pooled = {name: np.concatenate([s[name] for s in statistics.values()]) for name in STATISTICS}
    constant = constant_columns(pooled, size)
    out = {}
    for name in STATISTICS:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = variance_ratio([s[name] for s in statistics.values()])
        out[name] = float(np.where(constant[name], 0.0, ratio).mean())
    out["overall"] = float(np.mean([out[name] for name in STATISTICS]))
    return out


def prototype_spread(sums: list[torch.Tensor], counts: list[torch.Tensor]) -> list[float | None]:
    """Per class, the mean cosine distance ``1 − cos`` over pairs of sites between their
    class prototypes; None where fewer than two sites have the class (or a nonzero
    prototype).

    Args:
        sums: per site, class sums ``[K, C]``.
        counts: per site, pixel counts ``[K]``.
    """
    protos, present = zip(*map(prototypes_from_sums, sums, counts), strict=True)
    spread = []
    for k in range(len(protos[0])):
        vectors = [p[k] for p, here in zip(protos, present, strict=True) if here[k]]
        vectors = [v / v.norm() for v in vectors if v.norm() > 0]
        distances = [1 - float(a @ b) for i, a in enumerate(vectors) for b in vectors[i + 1 :]]
        spread.append(float(np.mean(distances)) if distances else None)
    return spread


def measure_layer(
    features: LayerFeatures,
    folds: int,
    seed: int,
    separability_from: tuple[str, ...] = SEPARABILITY_FEATURES,
) -> dict:
    """The three measures of one layer (see the module docstring), as a JSON-ready dict;
    separability from each feature set in ``separability_from`` (default all four of
    :data:`SEPARABILITY_FEATURES`: one classifier each)."""
    sites = list(features.statistics)
    labels = np.concatenate(
        [np.full(len(features.statistics[s]["mean"]), i) for i, s in enumerate(sites)]
    )
    pooled = {
        name: np.concatenate([features.statistics[s][name] for s in sites]) for name in STATISTICS
    }
    pooled["all"] = np.concatenate([pooled[name] for name in STATISTICS], axis=1)
    spread = prototype_spread(
        [features.sums[s] for s in sites], [features.counts[s] for s in sites]
    )
    present = [value for value in spread if value is not None]
    return {
        "name": features.layer.name,
        "position": list(features.layer.position),
        "channels": features.channels,
        "size": list(features.size),
        "separability": {
            name: separability(pooled[name], labels, folds, seed) for name in separability_from
        },
        "variance_ratio": ratios(features.statistics, features.size),
        "prototype_spread": {
            "per_class": spread,
            "mean": float(np.mean(present)) if present else None,
        },
    }


def check_fold_count(folds: int) -> None:
    """Raise ``ValueError`` unless ``folds`` is at least 2."""
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")


def check_folds(splits: dict[str, Dataset], folds: int) -> None:
    """Raise ``ValueError`` unless there are two sites or more and each has ``folds``
    images at least (and ``folds`` is at least 2)."""
    check_fold_count(folds)
    if len(splits) < 2:
        raise ValueError(f"telling sites apart needs at least 2 sites, got {list(splits)}")
    small = {site: len(data) for site, data in splits.items() if len(data) < folds}
    if small:
        raise ValueError(
            f"{folds} folds need at least {folds} images per site; "
            + ", ".join(f"{site} has {n}" for site, n in small.items())
            + ": give fewer --folds"
        )


def measure_model(
    model: nn.Module,
    splits: dict[str, Dataset],
    num_classes: int,
    batch_size: int,
    folds: int = 5,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: str | None = None,
    separability_from: tuple[str, ...] = SEPARABILITY_FEATURES,
) -> list[dict]:
    """:func:`measure_layer` of every layer of ``model`` over ``splits``, in network order.

    Args:
        model, splits, num_classes, batch_size, device: as :func:`collect_layers`.
        folds: cross-validation folds (default 5).
        seed: shuffles the folds, and seeds the data's random augmentation, if any
            (default 0); the result is the same for the same seed.
        progress: a label: a progress bar over the batches, then one over the layers
            measured (default None: no bars).
        separability_from: as :func:`measure_layer`.
    """
    check_folds(splits, folds)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers = collect_layers(model, splits, num_classes, batch_size, device, progress)
    bar = tqdm(layers, desc=progress and f"{progress}: layers", disable=progress is None)
    return [measure_layer(features, folds, seed, separability_from) for features in bar]


# ---- runs and reports -----------------------------------------------------------------------


@dataclass
class RunDiagnosis:
    """The measures of one run's model (see :func:`diagnose`)."""

    label: str
    run: str
    method: str
    sites: dict[str, int]  # site → images in the split
    batch_size: int
    chance: float
    band: list[float]
    layers: list[dict]


@dataclass
class Diagnosis:
    """Every run's :class:`RunDiagnosis` and the settings they were measured with."""

    dataset: str
    split: str
    seed: int
    folds: int
    runs: list[RunDiagnosis]

    def to_json(self) -> str:
        document = {
            "dataset": self.dataset,
            "split": self.split,
            "seed": self.seed,
            "folds": self.folds,
            "band_sigmas": BAND_SIGMAS,
            "constant_tolerance": CONSTANT_TOLERANCE,
            "runs": [vars(run) for run in self.runs],
        }
        return json.dumps(document, indent=2, ensure_ascii=False)

    def markdown(self) -> str:
        parts = [
            f"# Layer-wise style bias on {self.dataset} ({self.split} split)\n",
            f"Seed {self.seed}, {self.folds}-fold cross-validation. Separability: balanced "
            "accuracy of a logistic regression predicting the site from each image's "
            "per-channel statistics (all: mean, std and mean amplitude spectrum together; "
            "then each alone); chance is 1 / sites, the noise band chance ± "
            f"{BAND_SIGMAS} binomial sd. Ratio: between-site / within-site variance of the "
            "statistics, mean over channels and statistics. Spread: mean cosine distance "
            "between the sites' class prototypes, per class. Each site's images are "
            "batched alone, in batches of the run's eval batch size (BatchNorm uses batch "
            "statistics).\n",
        ]
        for run in self.runs:
            counts = ", ".join(f"{site} {n}" for site, n in run.sites.items())
            classes = len(run.layers[0]["prototype_spread"]["per_class"])
            header = ["layer", "C × h × w", *(f"sep. {n}" for n in SEPARABILITY_FEATURES)]
            header += ["ratio", *(f"spread k={k}" for k in range(classes))]
            lines = [
                f"## {run.label} ({run.method}, {run.run})\n",
                f"Images: {counts}; batches of {run.batch_size}. Chance {run.chance:.3f}, "
                f"noise band [{run.band[0]:.3f}, {run.band[1]:.3f}].\n",
                "| " + " | ".join(header) + " |",
                "|---|---" + "|---:" * (len(header) - 2) + "|",
            ]
            for layer in run.layers:
                h, w = layer["size"]
                cells = [layer["name"], f"{layer['channels']} × {h} × {w}"]
                cells += [
                    _marked(layer["separability"][n], run.band) for n in SEPARABILITY_FEATURES
                ]
                cells.append(f"{layer['variance_ratio']['overall']:.3g}")
                cells += [_number(v) for v in layer["prototype_spread"]["per_class"]]
                lines.append("| " + " | ".join(cells) + " |")
            parts.append("\n".join(lines) + "\n")
        parts.append(
            "Separability above the noise band is in bold: the layer still tells the sites "
            "apart. Below it, in italics: the sites are more alike than chance makes them, "
            "typically where BatchNorm normalised each site's batch on its own statistics "
            "(cross-validation then learns each site's mean from images that balance the "
            "held-out one); no style is left there.\n"
        )
        return "\n".join(parts)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _marked(value: float, band: list[float]) -> str:
    if value > band[1]:
        return f"**{value:.3f}**"
    return f"*{value:.3f}*" if value < band[0] else f"{value:.3f}"


def plot_diagnosis(diagnosis: Diagnosis) -> bytes:
    """One curve per run across the layers (the union of the runs' layers, in network
    order), one panel per measure: separability (with chance and each run's noise band),
    the between/within ratio (log scale) and the prototype spread (mean over classes)."""
    places = sorted(
        {
            (tuple(layer["position"]), layer["name"])
            for run in diagnosis.runs
            for layer in run.layers
        }
    )
    x_of = {position: x for x, (position, _) in enumerate(places)}
    everywhere = [0, len(places) - 1]
    measures = {
        "separability": lambda layer: layer["separability"]["all"],
        "ratio": lambda layer: layer["variance_ratio"]["overall"],
        "spread": lambda layer: layer["prototype_spread"]["mean"],
    }
    curves = {name: [] for name in measures}
    for run in diagnosis.runs:
        x = [x_of[tuple(layer["position"])] for layer in run.layers]
        for name, value in measures.items():
            values = [np.nan if value(layer) is None else value(layer) for layer in run.layers]
            curves[name].append((run.label, x, values, {"marker": "o", "ms": 3}))
    chance = diagnosis.runs[0].chance
    curves["separability"].append(
        ("chance", everywhere, [chance, chance], {"color": "k", "ls": "--", "lw": 1})
    )
    for run in diagnosis.runs:
        for edge in run.band:
            style = {"color": "gray", "ls": ":", "lw": 1}
            label = "noise band" if run is diagnosis.runs[0] and edge == run.band[0] else None
            curves["separability"].append((label, everywhere, [edge, edge], style))
    positive = all(v > 0 for _, _, values, _ in curves["ratio"] for v in values)
    panels = [
        Panel("site separability (balanced accuracy)", curves["separability"]),
        Panel("between / within variance", curves["ratio"], "log" if positive else "linear"),
        Panel("prototype spread (cosine distance)", curves["spread"]),
    ]
    title = f"style bias per layer: {diagnosis.dataset}, {diagnosis.split} split"
    return line_panels(panels, "layer", title, xticks=(range(len(places)), [n for _, n in places]))


def write_reports(diagnosis: Diagnosis, out: str | Path) -> None:
    """``diagnose.json``, ``diagnose.md`` and ``diagnose.png`` in ``out`` (created)."""
    write_report(
        out, "diagnose", diagnosis.to_json(), diagnosis.markdown(), plot_diagnosis(diagnosis)
    )


def _split_of(sites, split: str) -> dict[str, Dataset]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    missing = [site.name for site in sites if getattr(site, split) is None]
    if missing:
        raise ValueError(f"split {split!r} does not exist for sites {', '.join(missing)}")
    return {site.name: getattr(site, split) for site in sites}


def _labels(runs: list[Path]) -> list[str]:
    """The shortest trailing parts of the runs' paths that tell them apart: the folder
    name, or e.g. ``fedbcs+no-fsr/seed0`` beside ``fedavg/seed0`` in a comparison."""
    parts = [Path(run).resolve().parts for run in runs]
    for depth in range(1, max(map(len, parts)) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(run) for run in runs]


def diagnose(
    runs,
    split: str = "test",
    folds: int = 5,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
) -> Diagnosis:
    """Measure the final model of each run folder in ``runs`` on every site's ``split``.

    Args:
        runs: run folders of finished runs (``model.safetensors``), all on one dataset.
        split: ``"test"`` (default), ``"train"`` or ``"val"``; the run's own data.
        folds: cross-validation folds (default 5); every site needs as many images.
        seed: folds and any augmentation of the split (default 0).
        device: where the models run (default: each run's own ``device``).
        progress: progress bars, per run over its batches and then its layers (default
            True).

    Raises:
        ValueError: no run, runs on different datasets, an unknown or absent split, too
            few sites or images for the folds, or weights that do not fit the config.
        FileNotFoundError: a folder without ``config.json`` or ``model.safetensors``.
    """
    runs = [Path(run) for run in runs]
    if not runs:
        raise ValueError("give at least one run folder")
    check_fold_count(folds)
    loaded = [load_model(run) for run in runs]
    datasets = {config.dataset for _, config in loaded}
    if len(datasets) > 1:
        which = ", ".join(f"{run} {c.dataset}" for run, (_, c) in zip(runs, loaded, strict=True))
        raise ValueError(f"the runs are on different datasets ({which}): diagnose one at a time")
    diagnosed = []
    for run, label, (model, config) in zip(runs, _labels(runs), loaded, strict=True):
        splits = _split_of(load_sites(config), split)
        check_folds(splits, folds)
        layers = measure_model(
            model,
            splits,
            data_source(config.dataset).num_classes,
            config.eval_batch_size,
            folds,
            seed,
            device or config.device,
            label if progress else None,
        )
        chance, band = chance_and_band([len(d) for d in splits.values()])
        sites = {site: len(data) for site, data in splits.items()}
        diagnosed.append(
            RunDiagnosis(
                label, str(run), config.method, sites, config.eval_batch_size, chance, band, layers
            )
        )
    return Diagnosis(datasets.pop(), split, seed, folds, diagnosed)
