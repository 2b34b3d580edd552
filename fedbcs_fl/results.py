"""What people look at, from round records: the Table 1 layout, summaries and plots.

Everything here returns text or PNG bytes; :mod:`fedbcs_fl.run_folder` and the report
writers store them. matplotlib is imported when a plot is drawn, never before, so the
engines' clients do not load it.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

# Which round a table reports. The final round is the default everywhere; the best round
# is what the released code logs ("Best Dice"), picked by the very scores it reports.
FINAL_ROUND_CAPTION = "Final round (the default): the last evaluated round."
BEST_ROUND_CAPTION = (
    "Best round (chosen on the test split, as the released code logs): the evaluated "
    "round with the highest mean Dice over sites; optimistic, for comparison with the "
    "released code's numbers only."
)


NOT_COMPUTED = (
    "not computed on this round (HD95 and ASSD are computed on the last round, and every "
    "N rounds with --surface-metrics-every N)."
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


@dataclass(frozen=True)
class Metric:
    """How a round record's per-site metric is shown: its table name, the factor to the
    shown unit, and whether higher is better (what the bold and underline marks)."""

    key: str
    name: str
    scale: float
    higher_is_better: bool


# Surface distances are in pixels of the evaluated images (MONAI, no spacing); NaN where
# a prediction or mask is empty, skipped by the means. A round that did not compute them
# (``--surface-metrics-every``) has no such keys.
METRICS = {
    "dice": Metric("dice", "Dice (%)", 100.0, True),
    "hd95": Metric("hd95", "HD95 (px)", 1.0, False),
    "assd": Metric("assd", "ASSD (px)", 1.0, False),
}


def metric_matrix(
    runs: list[list[dict]],
    sites: list[str],
    pick: Callable[[list[dict]], dict] = final_round,
    metric: str = "dice",
) -> np.ndarray:
    """[runs, sites] ``metric`` (in its shown unit, :data:`METRICS`) of the round ``pick``
    chooses in each run's records."""
    scale = METRICS[metric].scale
    return np.array(
        [[scale * pick(records)[metric][site] for site in sites] for records in runs], dtype=float
    )


def dice_matrix(
    runs: list[list[dict]], sites: list[str], pick: Callable[[list[dict]], dict] = final_round
) -> np.ndarray:
    """[runs, sites] Dice (%) of the round ``pick`` chooses in each run's records."""
    return metric_matrix(runs, sites, pick, "dice")


CLASS_NOTE = (
    "Each site's Dice is the mean over its foreground classes; a column `class c` is class "
    "c's Dice averaged over the sites."
)


def classes_of(record: dict) -> list[str]:
    """The foreground class ids of an evaluated round record, in order, where it has
    several; [] with one foreground class (or a record without per-class figures)."""
    per_site = record.get("dice_per_class", {})
    classes = sorted({c for figures in per_site.values() for c in figures}, key=int)
    return classes if len(classes) > 1 else []


def class_dice(record: dict, sites: list[str] | None = None) -> dict[str, float]:
    """Per foreground class of :func:`classes_of`, its Dice averaged over ``sites``
    (default: every site of the record)."""
    per_site = record.get("dice_per_class", {})
    sites = list(per_site) if sites is None else sites
    return {c: float(np.mean([per_site[s][c] for s in sites])) for c in classes_of(record)}


def class_matrix(
    runs: list[list[dict]],
    sites: list[str],
    classes: list[str],
    pick: Callable[[list[dict]], dict] = final_round,
) -> np.ndarray:
    """[runs, classes] Dice (%) of each class averaged over ``sites``, at the round
    ``pick`` chooses in each run's records."""
    return np.array(
        [[100 * class_dice(pick(records), sites)[c] for c in classes] for records in runs]
    ).reshape(len(runs), len(classes))


def dice_line(record: dict) -> str:
    """An evaluated round in one line: mean Dice, per site, and per class where there are
    several foreground classes (averaged over the sites)."""
    sites = " ".join(f"{k}={v:.3f}" for k, v in record["dice"].items())
    line = f"mean Dice {record['mean_dice']:.4f}  ({sites})"
    classes = class_dice(record)
    if classes:
        line += "  classes " + " ".join(f"{c}={v:.3f}" for c, v in classes.items())
    return line


def _marks(values: list[float], higher_is_better: bool = True) -> list[str]:
    """Bold the best, underline the second (paper style); NaN is never marked."""
    keyed = np.array([v if higher_is_better else -v for v in values], dtype=float)
    order = [i for i in np.argsort(np.nan_to_num(keyed, nan=-np.inf))[::-1] if keyed[i] == keyed[i]]
    marks = [""] * len(values)
    if len(values) > 1:
        for i, mark in zip(order, ("best", "second"), strict=False):
            marks[i] = mark
    return marks


def _cell(values: np.ndarray, spread: bool, mark: str = "") -> str:
    if not spread:
        return f"{np.nanmean(values):.2f}" if np.isfinite(values).any() else "nan"
    if not np.isfinite(values).any():
        return "nan"
    text = f"{np.nanmean(values):.2f} ± {np.nanstd(values):.2f}"
    return {"best": f"**{text}**", "second": f"<u>{text}</u>", "": text}[mark]


def table1(
    results: dict[str, list[list[dict]]],
    sites: list[str],
    baseline: str | None = "fedavg",
    pick: Callable[[list[dict]], dict] = final_round,
    spread: bool = True,
    round_column: bool = False,
    metric: str = "dice",
) -> str:
    """Markdown in the layout of paper Table 1: per-site Dice (%), their AVG, and Δ of the
    AVG vs ``baseline``, at the round ``pick`` chooses in each run; or the same for another
    metric of :data:`METRICS`. For Dice, where the records hold several foreground classes,
    a column ``class c`` per class after AVG: class c's Dice averaged over the sites (each
    site's Dice is then its mean over the classes).

    Args:
        results: label → the round records of each of its runs (e.g. one per seed).
        sites: the site columns, in order.
        baseline: the label Δ is measured from; "-" in its row, and in every row when it
            is not among the labels. None: no Δ column. Default ``"fedavg"``.
        pick: :func:`final_round` (default) or :func:`best_round`, the released code's
            figure.
        spread: each cell is the mean ± population std over the label's runs, the best of
            each column bold and the second underlined (default); False: the mean alone.
        round_column: a last column with the round each row reports; every label then has
            one run. Default False.
        metric: a key of :data:`METRICS` (default ``"dice"``); the marks follow its
            direction, and NaN (an empty prediction's surface distance) is skipped.
    """
    higher = METRICS[metric].higher_is_better
    classes = classes_of(pick(next(iter(results.values()))[0])) if metric == "dice" else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column or run of NaN only
        values = {lb: metric_matrix(runs, sites, pick, metric) for lb, runs in results.items()}
        avg = {label: np.nanmean(v, axis=1) for label, v in values.items()}
        columns = [{label: v[:, j] for label, v in values.items()} for j in range(len(sites))]
        columns.append(avg)
        by_class = {lb: class_matrix(runs, sites, classes, pick) for lb, runs in results.items()}
        columns += [{label: c[:, j] for label, c in by_class.items()} for j in range(len(classes))]
        means = [[np.nanmean(v) for v in column.values()] for column in columns]
        avg_mean = {label: np.nanmean(v) for label, v in avg.items()}
    header = ["Method", *sites, "AVG", *[f"class {c}" for c in classes]]
    header += (["Δ"] if baseline is not None else []) + (["Round"] if round_column else [])
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    marks = [_marks(column_means, higher) for column_means in means]
    for i, (label, runs) in enumerate(results.items()):
        cells = [label]
        cells += [_cell(c[label], spread, m[i]) for c, m in zip(columns, marks, strict=True)]
        if baseline is not None:
            no_delta = label == baseline or baseline not in avg
            cells.append("-" if no_delta else f"{avg_mean[label] - avg_mean[baseline]:+.2f}")
        if round_column:
            if len(runs) != 1:
                raise ValueError(f"a round column needs one run per label, {label} has {len(runs)}")
            cells.append(str(pick(runs[0])["round"]))
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


def communication(records: list[dict]) -> str:
    """One sentence: the mean bytes each client uploaded and the server sent per round."""
    up = [b for r in records for b in r.get("bytes_up", {}).values()]
    down = [r["bytes_down"] for r in records if "bytes_down" in r]
    if not up:
        return "Communication: not recorded."
    return (
        f"Communication per round: {np.mean(up) / 1e6:.3f} MB up per client, "
        f"{np.mean(down) / 1e6:.3f} MB down per client; {sum(up) / 1e6:.1f} MB up in all."
    )


def summary_tables(runs: list[tuple[str, list[dict]]], baseline: str | None = None) -> str:
    """With a baseline, the :func:`verdict` first; then the final-round tables and the
    best-round ones, each under its caption: Dice, and HD95 and ASSD where the records
    hold them, each with Δ against the baseline; where a run computed them on other rounds
    than the one picked, a line says so.

    Args:
        runs: (method label, the run's round records).
        baseline: the label whose AVG Δ is measured from (default: no Δ column).
    """
    results = {label: [records] for label, records in runs}
    tables = []
    for caption, pick in ((FINAL_ROUND_CAPTION, final_round), (BEST_ROUND_CAPTION, best_round)):
        picked = pick(runs[0][1])
        sites = list(picked["dice"])
        parts = [caption]
        for metric in METRICS:
            if all(metric in pick(records) for _, records in runs):
                table = table1(results, sites, baseline, pick, False, True, metric)
                parts.append(f"{METRICS[metric].name}\n\n{table}")
            elif any(metric in record for _, records in runs for record in records):
                parts.append(f"{METRICS[metric].name}: {NOT_COMPUTED}")
        tables.append("\n\n".join(parts))
    if baseline is not None:
        tables.insert(0, verdict(runs, baseline))
    return "\n".join(tables)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    """A matplotlib figure as PNG (cropped to what it draws); the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


class Panel(NamedTuple):
    """One axes of :func:`line_panels`: ``curves`` is ``[(label, x, values, style)]`` with
    ``style`` a dict of matplotlib line keywords; ``yscale`` is matplotlib's (``"log"``)."""

    ylabel: str
    curves: list
    yscale: str = "linear"


def line_panels(panels: list[Panel], xlabel: str, title: str = "", xticks=None) -> bytes:
    """Side-by-side line plots sharing the x axis, as PNG bytes, with one legend of every
    label in any panel.

    Args:
        panels: the axes, left to right.
        xlabel: the x axis label of every panel.
        title: above the panels (default none).
        xticks: ``(positions, labels)`` for a categorical x axis (default: numbers).
    """
    plt = _pyplot()
    width = 6.4 if len(panels) == 1 else 5.2 * len(panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 4.0), dpi=120, squeeze=False)
    fig.subplots_adjust(wspace=0.35)  # room for each panel's y label
    for ax, panel in zip(axes[0], panels, strict=True):
        for label, x, values, style in panel.curves:
            ax.plot(x, values, label=label, **style)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.set_yscale(panel.yscale)
        if xticks is not None:
            ax.set_xticks(*xticks, rotation=60, ha="right", fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    named = {}  # one entry per label, whichever panel draws it
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            named.setdefault(label, handle)
    # Outside the axes: with many methods an inside legend hides the curves it names.
    axes[0][-1].legend(
        named.values(),
        named.keys(),
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        frameon=False,
    )
    return png_bytes(fig)


def line_plot(curves, ylabel: str, title: str = "") -> bytes:
    """Curves over rounds as PNG bytes: ``curves`` is ``[(label, rounds, values, style)]``
    with ``style`` a dict of matplotlib line keywords."""
    return line_panels([Panel(ylabel, curves)], "round", title)


def plot_dice(
    records: list[dict], title: str = "", baseline: tuple[str, list[dict]] | None = None
) -> bytes:
    """Dice per round per site (light lines) and the mean (bold), as PNG bytes; with
    ``baseline`` = (label, its records), the baseline's mean beside it."""
    evaluated = evaluated_rounds(records)
    rounds = [r["round"] for r in evaluated]
    curves = [
        (site, rounds, [100 * r["dice"][site] for r in evaluated], {"alpha": 0.35, "lw": 1})
        for site in evaluated[0]["dice"]
    ]
    mean = [100 * r["mean_dice"] for r in evaluated]
    curves.append(("mean", rounds, mean, {"color": "k", "lw": 2.2}))
    if baseline is not None:
        label, base_records = baseline
        base = evaluated_rounds(base_records)
        curves.append(
            (
                f"{label} mean",
                [r["round"] for r in base],
                [100 * r["mean_dice"] for r in base],
                {"color": "tab:gray", "linestyle": "--", "lw": 2.2},
            )
        )
    return line_plot(curves, "foreground Dice (%)", title)
