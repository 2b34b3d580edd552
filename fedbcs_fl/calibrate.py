"""``fedbcs calibrate-data``: does a multi-site data set carry a real domain-shift problem?

Four measurements on seeds 0..N-1 (the seed draws the synthetic data or the real split,
the initial weights and the batch order), reported as mean ± std over the seeds. Dice is
the mean foreground Dice on a site's test split, in %; differences are in points.

1. Site-local transfer. For each site s, a model trained on s alone is evaluated on
   every site t: ``T[s, t]``. The transfer loss is the mean over s of
   ``T[s, s] - mean_{t != s} T[s, t]``: what a model loses on styles it has not seen.
2. FedAvg over all sites: per-site Dice, their mean, and the worst-to-best site gap.
3. Pooled: one model trained on every site's training split at once (the centralised
   upper bound), evaluated on each site; its margin is its mean Dice minus FedAvg's worst
   site.
4. Style statistics of the training images, no training: per image and channel the mean,
   the std and the mean low-frequency amplitude (:func:`image_statistics`), and per
   statistic the between-site over the within-site variance (:func:`variance_ratio`).

Every training is a :class:`~fedbcs_fl.simulation.Simulation` running FedAvg with the
same ``rounds`` and ``local_epochs`` (FedAvg with one client is plain local training), see
:data:`SCHEDULE`. :data:`TARGETS` says which values make a data set a useful benchmark.

Example:
    >>> config = RunConfig(dataset="synthetic-nuclei", rounds=2, image_size=32)
    >>> calibration = calibrate(config, seeds=[0, 1], out="runs/calibrate")  # doctest: +SKIP
    >>> sorted(calibration.figures["transfer"]["loss"])  # doctest: +SKIP
    ['mean', 'std']
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader
from tqdm.auto import tqdm

from .client import evaluate_site
from .config import RunConfig
from .data import load_sites
from .data.base import SiteData
from .results import png_bytes, table1
from .run_folder import write_report
from .simulation import Simulation

SCHEDULE = (
    "Every model trains for the same rounds × local epochs over its own training data: a "
    "site-local model sees its site's images as often as a FedAvg client does, and the "
    "pooled model sees every site's images once per local epoch of each round."
)


@dataclass(frozen=True)
class Target:
    """A range a calibration figure should fall in for the data set to be a useful test.

    Attributes:
        figure: where the figure sits in :attr:`Calibration.figures`, e.g.
            ``("fedavg", "mean_dice")``.
        low: the smallest passing value (None: no lower bound).
        high: the largest passing value (None: no upper bound).
        why: what a value in range says about the data set.
    """

    figure: tuple[str, str]
    low: float | None = None
    high: float | None = None
    why: str = ""

    def met(self, value: float) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"≥ {self.low:g}"
        if self.low is None:
            return f"≤ {self.high:g}"
        return f"in [{self.low:g}, {self.high:g}]"


# Checked on the mean over seeds.
TARGETS: dict[str, Target] = {
    "FedAvg mean Dice (%)": Target(
        ("fedavg", "mean_dice"), 70, 85, "a federation learns the task but leaves room to gain"
    ),
    "FedAvg worst-to-best site gap (points)": Target(
        ("fedavg", "site_gap"), low=8, why="one shared model serves some sites clearly worse"
    ),
    "site-local transfer loss (points)": Target(
        ("transfer", "loss"), low=15, why="a model trained on one site's style fails on others"
    ),
    "pooled mean − FedAvg worst site (points)": Target(
        ("pooled", "margin"),
        low=5,
        why="the data of all sites together would serve the worst site clearly better",
    ),
}

# The per-site Dice compared in the table and the bar chart: label → place in the figures.
DICE_SERIES = {
    "site-local (own site)": ("transfer", "in_site"),
    "FedAvg": ("fedavg", "dice"),
    "pooled": ("pooled", "dice"),
}

# ---- the figures, from Dice values and images --------------------------------------------


def transfer_figures(matrix) -> dict:
    """Site-local figures from ``matrix[s][t]``, the Dice (%) on site t of the model trained
    on site s (at least 2 sites): ``in_site`` (the diagonal), ``other_sites`` (each row's
    mean off the diagonal), per site ``site_loss`` (``in_site - other_sites``) and ``loss``,
    its mean over sites."""
    matrix = np.asarray(matrix, dtype=float)
    in_site = np.diag(matrix)
    other_sites = (matrix.sum(1) - in_site) / (len(matrix) - 1)
    return {
        "matrix": matrix.tolist(),
        "in_site": in_site.tolist(),
        "other_sites": other_sites.tolist(),
        "site_loss": (in_site - other_sites).tolist(),
        "loss": float(np.mean(in_site - other_sites)),
    }


def fedavg_figures(dice) -> dict:
    """FedAvg's per-site Dice (%), its mean and the worst-to-best ``site_gap``."""
    dice = np.asarray(dice, dtype=float)
    return {
        "dice": dice.tolist(),
        "mean_dice": float(dice.mean()),
        "site_gap": float(dice.max() - dice.min()),
    }


def pooled_figures(dice, fedavg_dice) -> dict:
    """The pooled model's per-site Dice (%), its mean and its ``margin`` over FedAvg's worst
    site."""
    dice = np.asarray(dice, dtype=float)
    return {
        "dice": dice.tolist(),
        "mean_dice": float(dice.mean()),
        "margin": float(dice.mean() - np.min(fedavg_dice)),
    }


# Lowest spatial frequencies, in cycles per image, so that the band covers the same
# structures at every image size.
LOW_FREQUENCY_CYCLES = 6

STYLE_STATISTICS = ("channel_mean", "channel_std", "low_freq_amplitude")


def image_statistics(images: torch.Tensor) -> dict[str, np.ndarray]:
    """Style statistics of ``images`` ``[N, C, H, W]``, each ``[N, C]`` (float64).

    ``channel_mean`` and ``channel_std`` (population) over the pixels, and
    ``low_freq_amplitude``: the mean of ``|FFT| / (H W)`` over the frequencies of radius
    0 < r <= :data:`LOW_FREQUENCY_CYCLES` cycles per image (r = 0 is the mean, left out).
    """
    images = images.double()
    height, width = images.shape[-2:]
    fy = torch.fft.fftfreq(height, dtype=torch.float64) * height
    fx = torch.fft.fftfreq(width, dtype=torch.float64) * width
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    low = (radius > 0) & (radius <= LOW_FREQUENCY_CYCLES)
    amplitude = torch.fft.fft2(images).abs() / (height * width)
    return {
        "channel_mean": images.mean((2, 3)).numpy(),
        "channel_std": images.std((2, 3), correction=0).numpy(),
        "low_freq_amplitude": amplitude[:, :, low].mean(-1).numpy(),
    }


def split_statistics(dataset, batch_size: int = 64) -> dict[str, np.ndarray]:
    """:func:`image_statistics` of every image of a split, ``[N, C]`` each."""
    batches = [image_statistics(images) for images, _ in DataLoader(dataset, batch_size)]
    return {name: np.concatenate([b[name] for b in batches]) for name in STYLE_STATISTICS}


def variance_ratio(per_site: Sequence[np.ndarray]) -> np.ndarray:
    """Between-site over mean within-site variance of per-image values, per column.

    ``per_site[s]`` is ``[N_s, K]``, site s's values. Between: the population variance over
    sites of the site means (each site weighs the same). Within: the mean over sites of each
    site's population variance. Sites with the same values give 0; sites whose values
    [0, 2] and [10, 12] differ by a constant give 25 (site means 1 and 11, within 1).
    """
    means = np.stack([values.mean(0) for values in per_site])
    within = np.mean([values.var(0) for values in per_site], axis=0)
    return means.var(0) / within


def style_figures(sites: list[SiteData]) -> dict:
    """``ratio``: per statistic the mean over channels of :func:`variance_ratio` (each
    channel weighs the same whatever its scale) and ``overall``, their mean; ``site_means``:
    per statistic, ``[sites][channels]`` means over each site's training images."""
    per_site = [split_statistics(site.train) for site in sites]
    ratio = {
        name: float(variance_ratio([s[name] for s in per_site]).mean()) for name in STYLE_STATISTICS
    }
    ratio["overall"] = float(np.mean(list(ratio.values())))
    site_means = {name: [s[name].mean(0).tolist() for s in per_site] for name in STYLE_STATISTICS}
    return {"ratio": ratio, "site_means": site_means}


def mean_std(per_seed: list):
    """The nested figures of each seed → the same nesting with ``{"mean", "std"}``
    (population std over seeds, as in ``fedbcs compare``) at each leaf."""
    if isinstance(per_seed[0], dict):
        return {key: mean_std([figures[key] for figures in per_seed]) for key in per_seed[0]}
    values = np.asarray(per_seed, dtype=float)
    return {"mean": values.mean(0).tolist(), "std": values.std(0).tolist()}


# ---- the trainings -------------------------------------------------------------------------


def _train(config: RunConfig, sites: list[SiteData]) -> nn.Module:
    simulation = Simulation(config, sites, progress=False)
    simulation.run()
    return simulation.global_model


def _dice(model: nn.Module, sites: list[SiteData], config: RunConfig) -> list[float]:
    """Dice (%) of ``model`` on each site's test split, scored as the engines score it."""
    return [100 * evaluate_site(model, site, config, distances=False)["dice"] for site in sites]


def pooled_site(sites: list[SiteData]) -> SiteData:
    """One site holding every site's training and test images."""
    return SiteData(
        name="pooled",
        train=ConcatDataset([site.train for site in sites]),
        test=ConcatDataset([site.test for site in sites]),
    )


def _seed_figures(config: RunConfig, sites: list[SiteData], bar: tqdm) -> dict:
    """Every figure of one seed: 2 + len(sites) trainings and the style statistics."""
    # One client per run here, whatever --clients-per-round says for the federation.
    alone = dataclasses.replace(config, clients_per_round=None)

    def trained_dice(label: str, train_sites: list[SiteData], run_config: RunConfig):
        bar.set_postfix_str(f"seed {config.seed}: {label}")
        dice = _dice(_train(run_config, train_sites), sites, config)
        bar.update()
        return dice

    matrix = [trained_dice(f"{site.name} alone", [site], alone) for site in sites]
    fedavg = trained_dice("FedAvg", sites, config)
    pooled = trained_dice("pooled", [pooled_site(sites)], alone)
    return {
        "transfer": transfer_figures(matrix),
        "fedavg": fedavg_figures(fedavg),
        "pooled": pooled_figures(pooled, fedavg),
        "style": style_figures(sites),
    }


def _plus_minus(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}"


@dataclass
class Calibration:
    """The figures of every seed; :attr:`figures` has their mean and std."""

    config: RunConfig  # as trained, with the first seed
    seeds: list[int]
    sites: list[str]
    per_seed: list[dict]

    @cached_property
    def figures(self) -> dict:
        return mean_std(self.per_seed)

    def checks(self) -> list[dict]:
        """Each of :data:`TARGETS` with the figure's mean and std and whether it passes."""
        rows = []
        for name, target in TARGETS.items():
            group, key = target.figure
            value = self.figures[group][key]
            passed = target.met(value["mean"])
            rows.append(
                {
                    "name": name,
                    "figure": ".".join(target.figure),
                    "target": str(target),
                    "low": target.low,
                    "high": target.high,
                    **value,
                    "pass": passed,
                }
            )
        return rows

    def to_json(self) -> str:
        config = dataclasses.asdict(self.config)
        del config["seed"]  # the seeds are listed on their own
        document = {
            "dataset": self.config.dataset,
            "sites": self.sites,
            "seeds": self.seeds,
            "config": config,
            "schedule": SCHEDULE,
            "targets": self.checks(),
            "figures": self.figures,
            "per_seed": [{"seed": s, **f} for s, f in zip(self.seeds, self.per_seed, strict=True)],
        }
        return json.dumps(document, indent=2, ensure_ascii=False)

    def markdown(self) -> str:
        c = self.config
        seeds = ", ".join(map(str, self.seeds))
        parts = [
            f"# Calibration of {c.dataset}\n",
            f"Sites {', '.join(self.sites)}; seeds {seeds} (mean ± std over seeds). "
            f"FedAvg, {c.rounds} rounds × {c.local_epochs} local epoch(s), {c.optimizer} "
            f"lr {c.lr:g}, batch {c.batch_size}, {c.image_size} px, UNet with "
            f"{c.init_features} features. Dice: mean foreground Dice (%) on each site's "
            f"test split; differences in points. {SCHEDULE}\n",
            "## Targets (checked on the mean over seeds)\n",
            self._targets_table(),
            "## Site-local transfer (rows: trained on; columns: tested on)\n",
            self._transfer_table(),
            "## Per-site Dice\n",
            table1(self._dice_rows(), self.sites, baseline="FedAvg"),
            f"FedAvg worst-to-best site gap: {self._figure('fedavg', 'site_gap')} points. "
            f"Pooled mean − FedAvg worst site: {self._figure('pooled', 'margin')} points.\n",
            "## Style statistics of the training images\n",
            self._style_tables(),
        ]
        return "\n".join(parts)

    def _figure(self, group: str, key: str) -> str:
        value = self.figures[group][key]
        return _plus_minus(value["mean"], value["std"])

    def _targets_table(self) -> str:
        lines = ["| figure | value | target | result |", "|---|---:|---|---|"]
        for row in self.checks():
            value = _plus_minus(row["mean"], row["std"])
            result = "PASS" if row["pass"] else "FAIL"
            lines.append(f"| {row['name']} | {value} | {row['target']} | {result} |")
        notes = [f"- {name}: {target.why}." for name, target in TARGETS.items()]
        return "\n".join(lines) + "\n\nA figure in range means:\n\n" + "\n".join(notes) + "\n"

    def _transfer_table(self) -> str:
        transfer = self.figures["transfer"]
        header = ["trained on", *self.sites, "own site", "other sites", "loss"]
        lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
        matrix = {k: np.array(v) for k, v in transfer["matrix"].items()}
        for i, site in enumerate(self.sites):
            row = zip(matrix["mean"][i], matrix["std"][i], strict=True)
            cells = [_plus_minus(mean, std) for mean, std in row]
            for key in ("in_site", "other_sites", "site_loss"):
                cells.append(_plus_minus(transfer[key]["mean"][i], transfer[key]["std"][i]))
            lines.append(f"| {site} | " + " | ".join(cells) + " |")
        return (
            "\n".join(lines)
            + "\n\nTransfer loss (mean over sites of own site − other sites): "
            + f"{self._figure('transfer', 'loss')} points.\n"
        )

    def _dice_rows(self) -> dict[str, list[list[dict]]]:
        """Per-site Dice as ``fedbcs compare`` records (one evaluated round per seed)."""
        return {
            label: [
                [{"dice": dict(zip(self.sites, np.divide(f[group][key], 100), strict=True))}]
                for f in self.per_seed
            ]
            for label, (group, key) in DICE_SERIES.items()
        }

    def _style_tables(self) -> str:
        style = self.figures["style"]
        lines = ["| statistic | between-site / within-site variance |", "|---|---:|"]
        for name, value in style["ratio"].items():
            lines.append(f"| {name} | {_plus_minus(value['mean'], value['std'])} |")
        lines += [
            "",
            "Per image and channel: the mean, the std and the mean amplitude of the spatial "
            f"frequencies up to {LOW_FREQUENCY_CYCLES} cycles per image (|FFT| / pixels, mean "
            "left out). Ratio: the variance over sites of the site means over the mean "
            "within-site variance, averaged over channels; 0 when every site has the same "
            "statistics. Per-site means over the training images (channels separated by /, "
            "mean over seeds):",
            "",
            "| site | " + " | ".join(STYLE_STATISTICS) + " |",
            "|---" + "|---" * len(STYLE_STATISTICS) + "|",
        ]
        for i, site in enumerate(self.sites):
            cells = [
                " / ".join(f"{v:.3f}" for v in style["site_means"][name]["mean"][i])
                for name in STYLE_STATISTICS
            ]
            lines.append(f"| {site} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def plot_calibration(calibration: Calibration) -> bytes:
    """The transfer matrix as an annotated heatmap, and per-site Dice of the site-local
    model on its own site, FedAvg and the pooled model (mean over seeds, ± std bars), as
    PNG bytes."""
    figures, sites = calibration.figures, calibration.sites
    n = len(sites)
    fig, (heat, bars) = plt.subplots(1, 2, figsize=(5 + 1.6 * n, 0.7 * n + 3.2), dpi=120)
    matrix = np.array(figures["transfer"]["matrix"]["mean"])
    image = heat.imshow(matrix, cmap="viridis", vmin=0, vmax=100)
    for (s, t), value in np.ndenumerate(matrix):
        colour = "white" if value < 60 else "black"
        heat.text(t, s, f"{value:.1f}", ha="center", va="center", color=colour, fontsize=8)
    heat.set_xticks(range(n), sites, rotation=45, ha="right")
    heat.set_yticks(range(n), sites)
    heat.set_xlabel("tested on")
    heat.set_ylabel("trained on")
    heat.set_title("site-local transfer: Dice (%)")
    fig.colorbar(image, ax=heat, fraction=0.046, pad=0.04)

    width = 0.8 / len(DICE_SERIES)
    x = np.arange(n)
    for i, (label, (group, key)) in enumerate(DICE_SERIES.items()):
        value = figures[group][key]
        offset = (i - (len(DICE_SERIES) - 1) / 2) * width
        bars.bar(x + offset, value["mean"], width, yerr=value["std"], capsize=2, label=label)
    bars.set_xticks(x, sites, rotation=45, ha="right")
    bars.set_ylim(0, 100)
    bars.set_ylabel("foreground Dice (%)")
    bars.set_title("per-site Dice")
    bars.grid(axis="y", alpha=0.3)
    bars.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle(f"{calibration.config.dataset}, {len(calibration.seeds)} seed(s)")
    fig.tight_layout()
    return png_bytes(fig)


def write_reports(calibration: Calibration, out: str | Path) -> None:
    """``calibration.json``, ``calibration.md`` and ``calibration.png`` in ``out``."""
    write_report(
        out,
        "calibration",
        calibration.to_json(),
        calibration.markdown(),
        plot_calibration(calibration),
    )


def calibrate(
    config: RunConfig,
    seeds: Sequence[int] = (0,),
    out: str | Path | None = None,
    progress: bool = True,
    workers: int = 0,
) -> Calibration:
    """Measure ``config.dataset`` on each of ``seeds``; see the module docstring.

    Args:
        config: data set, sites and training settings; its ``method`` and ``seed`` are not
            used (every training is FedAvg, on each of ``seeds``). Default: none.
        seeds: the seeds, at least one. Default ``(0,)``.
        out: folder for the reports (:func:`write_reports`); None (default): none written.
        progress: a progress bar over the trainings. Default True.
        workers: processes decoding real data. Default 0.

    Raises:
        ValueError: no seed, fewer than 2 sites, or what loading the data raises.
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must not be empty")
    # Only the final models are evaluated, so no round in between needs to be.
    config = dataclasses.replace(config.resolved(), method="fedavg", method_options={})
    config = dataclasses.replace(config, eval_every=config.rounds)
    per_seed, names, bar = [], None, None
    for seed in seeds:
        seed_config = dataclasses.replace(config, seed=seed)
        sites = load_sites(seed_config, workers=workers)
        if names is None:
            names = [site.name for site in sites]
            if len(names) < 2:
                raise ValueError(f"calibration compares sites: need at least 2, got {names}")
            total = len(seeds) * (len(names) + 2)
            bar = tqdm(total=total, desc="trainings", disable=not progress)
        per_seed.append(_seed_figures(seed_config, sites, bar))
    bar.close()
    calibration = Calibration(dataclasses.replace(config, seed=seeds[0]), seeds, names, per_seed)
    if out is not None:
        write_reports(calibration, out)
    return calibration
