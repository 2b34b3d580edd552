"""Which round a table reports (the final one by default, the best one beside it), and a
column per class where a run segments several foreground classes."""

import pytest

from fedbcs_fl.config import RunConfig
from fedbcs_fl.results import (
    BEST_ROUND_CAPTION,
    CLASS_NOTE,
    FINAL_ROUND_CAPTION,
    best_round,
    final_round,
    summary_tables,
    table1,
    verdict,
)
from fedbcs_fl.run_folder import write_run_summary, write_summary


def _record(round_index, dice=None):
    record = {"round": round_index}
    if dice is not None:
        record["dice"] = dict(zip("AB", dice, strict=True))
    return record


# Rounds 2 and 3 tie for the best mean (0.7); round 4 is evaluated last; 5 is not evaluated.
RUN = [
    _record(1, (0.1, 0.3)),
    _record(2, (0.6, 0.8)),
    _record(3, (0.8, 0.6)),
    _record(4, (0.5, 0.5)),
    _record(5),
]


def test_final_round_is_the_last_evaluated_and_best_the_earliest_highest_mean():
    assert final_round(RUN)["round"] == 4
    assert best_round(RUN)["round"] == 2
    with pytest.raises(ValueError, match="no evaluated round"):
        best_round([_record(1)])


def test_summary_shows_the_final_round_then_the_best_with_their_captions(tmp_path):
    baseline = [_record(1, (0.5, 0.7)), _record(2, (0.4, 0.4))]
    runs = [("fedavg (baseline)", baseline), ("fedbcs", RUN)]
    text = summary_tables(runs, "fedavg (baseline)")
    final, best = text.split(BEST_ROUND_CAPTION)
    assert final.startswith(verdict(runs, "fedavg (baseline)") + "\n" + FINAL_ROUND_CAPTION)
    assert "| Method | A | B | AVG | Δ | Round |" in final
    assert "| fedavg (baseline) | 40.00 | 40.00 | 40.00 | - | 2 |" in final
    assert "| fedbcs | 50.00 | 50.00 | 50.00 | +10.00 | 4 |" in final
    assert "| fedavg (baseline) | 50.00 | 70.00 | 60.00 | - | 1 |" in best
    assert "| fedbcs | 60.00 | 80.00 | 70.00 | +10.00 | 2 |" in best
    assert "chosen on the test split, as the released code logs" in BEST_ROUND_CAPTION
    path = tmp_path / "summary.md"
    assert write_summary(path, "fedbcs on X", "2 rounds.", runs, "fedavg (baseline)") == text
    assert path.read_text() == f"# fedbcs on X\n\n2 rounds.\n\n{text}"


def test_the_verdict_says_plainly_which_run_ends_ahead_whatever_the_sign():
    baseline = [_record(1, (0.5, 0.7)), _record(2, (0.4, 0.6))]
    better = [_record(2, (0.45, 0.58))]
    worse = [_record(2, (0.41, 0.5))]
    runs = [("fedavg", baseline), ("fedbcs", better), ("other", worse)]
    first, second = verdict(runs, "fedavg").strip().split("\n\n")
    assert first.startswith("**fedbcs ends 1.50 points above fedavg** (final-round mean Dice")
    assert "51.50 vs 50.00), ahead on 1 of 2 sites." in first
    assert second.startswith("**other ends 4.50 points below fedavg**")
    assert "ahead on 1 of 2 sites" in second
    level = verdict([("a", baseline), ("b", baseline)], "a")
    assert "level with a" in level and "ahead on 0 of 2 sites" in level
    assert summary_tables(runs).startswith(FINAL_ROUND_CAPTION)  # no baseline, no verdict


def test_compare_table1_at_the_final_or_each_seeds_best_round():
    other_seed = [_record(1, (0.9, 0.9)), _record(2, (0.3, 0.5))]
    results = {"fedbcs": [RUN, other_seed]}
    final = table1(results, ["A", "B"]).splitlines()
    assert final[2] == "| fedbcs | 40.00 ± 10.00 | 50.00 ± 0.00 | 45.00 ± 5.00 | - |"
    best = table1(results, ["A", "B"], pick=best_round).splitlines()
    assert best[2] == "| fedbcs | 75.00 ± 15.00 | 85.00 ± 5.00 | 80.00 ± 10.00 | - |"


def _surface_record(round_index, dice, hd95):
    record = _record(round_index, dice)
    record["mean_dice"] = sum(dice) / len(dice)
    record["hd95"] = dict(zip("AB", hd95, strict=True))
    return record


def test_surface_tables_mark_the_lowest_distance_best_and_skip_nan():
    runs = {
        "near": [[_surface_record(1, (0.5, 0.5), (2.0, float("nan")))]],
        "far": [[_surface_record(1, (0.5, 0.5), (9.0, 5.0))]],
    }
    text = table1(runs, ["A", "B"], baseline="far", metric="hd95")
    assert "| near | **2.00 ± 0.00** | nan | **2.00 ± 0.00** | -5.00 |" in text
    assert "| far | <u>9.00 ± 0.00</u> | **5.00 ± 0.00** | <u>7.00 ± 0.00</u> | - |" in text


def test_the_run_summary_holds_every_metric_with_its_delta_the_settings_and_communication(
    tmp_path,
):
    from fedbcs_fl.config import RunConfig
    from fedbcs_fl.run_folder import append_record, write_config, write_run_summary

    base, run = tmp_path / "fedavg", tmp_path / "fedbcs"
    for folder, method, dice, hd in ((base, "fedavg", 0.4, 8.0), (run, "fedbcs", 0.6, 3.0)):
        write_config(folder, RunConfig(method=method).resolved())
        record = _surface_record(1, (dice, dice), (hd, hd))
        record["assd"] = {"A": hd / 2, "B": hd / 2}
        record.update(seconds=61.0, bytes_up={"A": 2e6, "B": 2e6}, bytes_down=1e6)
        append_record(folder, record)
    config = RunConfig(method="fedbcs", rounds=1).resolved()
    text = write_run_summary(run, config, [record], baseline=base)
    summary = (run / "summary.md").read_text()
    assert text in summary
    final = text.split(BEST_ROUND_CAPTION)[0]
    assert "| fedbcs | 60.00 | 60.00 | 60.00 | +20.00 | 1 |" in final
    assert "HD95 (px)" in final and "| fedbcs | 3.00 | 3.00 | 3.00 | -5.00 | 1 |" in final
    assert "ASSD (px)" in final and "| fedbcs | 1.50 | 1.50 | 1.50 | -2.50 | 1 |" in final
    assert "Wall time 1 min 1 s" in summary
    assert "1 rounds of 1 local epoch(s), seed 0, adam lr" in summary
    assert "2.000 MB up per client, 1.000 MB down per client" in summary


def test_a_run_with_distances_on_its_last_round_only_is_read_as_it_is(tmp_path, monkeypatch):
    from fedbcs_fl import results
    from fedbcs_fl.run_folder import TENSORBOARD_DIR, append_record, scalars, write_config

    # Round 1 is the best and has Dice alone; round 2, the last, also has the distances.
    run = [_record(1, (0.9, 0.9)), _surface_record(2, (0.5, 0.5), (3.0, 5.0))]
    run[0]["mean_dice"] = 0.9
    final, best = summary_tables([("fedbcs", run)]).split(BEST_ROUND_CAPTION)
    assert "HD95 (px)\n\n| Method | A | B | AVG | Round |" in final
    assert "| fedbcs | 3.00 | 5.00 | 4.00 | 2 |" in final
    assert f"HD95 (px): {results.NOT_COMPUTED}" in best and "| fedbcs | 90.00" in best
    assert "nan" not in best
    assert not any(tag.startswith("hd95/") for tag in scalars(run[0]))
    assert scalars(run[1])["hd95/B"] == 5.0
    drawn = {}
    monkeypatch.setattr(results, "line_plot", lambda curves, *a, **k: drawn.update(c=curves))
    results.plot_dice(run)
    assert drawn["c"][-1][2] == pytest.approx([90.0, 50.0])
    write_config(tmp_path, RunConfig(rounds=2).resolved())
    for record in run:
        append_record(tmp_path, record)
    assert (tmp_path / TENSORBOARD_DIR).is_dir()


def test_the_dice_plot_draws_the_baselines_mean_beside_the_runs(monkeypatch):
    from fedbcs_fl import results

    drawn = {}
    monkeypatch.setattr(results, "line_plot", lambda curves, *a, **k: drawn.update(c=curves))
    run = [_surface_record(1, (0.5, 0.7), (1, 1)), _surface_record(2, (0.6, 0.8), (1, 1))]
    base = [_surface_record(1, (0.2, 0.4), (1, 1)), _surface_record(2, (0.3, 0.5), (1, 1))]
    results.plot_dice(run, baseline=("fedavg (baseline)", base))
    labels = [curve[0] for curve in drawn["c"]]
    assert labels == ["A", "B", "mean", "fedavg (baseline) mean"]
    assert drawn["c"][-1][1] == [1, 2] and drawn["c"][-1][2] == pytest.approx([30.0, 40.0])
    assert drawn["c"][0][3]["alpha"] < 0.5  # sites in light lines


def _three_class_record(round_index, per_site):
    """An evaluated record of two sites and two foreground classes: ``per_site`` gives each
    site's (class 1, class 2) Dice; each site's Dice is their mean, as the metrics give."""
    by_site = {s: {"1": d1, "2": d2} for s, (d1, d2) in zip("AB", per_site, strict=True)}
    dice = {s: (d1 + d2) / 2 for s, (d1, d2) in zip("AB", per_site, strict=True)}
    mean = sum(dice.values()) / len(dice)
    return {"round": round_index, "dice": dice, "mean_dice": mean, "dice_per_class": by_site}


def test_tables_add_a_column_per_class_where_there_are_several(tmp_path):
    run = [_three_class_record(1, ((0.8, 0.4), (0.6, 0.2)))]
    table = table1({"fedbcs": [run]}, ["A", "B"], baseline=None, spread=False)
    # class 1 averages 0.8 and 0.6 over the sites, class 2 0.4 and 0.2.
    assert "| Method | A | B | AVG | class 1 | class 2 |" in table
    assert "| fedbcs | 60.00 | 40.00 | 50.00 | 70.00 | 30.00 |" in table
    binary = table1({"fedbcs": [RUN]}, ["A", "B"], baseline=None, spread=False)
    assert "class" not in binary
    config = RunConfig(dataset="synthetic-prostate-zones", rounds=1).resolved()
    write_run_summary(tmp_path, config, run)
    summary = (tmp_path / "summary.md").read_text()
    assert (
        CLASS_NOTE in summary
        and "| fedbcs | 60.00 | 40.00 | 50.00 | 70.00 | 30.00 | 1 |" in summary
    )
