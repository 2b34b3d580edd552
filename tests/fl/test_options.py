"""Method options: declared once per method (default, help, what it may be), checked when
an algorithm is built, and shown by method in ``fedbcs train --help``."""

import math

import pytest

from fedbcs_fl.algorithms import METHODS, algorithm_class, all_algorithms, build_algorithm
from fedbcs_fl.config import RunConfig


def test_each_class_checks_the_options_its_method_declares():
    # ``fedbcs train --help`` reads METHODS, without importing the classes (issue 18).
    for method, cls in all_algorithms().items():
        assert cls.name == method and cls.options is METHODS[method].options, method


def test_every_option_of_every_method_has_help_and_a_type_its_name_keeps():
    types = {}
    for method, cls in all_algorithms().items():
        for name, option in cls.options.items():
            assert option.help.strip(), f"{method} option {name} has no help"
            # One command-line flag (--tau) serves every method that has the name.
            assert types.setdefault(name, option.type) is option.type, (method, name)


@pytest.mark.parametrize(
    "method, name, good, bad",
    [
        ("fedbcs", "tau", [1e-6, 5.0], [0.0, -0.1, math.inf, math.nan]),
        ("moon", "tau", [0.5], [0.0]),
        ("fedprox", "mu", [0.0, 2.0, 1], [-1e-9, math.nan, "1", True]),
        ("fedbcs", "lambda_consis", [0.0, 1.0], [-1.0, math.inf]),
        ("harmofl", "amplitude_ratio", [0.0, 0.49], [0.5, -0.01]),
        ("harmofl", "amplitude_momentum", [0.0, 1.0], [1.01]),
        ("fedbcs", "proto_dim", [1, 256], [0, 2.0]),
        ("feduv", "uniformity_samples", [2], [1]),
        ("fedbcs", "fsr_gate", ["static", "adaptive"], ["dynamic"]),
        ("fedbcs", "fsr", [True, False], [1, "no"]),
    ],
)
def test_interval_ends_choices_and_types(method, name, good, bad):
    option = algorithm_class(method).options[name]
    for value in good:
        assert option.check(value) == value
    for value in bad:
        with pytest.raises(ValueError, match="must be"):
            option.check(value)


def test_an_integer_for_a_number_is_a_float():
    assert algorithm_class("fedprox").options["mu"].check(1) == 1.0
    assert isinstance(build_algorithm(RunConfig(method="harmofl")).opt["alpha"], float)


@pytest.mark.parametrize(
    "method, options, message",
    [
        ("moon", {"tau": -0.5}, r"moon option tau must be in \(0, inf\); got -0.5"),
        ("fedbcs", {"fusion": "sideways"}, "fedbcs option fusion must be one of deepest, adj"),
        ("fedplvm", {"tau": "cold"}, "fedplvm option tau must be a number; got 'cold'"),
        ("fedavg", {"tau": 0.1}, "fedavg has no option tau; valid: none"),
    ],
)
def test_a_bad_option_stops_the_build_naming_option_and_method(method, options, message):
    with pytest.raises(ValueError, match=message):
        build_algorithm(RunConfig(method=method, method_options=options).resolved())


def test_train_help_shows_each_methods_options_in_its_group(capsys):
    from fedbcs_fl.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    methods = [m for m, cls in all_algorithms().items() if cls.options]
    starts = sorted((text.index(f"{m} options (with --method {m}):"), m) for m in methods)
    ends = [*(start for start, _ in starts[1:]), len(text)]
    for (start, method), end in zip(starts, ends, strict=True):
        for name, option in algorithm_class(method).options.items():
            # In its method's group: this method's help, default and rules.
            assert " ".join(option.describe().split()) in text[start:end], (method, name)
    assert "fedavg options" not in text
    for phrase in (
        "--tau TAU temperature of the model-contrastive term (default: 0.5; in (0, inf))",
        "--mu MU μ, weight of the proximal term",
        "--no-fsr FSR after encoder stages 2–4",
        "--fusion {deepest,adjacent} embedding fusion",
    ):
        assert phrase in text
