"""Reading run folders and writing what people look at: summary tables and plots."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The per-round records of a run folder's ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a fedbcs run folder?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# Which round a table reports. The final round is the default everywhere; the best round
# is what the released code logs ("Best Dice"), picked by the very scores it reports.
FINAL_ROUND_CAPTION = "Final round (the default): the last evaluated round."
BEST_ROUND_CAPTION = (
    "Best round (chosen on the test split, as the released code logs): the evaluated "
    "round with the highest mean Dice over sites; optimistic, for comparison with the "
    "released code's numbers only."
)


def evaluated_rounds(records: list[dict]) -> list[dict]:
    """The records of the rounds that were evaluated (they hold ``dice``)."""
    evaluated = [r for r in records if "dice" in r]
    if not evaluated:
        raise ValueError("no evaluated round in these records")
    return evaluated


def final_round(records: list[dict]) -> dict:
    """The record of the last evaluated round."""
    return evaluated_rounds(records)[-1]


def best_round(records: list[dict]) -> dict:
    """The record of the evaluated round with the highest mean Dice over sites (the
    earliest of equals): the released code's "Best Dice", chosen on the test split."""
    return max(evaluated_rounds(records), key=lambda r: float(np.mean(list(r["dice"].values()))))


def final_dice(records: list[dict]) -> dict[str, float]:
    """Per-site Dice of the last evaluated round."""
    return final_round(records)["dice"]


def dice_table(
    rows: list[tuple[str, dict[str, float]]],
    baseline: str | None = None,
    rounds: list[int] | None = None,
) -> str:
    """Markdown in the layout of paper Table 1: per-site Dice (%), AVG and Δ vs baseline.

    Args:
        rows: (method label, {site: Dice in [0, 1]}), all with the same sites.
        baseline: the label whose AVG Δ is measured from (default: no Δ column).
        rounds: the round each row reports, as a last column (default: no such column).
    """
    sites = list(rows[0][1])
    averages = {label: 100 * float(np.mean([d[s] for s in sites])) for label, d in rows}
    header = ["Method", *sites, "AVG"] + (["Δ"] if baseline else []) + (["Round"] if rounds else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, (label, dice) in enumerate(rows):
        cells = [label, *(f"{100 * dice[s]:.2f}" for s in sites), f"{averages[label]:.2f}"]
        if baseline:
            delta = averages[label] - averages[baseline]
            cells.append("-" if label == baseline else f"{delta:+.2f}")
        if rounds:
            cells.append(str(rounds[i]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def verdict(runs: list[tuple[str, list[dict]]], baseline: str) -> str:
    """Plain sentences: each run's final-round mean Dice against the baseline's, whatever
    the sign, and how many sites it is ahead on.

    Args:
        runs: (method label, the run's round records), the baseline's among them.
        baseline: the label of the baseline run.
    """
    finals = {label: final_round(records)["dice"] for label, records in runs}
    base = finals[baseline]
    lines = []
    for label, dice in finals.items():
        if label == baseline:
            continue
        delta = 100 * (np.mean(list(dice.values())) - np.mean(list(base.values())))
        ahead = sum(dice[site] > base[site] for site in base)
        word = "above" if delta > 0 else "below" if delta < 0 else "level with"
        lines.append(
            f"**{label} ends {abs(delta):.2f} points {word} {baseline}** (final-round mean "
            f"Dice {100 * np.mean(list(dice.values())):.2f} vs "
            f"{100 * np.mean(list(base.values())):.2f}), ahead on {ahead} of {len(base)} sites. "
            "One seed: weigh the difference against the spread over seeds in "
            "docs/results.md before concluding."
        )
    return "\n\n".join(lines) + "\n"


def summary_tables(runs: list[tuple[str, list[dict]]], baseline: str | None = None) -> str:
    """With a baseline, the :func:`verdict` first; then the final-round table and the
    best-round one, each under its caption.

    Args:
        runs: (method label, the run's round records).
        baseline: the label whose AVG Δ is measured from (default: no Δ column).
    """
    tables = []
    for caption, pick in ((FINAL_ROUND_CAPTION, final_round), (BEST_ROUND_CAPTION, best_round)):
        picked = [(label, pick(records)) for label, records in runs]
        rows = [(label, record["dice"]) for label, record in picked]
        table = dice_table(rows, baseline, rounds=[record["round"] for _, record in picked])
        tables.append(f"{caption}\n\n{table}")
    if baseline is not None:
        tables.insert(0, verdict(runs, baseline))
    return "\n".join(tables)


def write_summary(
    path: str | Path,
    title: str,
    setting: str,
    runs: list[tuple[str, list[dict]]],
    baseline: str | None = None,
) -> str:
    """Write a run's ``summary.md`` (both engines): a title, a line on the setting, and
    :func:`summary_tables`, which it returns."""
    tables = summary_tables(runs, baseline)
    Path(path).write_text(f"# {title}\n\n{setting}\n\n{tables}")
    return tables


def line_plot(curves, path: str | Path, ylabel: str, title: str = "") -> None:
    """Curves over rounds as a PNG: ``curves`` is ``[(label, rounds, values, style)]``
    with ``style`` a dict of matplotlib line keywords."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for label, rounds, values, style in curves:
        ax.plot(rounds, values, label=label, **style)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    # Outside the axes: with many methods an inside legend hides the curves it names.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def plot_dice(records: list[dict], path: str | Path, title: str = "") -> None:
    """Dice per round per site, and the mean, as a PNG."""
    evaluated = [r for r in records if "dice" in r]
    rounds = [r["round"] for r in evaluated]
    curves = [
        (site, rounds, [100 * r["dice"][site] for r in evaluated], {"alpha": 0.8})
        for site in evaluated[0]["dice"]
    ]
    mean = [100 * r["mean_dice"] for r in evaluated]
    curves.append(("mean", rounds, mean, {"color": "k", "linestyle": "--", "lw": 2}))
    line_plot(curves, path, "foreground Dice (%)", title)


def is_evaluation_round(config, round_index: int) -> bool:
    """Every ``eval_every`` rounds and after the last: both engines evaluate then."""
    return round_index % config.eval_every == 0 or round_index == config.rounds


def evaluation_fields(evaluation: dict[str, dict[str, float]]) -> dict:
    """The evaluation keys of a round record: per-site and mean (NaN-skipping) Dice, HD95
    and ASSD, from ``{site: segmentation_metrics(...)}``."""
    fields = {}
    for metric in ("dice", "hd95", "assd"):
        fields[metric] = {site: m[metric] for site, m in evaluation.items()}
        fields[f"mean_{metric}"] = float(np.nanmean(list(fields[metric].values())))
    return fields
