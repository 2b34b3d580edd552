"""Method options are checked by name when an algorithm is built."""

import math

import pytest

from fedbcs_fl.algorithms import all_algorithms, build_algorithm
from fedbcs_fl.algorithms.base import check_option, option_range
from fedbcs_fl.config import RunConfig


def test_every_option_of_every_method_has_a_rule_its_default_meets():
    for cls in all_algorithms().values():
        for name, default in cls.options.items():
            if default is None or isinstance(default, bool | str):
                continue
            option_range(name)  # raises for an option nobody gave a range
            check_option(name, default)


@pytest.mark.parametrize(
    "name, good, bad",
    [
        ("tau", [1e-6, 5.0], [0.0, -0.1, math.inf, math.nan]),
        ("mu", [0.0, 2.0], [-1e-9, math.nan]),
        ("lambda_consis", [0.0, 1.0], [-1.0, math.inf]),
        ("amplitude_ratio", [0.0, 0.49], [0.5, -0.01]),
        ("amplitude_momentum", [0.0, 1.0], [1.01]),
        ("proto_dim", [1, 256], [0]),
        ("uniformity_samples", [2], [1]),
        ("fsr_gate", ["static", "adaptive"], ["dynamic"]),
    ],
)
def test_interval_ends(name, good, bad):
    for value in good:
        check_option(name, value)
    for value in bad:
        with pytest.raises(ValueError, match=name):
            check_option(name, value)


def test_bad_option_stops_the_build():
    config = RunConfig(method="moon", method_options={"tau": -0.5}).resolved()
    with pytest.raises(ValueError, match=r"tau must be in \(0, inf\); got -0.5"):
        build_algorithm(config)


def test_option_help_explains_declared_options_and_reaches_train_help(capsys):
    from fedbcs_fl.cli import build_parser

    for cls in all_algorithms().values():
        assert set(cls.option_help) <= set(cls.options), cls.name
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for phrase in (
        "--lambda-proto LAMBDA_PROTO fedproto: weight of the class-balanced",
        "--lambda-variance LAMBDA_VARIANCE feduv: weight of the prediction-variance hinge "
        "(default 2.5)",
        "--amplitude-ratio AMPLITUDE_RATIO harmofl: half-side of the swapped low-frequency",
    ):
        assert phrase in text
