"""``fedbcs compare``: many methods × seeds, one table.

A method spec is a method name with optional option changes after slashes, e.g.
``fedbcs``, ``fedbcs/no-fsr`` (FSR off: CDPA only), ``fedbcs/no-cdpa`` (FSR only) or
``fedbcs/tau=0.1``. Each (spec, seed) runs in its own folder
``OUT/<spec with + for />/seed<k>``: the comparison's run settings with the spec's method
and options and the seed are written there as ``run-config.json``, and
``fedbcs train --config`` runs it. A run whose model file exists is finished and is not
run again, so an interrupted comparison resumes where it stopped. A finished run made with
other settings (another ``--rounds``, another ``--eval-every``, …) is an error, never
mixed into the tables.

Writes ``table1.md`` (per-site Dice, mean ± std over seeds, AVG and Δ vs FedAvg, best in
bold and second underlined: at the final round, then at each run's best round, chosen on
the test split as the released code logs), ``table2.md`` (the FSR / CDPA ablation at the
final round, when the FedBCS variants are among the specs), ``table3.md``
(communication) and ``convergence.png``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from tqdm.auto import tqdm

from .algorithms import METHODS, algorithm_class, build_algorithm
from .config import RunConfig
from .results import (
    BEST_ROUND_CAPTION,
    CLASS_NOTE,
    FINAL_ROUND_CAPTION,
    METRICS,
    best_round,
    classes_of,
    dice_matrix,
    final_round,
    line_plot,
    table1,
)
from .run_folder import (
    atomic_write_bytes,
    atomic_write_text,
    is_finished,
    read_config,
    read_records,
)
from .schema import Option

RUN_CONFIG_FILE = "run-config.json"  # in each run folder: what compare asked it to run

ABLATION = {
    "fedavg": (False, False),
    "fedbcs/no-fsr": (True, False),
    "fedbcs/no-cdpa": (False, True),
    "fedbcs": (True, True),
}


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"fedbcs/no-fsr/tau=0.1"`` → (``"fedbcs"``, ``{"fsr": False, "tau": 0.1}``): the
    method and its option changes.

    The changes are checked as ``fedbcs train`` would check them, by building the
    algorithm, so a wrong one fails before any run starts, not hours later.
    """
    name, *changes = spec.split("/")
    cls = algorithm_class(name)  # raises with the valid names
    values = {}
    for change in changes:
        if "=" in change:
            key, text = change.split("=", 1)
            values[key] = _typed(spec, key, text, cls.options)
        elif change.startswith("no-"):
            key = change[3:].replace("-", "_")
            values[key] = _typed(spec, key, None, cls.options)
        else:
            raise ValueError(f"cannot read {change!r} in method spec {spec!r}: use no-X or X=V")
    try:  # the algorithm's own checks: option names and the values each may take
        build_algorithm(RunConfig(method=name, method_options=values).resolved())
    except ValueError as error:
        raise ValueError(f"in {spec!r}: {error}") from None
    return name, values


def _typed(spec: str, key: str, text: str | None, options: dict[str, Option]):
    """A spec's value as the option's type (``None`` text: the ``no-X`` form, False)."""
    if key not in options:
        return text  # the build names the valid options
    option = options[key]
    if (option.type is bool) != (text is None):
        form = f"no-{key}" if option.type is bool else f"{key}=VALUE"
        raise ValueError(f"in {spec!r}: write {key} as {form}")
    if text is None:
        return False
    try:
        return option.parse(text)
    except ValueError as error:
        raise ValueError(f"in {spec!r}: {key} {error}") from None


def expand_methods(text: str) -> list[str]:
    """A comma-separated list of specs; ``all`` stands for every method (Table 1 order)."""
    specs = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        for spec in METHODS if item == "all" else [item]:
            if spec not in specs:
                specs.append(spec)
    return specs


def run_dir(out: Path, spec: str, seed: int) -> Path:
    return out / spec.replace("/", "+") / f"seed{seed}"


def run_config(settings: RunConfig, spec: str, seed: int) -> RunConfig:
    """The resolved config of one (spec, seed): the comparison's run ``settings`` with the
    spec's method and method options, and the seed."""
    name, options = parse_spec(spec)
    return dataclasses.replace(settings, method=name, method_options=options, seed=seed).resolved()


def check_finished(folder: Path, wanted: RunConfig) -> None:
    """Raise ``ValueError`` when the finished run in ``folder`` was made with other settings
    than ``wanted`` (a finished run is reused, never silently mixed in)."""
    found = read_config(folder).resolved()  # an older run's file may leave a field unset
    differ = sorted(k for k, v in vars(wanted).items() if getattr(found, k) != v)
    if differ:
        changes = ", ".join(f"{k} {getattr(found, k)!r} ≠ {getattr(wanted, k)!r}" for k in differ)
        raise ValueError(
            f"{folder} holds a finished run with other settings ({changes}): remove it, or "
            "give another --out"
        )


def _run_one(spec: str, seed: int, out: Path, settings: RunConfig, jobs: int) -> Path:
    folder = run_dir(out, spec, seed)
    config = run_config(settings, spec, seed)
    if is_finished(folder):
        check_finished(folder, config)
        return folder
    if folder.exists():  # an interrupted run: start it again from round 1
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    atomic_write_text(folder / RUN_CONFIG_FILE, config.to_json())
    cmd = [
        sys.executable,
        "-m",
        "fedbcs_fl.cli",
        "train",
        "--config",
        str(folder / RUN_CONFIG_FILE),
    ]
    cmd += ["--out", str(folder), "--quiet"]
    # Parallel runs each get one intra-op thread: small models on a few cores run faster
    # side by side than fighting over threads.
    env = dict(os.environ, OMP_NUM_THREADS="1") if jobs > 1 else None
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{spec} seed {seed} failed:\n{result.stderr[-2000:]}")
    return folder


def run_all(specs, seeds, out: Path, settings: RunConfig, jobs: int = 1) -> None:
    """Run every (spec, seed) not finished yet, ``jobs`` at a time, with a progress bar;
    ``settings`` are the run settings every run shares (:func:`run_config`)."""
    for spec in specs:
        parse_spec(spec)
    tasks = [(spec, seed) for spec in specs for seed in seeds]
    with ThreadPoolExecutor(max_workers=jobs) as pool, tqdm(total=len(tasks), desc="runs") as bar:
        futures = [pool.submit(_run_one, spec, seed, out, settings, jobs) for spec, seed in tasks]
        for future in futures:
            future.result()
            bar.update()


def _collect(out: Path, specs, seeds):
    """{spec: [records of each seed]}."""
    return {spec: [read_records(run_dir(out, spec, s)) for s in seeds] for spec in specs}


def table2(results, sites: list[str]) -> str:
    """The ablation in the layout of paper Table 2: CDPA, FSR, per-site Dice, AVG."""
    header = ["CDPA", "FSR", *sites, "AVG"]
    lines = ["| " + " | ".join(header) + " |", "|:-:|:-:" + "|---:" * (len(sites) + 1) + "|"]
    for spec, (cdpa, fsr) in ABLATION.items():
        dice = dice_matrix(results[spec], sites)
        avg = dice.mean(1)
        cells = [f"{dice[:, j].mean():.2f} ± {dice[:, j].std():.2f}" for j in range(len(sites))]
        cells.append(f"{avg.mean():.2f} ± {avg.std():.2f}")
        lines.append("| " + " | ".join(["✓" if cdpa else "", "✓" if fsr else "", *cells]) + " |")
    return "\n".join(lines) + "\n"


def table3(results) -> str:
    """Communication per method: prototypes uploaded per client per round, bytes per round."""
    lines = [
        "| Method | prototypes up / client / round | MB up / client / round "
        "| MB down / client / round |",
        "|---|---:|---:|---:|",
    ]
    for spec, per_seed in results.items():
        protos, up, down = [], [], []
        for records in per_seed:
            for r in records:
                protos += list(r["prototypes_uploaded"].values())
                up += list(r["bytes_up"].values())
                down.append(r["bytes_down"])
        lines.append(
            f"| {spec} | {np.mean(protos):.2f} | {np.mean(up) / 1e6:.3f} "
            f"| {np.mean(down) / 1e6:.3f} |"
        )
    return "\n".join(lines) + "\n"


_VARIANT_DASHES = ("--", ":", "-.", (0, (5, 1, 1, 1)))


def _curve_style(method: str, variant: int | None) -> dict:
    """One colour per method, in Table 1 order (tab10 has exactly one per method); a
    variant such as ``fedbcs/no-fsr`` (``variant`` = its index among the method's
    variants) keeps its method's colour with its own dash."""
    colours = matplotlib.colormaps["tab10"].colors
    style = {"color": colours[list(METHODS).index(method) % len(colours)]}
    style["lw"] = 2.2 if method == "fedbcs" else 1.3
    if variant is not None:
        style["linestyle"] = _VARIANT_DASHES[variant % len(_VARIANT_DASHES)]
    return style


def plot_convergence(results, title: str = "") -> bytes:
    """Mean Dice per round per method (mean over seeds), as the paper's Fig. 4a, as PNG
    bytes."""
    curves, variants = [], {}
    for spec, per_seed in results.items():
        rounds = [r["round"] for r in per_seed[0] if "dice" in r]
        dice = np.array([[100 * r["mean_dice"] for r in recs if "dice" in r] for recs in per_seed])
        method, *changes = spec.split("/")
        variant = None
        if changes:
            variant = variants.get(method, 0)
            variants[method] = variant + 1
        curves.append((spec, rounds, dice.mean(0), _curve_style(method, variant)))
    return line_plot(curves, "mean foreground Dice (%)", title)


def write_reports(out: Path, specs, seeds, dataset: str, rounds: int) -> str:
    results = _collect(out, specs, seeds)
    first = next(r for r in results[specs[0]][0] if "dice" in r)
    sites = list(first["dice"])
    setting = f"{dataset}, {rounds} rounds, seeds {', '.join(map(str, seeds))}"
    class_note = f" {CLASS_NOTE}" if classes_of(first) else ""
    dice_note = f"{setting}; Dice in %.{class_note}\n\n"
    tables = (
        f"{FINAL_ROUND_CAPTION}\n\n{table1(results, sites)}\n"
        f"{BEST_ROUND_CAPTION} Per seed, its own best round.\n\n"
        f"{table1(results, sites, pick=best_round)}"
    )
    surface = "".join(
        f"\n{METRICS[metric].name}, final round; NaN where a prediction was empty is "
        f"skipped.\n\n{table1(results, sites, metric=metric)}"
        for metric in ("hd95", "assd")
        if all(metric in final_round(records) for runs in results.values() for records in runs)
    )
    atomic_write_text(out / "table1.md", dice_note + tables + surface)
    atomic_write_text(
        out / "table3.md", f"{setting}; means over clients, rounds and seeds.\n\n" + table3(results)
    )
    if all(spec in results for spec in ABLATION):
        ablation = table2({s: results[s] for s in ABLATION}, sites)
        atomic_write_text(out / "table2.md", f"{dice_note}{FINAL_ROUND_CAPTION}\n\n{ablation}")
    convergence = plot_convergence(results, title=f"{dataset}, {len(seeds)} seeds")
    atomic_write_bytes(out / "convergence.png", convergence)
    return tables
