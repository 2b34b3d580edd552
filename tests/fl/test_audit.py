"""The empirical privacy audit (fedbcs_fl/audit.py, ``fedbcs audit-privacy``): the bound
its counts prove, a canary found without DP, a bound within the accounted ε with it, and a
mechanism that adds less noise than it accounts for caught."""

import json
import math

import pytest

import fedbcs_fl.privacy
from fedbcs_fl.audit import audit_arm, audit_privacy, epsilon_lower_bound
from fedbcs_fl.cli import main
from tests._tiny import tiny_config, tiny_sites


def test_the_bound_of_a_perfect_test_and_of_a_useless_one():
    n, delta = 50, 1e-3
    # Clopper–Pearson at 95%: n hits of n have a rate above 0.025^(1/n), none below 1 − that.
    low = 0.025 ** (1 / n)
    expected = math.log((low - delta) / (1 - low))
    assert epsilon_lower_bound(n, n, 0, n, delta) == pytest.approx(expected, rel=1e-9)
    assert epsilon_lower_bound(n, n, 0, n, delta, confidence=0.5) > expected
    assert epsilon_lower_bound(25, n, 25, n, delta) == 0.0
    assert epsilon_lower_bound(0, n, n, n, delta) == 0.0  # fooled every time proves nothing
    # A test that misses the canary as rarely as it flags its absence proves the other bound.
    assert epsilon_lower_bound(n, n, 10, n, delta) > epsilon_lower_bound(n - 10, n, 10, n, delta)


@pytest.fixture(scope="module")
def site():
    return tiny_sites(1)[0]


def test_without_dp_the_canary_is_found_and_with_dp_the_bound_stays_below_epsilon(site):
    # The audit releases one round: of 30, the budget of 8 leaves it ε < 1.
    report = audit_privacy(tiny_config("fedproto", rounds=30), site, trials=200)
    off, on = report.arms
    assert (off.name, off.tpr, off.fpr) == ("off", 1.0, 0.0)
    assert off.epsilon_lower > 3.0 and off.accounted_epsilon == math.inf
    assert on.name == "on" and on.budget_epsilon == 8.0  # the audit's default budget
    assert 0 < on.accounted_epsilon < 1.0
    assert on.epsilon_lower <= on.accounted_epsilon


def test_the_audit_catches_a_mechanism_that_adds_less_noise_than_it_accounts_for(site, monkeypatch):
    config = tiny_config("fedproto", proto_dp_noise=2.0)
    honest = audit_arm("on", config, site, trials=200, confidence=0.95)
    assert honest.epsilon_lower <= honest.accounted_epsilon
    true_sensitivity = fedbcs_fl.privacy.l2_sensitivity
    monkeypatch.setattr(
        fedbcs_fl.privacy, "l2_sensitivity", lambda classes: 0.02 * true_sensitivity(classes)
    )
    cheating = audit_arm("on", config, site, trials=200, confidence=0.95)
    assert cheating.accounted_epsilon == honest.accounted_epsilon
    assert cheating.epsilon_lower > cheating.accounted_epsilon


def test_the_command_writes_its_report_and_refuses_a_method_without_prototypes(tmp_path, capsys):
    out = tmp_path / "audit"
    argv = ["audit-privacy", "--method", "fedproto", "--trials", "8", "--out", str(out)]
    assert main([*argv, "--proto-dp-noise", "3", "--n-train", "4"]) == 0
    report = json.loads((out / "audit.json").read_text())
    assert [arm["name"] for arm in report["arms"]] == ["off", "on"]
    assert report["arms"][1]["noise_multiplier"] == 3.0 and report["images"] == 6
    assert "| on | 3 |" in (out / "audit.md").read_text()
    assert main(["audit-privacy", "--method", "fedavg", "--out", str(out)]) == 2
    assert "fedavg sends no prototypes" in capsys.readouterr().err
