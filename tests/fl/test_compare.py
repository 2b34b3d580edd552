"""``fedbcs compare``: method specs, the tables on hand-made records, resuming, the plot."""

import json

import pytest

from fedbcs_fl.algorithms import METHODS
from fedbcs_fl.cli import main
from fedbcs_fl.compare import (
    RUN_CONFIG_FILE,
    _curve_style,
    expand_methods,
    parse_spec,
    run_dir,
    table3,
)
from fedbcs_fl.config import RunConfig
from fedbcs_fl.results import BEST_ROUND_CAPTION, FINAL_ROUND_CAPTION, table1
from fedbcs_fl.run_folder import read_config

from .._tiny import tiny_argv


def test_parse_spec_turns_changes_into_method_options():
    assert parse_spec("fedbcs") == ("fedbcs", {})
    assert parse_spec("fedbcs/no-fsr/tau=0.1") == ("fedbcs", {"fsr": False, "tau": 0.1})
    assert parse_spec("moon/proj_dim=64") == ("moon", {"proj_dim": 64})


@pytest.mark.parametrize(
    "spec, message",
    [
        ("fedavgg", "valid: fedavg"),
        ("fedbcs/fsr", "use no-X or X=V"),
        ("fedbcs/tua=0.1", "fedbcs has no option tua; valid: cdpa, contrast, fsr,"),
        ("fedbcs/tau=-1", "fedbcs option tau must be in \\(0, inf\\); got -1.0"),
        ("fedbcs/tau=cold", "tau must be a number; got 'cold'"),
        ("fedbcs/fsr=0", "write fsr as no-fsr"),
        ("fedbcs/no-tau", "write tau as tau=VALUE"),
        ("fedbcs/fusion=sideways", "fusion must be one of deepest, adjacent"),
        ("moon/proj_dim=0.5", "proj_dim must be an integer; got '0.5'"),
    ],
)
def test_parse_spec_names_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_spec(spec)


def test_expand_methods_keeps_table_order_and_drops_repeats():
    assert expand_methods("all") == list(METHODS)
    assert expand_methods("fedbcs, all ,fedbcs/no-fsr,fedbcs") == [
        "fedbcs",
        *[m for m in METHODS if m != "fedbcs"],
        "fedbcs/no-fsr",
    ]


def _record(round_index, dice=None, protos=None, up=None, down=0):
    record = {"round": round_index, "bytes_down": down}
    record["prototypes_uploaded"] = protos or {"A": 0, "B": 0}
    record["bytes_up"] = up or {"A": 0, "B": 0}
    if dice is not None:
        record["dice"] = dict(zip("AB", dice, strict=True))
    return record


def _seed(final_dice):
    # An earlier evaluation and a later round without one: only the last Dice counts.
    return [_record(1, dice=(0.1, 0.1)), _record(2, dice=final_dice), _record(3)]


def test_table1_means_stds_marks_and_delta():
    results = {
        "fedavg": [_seed((0.9, 0.8)), _seed((0.8, 0.8))],
        "fedbcs": [_seed((0.7, 0.9)), _seed((0.7, 0.9))],
        "fedprox": [_seed((0.6, 0.7)), _seed((0.6, 0.7))],
    }
    rows = table1(results, ["A", "B"]).splitlines()
    assert rows[0] == "| Method | A | B | AVG | Δ |"
    # Per seed, AVG is the mean over sites; then mean ± population std over seeds.
    assert rows[2] == "| fedavg | **85.00 ± 5.00** | <u>80.00 ± 0.00</u> | **82.50 ± 2.50** | - |"
    assert (
        rows[3]
        == "| fedbcs | <u>70.00 ± 0.00</u> | **90.00 ± 0.00** | <u>80.00 ± 0.00</u> | -2.50 |"
    )
    assert rows[4] == "| fedprox | 60.00 ± 0.00 | 70.00 ± 0.00 | 65.00 ± 0.00 | -17.50 |"


def test_table1_without_the_baseline_has_no_delta():
    rows = table1({"fedbcs": [_seed((0.7, 0.9))]}, ["A", "B"]).splitlines()
    assert rows[2].endswith("| 80.00 ± 0.00 | - |")


def test_table3_averages_over_clients_rounds_and_seeds():
    seed = [
        _record(1, protos={"A": 4, "B": 2}, up={"A": 2_000_000, "B": 4_000_000}, down=1_000_000),
        _record(2, protos={"A": 4, "B": 0}, up={"A": 2_000_000, "B": 0}, down=3_000_000),
    ]
    rows = table3({"fedbcs": [seed, seed]}).splitlines()
    assert rows[2] == "| fedbcs | 2.50 | 2.000 | 2.000 |"


def test_each_method_has_its_colour_and_variants_keep_it():
    colours = {_curve_style(m, None)["color"] for m in METHODS}
    assert len(colours) == len(METHODS)
    base = _curve_style("fedbcs", None)
    variants = [_curve_style("fedbcs", 0), _curve_style("fedbcs", 1)]
    assert all(v["color"] == base["color"] for v in variants)
    assert "linestyle" not in base
    assert variants[0]["linestyle"] != variants[1]["linestyle"]


RUN = [*tiny_argv(rounds=1), "--seeds", "1"]


@pytest.mark.e2e
def test_compare_writes_reports_and_resumes(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--methods", "fedavg,fedbcs/no-cdpa", *RUN, "--out", str(out)]) == 0
    assert {"table1.md", "table3.md", "convergence.png"} <= {p.name for p in out.iterdir()}
    table1_md = (out / "table1.md").read_text()
    assert "| fedbcs/no-cdpa |" in table1_md
    assert table1_md.index(FINAL_ROUND_CAPTION) < table1_md.index(BEST_ROUND_CAPTION)
    finished = {
        s: (run_dir(out, s, 0) / "model.safetensors").stat().st_mtime_ns
        for s in ("fedavg", "fedbcs/no-cdpa")
    }
    # Each run ran the config compare wrote for it: the spec's method and options.
    for spec in finished:
        asked = RunConfig.load(run_dir(out, spec, 0) / RUN_CONFIG_FILE)
        assert asked == read_config(run_dir(out, spec, 0))
        assert (asked.method, asked.rounds, asked.image_size) == (spec.split("/")[0], 1, 32)
    assert asked.method_options == {"cdpa": False}

    # An interrupted run: a folder without a model file, with a half-written log.
    broken = run_dir(out, "fedprox", 0)
    broken.mkdir(parents=True)
    (broken / "metrics.jsonl").write_text('{"round": 1, "dice"')

    methods = "fedavg,fedbcs/no-cdpa,fedprox"
    assert main(["compare", "--methods", methods, *RUN, "--out", str(out)]) == 0
    for spec, mtime in finished.items():  # finished runs are not run again
        assert (run_dir(out, spec, 0) / "model.safetensors").stat().st_mtime_ns == mtime
    lines = (broken / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1]  # run again from round 1
    assert "| fedprox |" in (out / "table1.md").read_text()
    assert "| fedprox |" in capsys.readouterr().out

    # A finished run made with other settings is never mixed in.
    changed = ["compare", "--methods", "fedavg", *RUN, "--eval-every", "2", "--out", str(out)]
    assert main(changed) == 2
    error = capsys.readouterr().err
    assert "holds a finished run with other settings (eval_every 1 ≠ 2)" in error


def test_compare_checks_every_spec_before_running_any(tmp_path, capsys):
    args = ["compare", "--methods", "fedavg,fedbcs/tau=-1", *RUN, "--out", str(tmp_path)]
    assert main(args) == 2
    assert "tau must be in (0, inf)" in capsys.readouterr().err
    assert not run_dir(tmp_path, "fedavg", 0).exists()


@pytest.mark.e2e
def test_compare_reports_a_failed_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FEDBCS_KILL_AT", "1:local")  # every run kills itself in round 1
    args = ["compare", "--methods", "fedavg", *RUN, "--out", str(tmp_path)]
    assert main(args) == 2
    assert "fedavg seed 0 failed" in capsys.readouterr().err
    assert not (run_dir(tmp_path, "fedavg", 0) / "model.safetensors").exists()
