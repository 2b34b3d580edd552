"""End to end through the ``fedbcs`` command: files, reload, determinism, bad arguments."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from fedbcs_fl.algorithms import build_algorithm
from fedbcs_fl.cli import _common_argv, build_parser, config_from_args, main
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

    capsys.readouterr()
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
        (["train", "--method", "fedmagic"], "invalid choice: 'fedmagic' (choose from"),
        (["train", "--dataset", "mnist"], "invalid choice: 'mnist'"),
        (["train", "--rounds", "0"], "must be a positive integer"),
        (["train", "--method", "fedavg", "--tau", "0.1"], "fedavg has no option tau"),
        (["train", "--method", "fedbcs", "--tau", "-1"], "tau must be in (0, inf); got -1.0"),
        (["train", "--method", "fedprox", "--mu", "nan"], "mu must be in [0, inf); got nan"),
        (["train", "--method", "fedbcs", "--fusion", "sideways"], "fusion must be one of"),
        (["train", "--contrast", "capped"], "contrast must be one of released, exact"),
        (["train", "--dice-loss-classes", "background"], "invalid choice: 'background'"),
        (["train", "--nuclei-intensity", "unit"], "invalid choice: 'unit'"),
        (["train", "--dataset", "prostate"], "give --data-root"),
        (["train", "--aggregation", "mode"], "invalid choice: 'mode'"),
        (["train", "--stall-rounds", "0"], "must be a positive integer"),
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
    # compare hands its options to every run's ``fedbcs train``.
    passed = _common_argv(parse(["compare", "--out", "cmp", *FIDELITY_FLAGS]))
    assert _fidelity_settings(config_from_args(parse(["train", *passed]))) == (
        _fidelity_settings(config)
    )


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
