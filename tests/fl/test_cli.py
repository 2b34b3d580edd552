"""End to end through the ``fedbcs`` command: files, reload, determinism, bad arguments."""

import argparse
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from fedbcs_fl.algorithms import build_algorithm
from fedbcs_fl.cli import build_parser, config_from_args, main
from fedbcs_fl.compare import run_config
from fedbcs_fl.results import BEST_ROUND_CAPTION, FINAL_ROUND_CAPTION

from .._tiny import tiny_argv


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.e2e
@pytest.mark.parametrize("method", ["fedavg", "fedbcs"])
def test_train_writes_results_and_reloads(tmp_path, capsys, method):
    run = tmp_path / method
    assert main(["train", *tiny_argv(method), "--quiet", "--out", str(run)]) == 0
    for name in ("config.json", "metrics.jsonl", "summary.md", "dice.png", "model.safetensors"):
        assert (run / name).exists(), name
    records = _records(run)
    assert [r["round"] for r in records] == [1, 2]
    for r in records:
        assert set(r["dice"]) == {"site-A", "site-B", "site-C", "site-D"}
        assert all(0 <= v <= 1 for v in r["dice"].values())
        assert r["bytes_down"] > 0 and all(v > 0 for v in r["bytes_up"].values())
    expected_protos = 4 if method == "fedbcs" else 0
    assert set(records[-1]["prototypes_uploaded"].values()) == {expected_protos}
    assert "| Method |" in (run / "summary.md").read_text()
    printed = capsys.readouterr().out
    log = (run / "train.log").read_text()
    assert printed.strip() and printed.strip() in log  # what the console showed
    assert (run / "tensorboard").is_dir()

    assert main(["eval", "--checkpoint", str(run / "model.safetensors")]) == 0
    printed = capsys.readouterr().out
    for site, dice in records[-1]["dice"].items():
        assert f"{site}: Dice {dice:.4f}" in printed


@pytest.mark.e2e
def test_same_seed_same_results(tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        assert main(["train", *tiny_argv("fedbcs"), "--quiet", "--out", str(run)]) == 0
    a, b = (_records(run) for run in runs)
    for ra, rb in zip(a, b, strict=True):
        ra.pop("seconds"), rb.pop("seconds")
        assert ra == rb
    wa, wb = (load_file(str(run / "model.safetensors")) for run in runs)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.e2e
def test_baseline_delta_in_summary(tmp_path):
    base, run = tmp_path / "base", tmp_path / "run"
    args = ["train", *tiny_argv("fedavg", rounds=1), "--quiet"]
    assert main([*args, "--out", str(base)]) == 0
    assert main([*args, "--seed", "1", "--out", str(run), "--baseline", str(base)]) == 0
    summary = (run / "summary.md").read_text()
    assert "fedavg (baseline)" in summary and "Δ" in summary
    assert summary.index(FINAL_ROUND_CAPTION) < summary.index(BEST_ROUND_CAPTION)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--method", "fedmagic"], "--method: must be one of fedavg, fedprox,"),
        (["train", "--dataset", "mnist"], "dataset: must be one of synthetic-nuclei,"),
        (["train", "--rounds", "0"], "rounds: must be in [1, inf); got 0"),
        (["train", "--lr", "fast"], "lr: must be a number; got 'fast'"),
        (["train", "--method", "fedavg", "--tau", "0.1"], "fedavg has no option tau"),
        (["train", "--method", "fedbcs", "--tau", "-1"], "tau must be in (0, inf); got -1.0"),
        (["train", "--method", "fedprox", "--mu", "nan"], "mu must be in [0, inf); got nan"),
        (["train", "--method", "fedbcs", "--fusion", "sideways"], "fusion must be one of"),
        (["train", "--contrast", "capped"], "contrast must be one of released, exact"),
        (["train", "--dice-loss-classes", "background"], "one of all, foreground; got 'back"),
        (["train", "--nuclei-intensity", "unit"], "must be one of minmax, dtype; got 'unit'"),
        (["train", "--dataset", "prostate"], "give --data-root"),
        (
            ["train", "--aggregation", "mode"],
            "must be one of mean, median, trimmed-mean, krum; got 'mode'",
        ),
        (["train", "--stall-rounds", "0"], "stall-rounds: must be in [1, inf); got 0"),
        (["train", "--inject-faults", "site-X:nan@1"], "names 'site-X', not a client of this run"),
        (["train", "--inject-faults", "site-B:reverse@1"], "reverse needs a value, reverse=F"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message):
    result = subprocess.run(
        [sys.executable, "-m", "fedbcs_fl.cli", *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


FIDELITY_FLAGS = [
    "--dice-loss-classes", "foreground", "--eval-batch-size", "4",
    "--nuclei-intensity", "dtype", "--momentum", "0",
]  # fmt: skip


def _fidelity_settings(config):
    return (
        config.dice_loss_classes,
        config.eval_batch_size,
        config.nuclei_intensity,
        config.momentum,
    )


def test_fidelity_settings_reach_the_run_and_compare_passes_them_on():
    parse = build_parser().parse_args
    defaults = config_from_args(parse(["train"]))
    assert _fidelity_settings(defaults) == ("all", 16, "minmax", 0.9)
    assert build_algorithm(defaults).opt["contrast"] == "released"
    config = config_from_args(parse(["train", "--contrast", "exact", *FIDELITY_FLAGS]))
    assert _fidelity_settings(config) == ("foreground", 4, "dtype", 0.0)
    assert build_algorithm(config).opt["contrast"] == "exact"
    # compare hands its settings to every run, as ``fedbcs train`` would take them.
    settings = config_from_args(parse(["compare", "--out", "cmp", *FIDELITY_FLAGS]))
    assert run_config(settings, "fedbcs/contrast=exact", 0) == config


@pytest.mark.e2e
def test_eval_scores_at_the_eval_batch_size_given(tmp_path, capsys, eval_batch_sizes):
    run = tmp_path / "run"
    assert main(["train", *tiny_argv("fedavg", rounds=1), "--quiet", "--out", str(run)]) == 0
    seen = eval_batch_sizes
    assert main(["eval", "--checkpoint", str(run / "model.safetensors")]) == 0
    assert set(seen) == {16}  # the run's config.json
    seen.clear()
    checkpoint = str(run / "model.safetensors")
    assert main(["eval", "--checkpoint", checkpoint, "--eval-batch-size", "2"]) == 0
    assert set(seen) == {2}


def test_train_help_shows_every_run_setting_with_its_help(capsys):
    from fedbcs_fl.config import RUN_SETTINGS

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name, declared in RUN_SETTINGS.items():
        flag = "--" + name.replace("_", "-")
        assert (flag in text) == declared.cli, name
        if declared.cli:
            assert " ".join(declared.describe().split()) in text, name


# Libraries that take long to import (torch alone 2.5–3 s here); no ``--help`` waits for
# them (issue 18): the parser is built from declarations that import none of them.
HEAVY_LIBRARIES = (
    "torch",
    "numpy",
    "monai",
    "segmentation_models_pytorch",
    "timm",
    "torchvision",
    "finch",
    "sklearn",
    "flwr",
    "matplotlib",
    "tensorboard",
)


def _commands() -> list[str]:
    (commands,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(commands.choices)


@pytest.mark.parametrize(
    "argv", [["--help"], *([command, "--help"] for command in _commands())], ids=" ".join
)
def test_help_loads_no_heavy_library(argv):
    # The script goes in on stdin: no command runs, only the import and the parser.
    script = (
        "import sys\n"
        "from fedbcs_fl._entry import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted(set({HEAVY_LIBRARIES!r}) & set(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "[]"


def test_compare_and_calibrate_take_the_shared_settings_but_not_a_seed(capsys):
    parse = build_parser().parse_args
    settings = config_from_args(parse(["compare", "--out", "cmp", "--screen-norm-factor", "0"]))
    assert settings.screen_norm_factor == 0  # every shared setting reaches the runs
    for command in (["compare", "--out", "cmp"], ["calibrate-data"]):
        with pytest.raises(SystemExit):
            parse([*command, "--seed", "3"])
        assert "give --seeds N, not --seed" in capsys.readouterr().err
