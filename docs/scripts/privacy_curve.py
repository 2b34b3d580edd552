"""The privacy–utility curve of docs/results.md (issue 19): FedBCS's final mean Dice
against its prototype-DP budget ε, beside FedAvg and FedBCS without DP.

Reads ``fedbcs compare`` folders: ``PRIVACY/eps-<ε>`` (one per budget, spec ``fedbcs``)
and, for the runs without DP, ``REFERENCE`` (specs ``fedavg`` and ``fedbcs``). Prints the
table as markdown and writes the plot to ``PNG``.

Usage: python docs/scripts/privacy_curve.py PRIVACY REFERENCE PNG
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from fedbcs_fl.compare import run_dir
from fedbcs_fl.privacy import EPSILON_KEY
from fedbcs_fl.results import Panel, final_round, line_panels
from fedbcs_fl.run_folder import METRICS_FILE, read_config, read_records


def seed_runs(out: Path, spec: str) -> list[list[dict]]:
    """The records of every finished seed of ``spec`` in compare folder ``out`` (a run
    still going is left out)."""
    runs = []
    for seed in sorted(int(p.name[4:]) for p in (out / spec).glob("seed*")):
        folder = run_dir(out, spec, seed)
        records = read_records(folder) if (folder / METRICS_FILE).exists() else []
        if records and records[-1]["round"] == read_config(folder).rounds:
            runs.append(records)
    return runs


def final_dice(records: list[dict]) -> float:
    """Mean Dice (%) over sites at the last evaluated round."""
    return 100 * float(np.mean(list(final_round(records)["dice"].values())))


def spent(records: list[dict]) -> float:
    """The largest ε any site reports having spent by the end of the run."""
    return max(records[-1][EPSILON_KEY].values())


def curve(privacy: Path) -> list[tuple[float, list[float], list[float]]]:
    """``[(ε budget, final Dice per seed, ε spent per seed)]``, by budget."""
    points = []
    for folder in privacy.glob("eps-*"):
        runs = seed_runs(folder, "fedbcs")
        if runs:
            budget = float(re.fullmatch(r"eps-(.+)", folder.name).group(1))
            points.append((budget, [final_dice(r) for r in runs], [spent(r) for r in runs]))
    return sorted(points)


def _cell(values: list[float]) -> str:
    return f"{np.mean(values):.2f} ± {np.std(values):.2f} ({len(values)})"


def table(points, fedavg: list[float], fedbcs: list[float]) -> str:
    """The markdown table: one row per budget, then the runs without DP."""
    lines = [
        "| run | prototype DP budget ε | ε spent (max over sites) | final mean Dice (seeds) "
        "| per seed | Δ vs FedAvg |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for budget, dice, eps in points:
        lines.append(
            f"| fedbcs | {budget:g} | {max(eps):.3g} | {_cell(dice)} | "
            f"{' / '.join(f'{d:.2f}' for d in dice)} | {np.mean(dice) - np.mean(fedavg):+.2f} |"
        )
    for name, dice in (("fedbcs", fedbcs), ("fedavg", fedavg)):
        lines.append(
            f"| {name} | ∞ (no DP) | – | {_cell(dice)} | "
            f"{' / '.join(f'{d:.2f}' for d in dice)} | {np.mean(dice) - np.mean(fedavg):+.2f} |"
        )
    return "\n".join(lines)


def plot(points, fedavg: list[float], fedbcs: list[float]) -> bytes:
    """Final mean Dice per budget (seeds as points, their mean as a line), the runs
    without DP at the right end and FedAvg as a dashed level."""
    labels = [f"{budget:g}" for budget, _, _ in points] + ["∞"]
    x = list(range(len(labels)))
    means = [float(np.mean(dice)) for _, dice, _ in points] + [float(np.mean(fedbcs))]
    curves = [("FedBCS, mean over seeds", x, means, {"marker": "o", "color": "C3"})]
    seeds = [(i, d) for i, (_, dice, _) in enumerate(points) for d in dice]
    seeds += [(len(points), d) for d in fedbcs]
    curves.append(
        (
            "FedBCS, one seed",
            [i for i, _ in seeds],
            [d for _, d in seeds],
            {"linestyle": "none", "marker": ".", "color": "C3", "alpha": 0.4},
        )
    )
    level = float(np.mean(fedavg))
    curves.append(("FedAvg, no DP", x, [level] * len(x), {"linestyle": "--", "color": "C0"}))
    panel = Panel("final mean Dice (%)", curves)
    return line_panels(
        [panel], "prototype DP budget ε over the run", "Privacy–utility", (x, labels)
    )


def main(privacy: Path, reference: Path, png: Path) -> None:
    points = curve(privacy)
    fedavg = [final_dice(r) for r in seed_runs(reference, "fedavg")]
    fedbcs = [final_dice(r) for r in seed_runs(reference, "fedbcs")]
    print(table(points, fedavg, fedbcs))
    png.write_bytes(plot(points, fedavg, fedbcs))


if __name__ == "__main__":
    main(*map(Path, sys.argv[1:4]))
