"""RunConfig: dataset-resolved defaults, and config.json files written by older versions."""

import dataclasses
import json

import pytest
import torch

from fedbcs_fl.client import make_optimizer
from fedbcs_fl.config import RunConfig


def test_sgd_momentum_is_the_datasets_and_zero_for_nuclei_as_released():
    nuclei = RunConfig(dataset="nuclei").resolved()
    assert (nuclei.optimizer, nuclei.lr, nuclei.momentum) == ("sgd", 1e-2, 0.0)
    optimizer = make_optimizer(torch.nn.Linear(2, 2), nuclei)
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["momentum"] == 0.0
    for dataset in ("prostate", "synthetic-nuclei", "synthetic-prostate"):
        assert RunConfig(dataset=dataset).resolved().momentum == 0.9
    assert RunConfig(dataset="nuclei", momentum=0.5).resolved().momentum == 0.5


def _written_before_fidelity(config: RunConfig) -> str:
    """``config``'s config.json without the settings added to follow the released code."""
    data = json.loads(config.to_json())
    for name in ("dice_loss_classes", "eval_batch_size", "nuclei_intensity"):
        del data[name]
    return json.dumps(data)


def test_a_config_json_from_before_the_fidelity_settings_loads_as_it_ran():
    current = RunConfig(method="fedbcs", batch_size=4).resolved()
    loaded = RunConfig.from_json(_written_before_fidelity(current))
    assert loaded.dice_loss_classes == "foreground"
    assert loaded.nuclei_intensity == "dtype"
    assert loaded.eval_batch_size == 4  # it evaluated at its training batch size
    assert loaded.method_options == {"contrast": "exact"}
    unchanged = dataclasses.replace(
        loaded, dice_loss_classes="all", nuclei_intensity="minmax", eval_batch_size=16
    )
    assert unchanged == dataclasses.replace(current, method_options={"contrast": "exact"})
    # A current config.json loads as written; other methods get no FedBCS option.
    assert RunConfig.from_json(current.to_json()) == current
    fedavg = RunConfig.from_json(_written_before_fidelity(RunConfig(method="fedavg")))
    assert (fedavg.dice_loss_classes, fedavg.method_options) == ("foreground", {})


def test_a_config_json_from_before_the_baseline_fixes_loads_with_the_old_defaults():
    def written_before(config: RunConfig) -> str:
        data = json.loads(config.to_json())
        del data["method_defaults_version"]
        return json.dumps(data)

    old = {
        "feduv": {
            "variance_target": "balanced",
            "uniformity_sigma": "detached",
            "uniformity_level": "pixel",
        },
        "harmofl": {"amplitude_ratio": 0.1},
        "fedplvm": {"lambda_plvm": 1.0, "prototype_pass": "last-epoch"},
    }
    for method, options in old.items():
        current = RunConfig(method=method).resolved()
        loaded = RunConfig.from_json(written_before(current))
        assert loaded == dataclasses.replace(current, method_options=options)
        assert RunConfig.from_json(current.to_json()) == current
    # Options the run set are kept.
    chosen = RunConfig(method="harmofl", method_options={"alpha": 0.0, "amplitude_ratio": 0.2})
    assert RunConfig.from_json(written_before(chosen)).method_options == {
        "alpha": 0.0,
        "amplitude_ratio": 0.2,
    }
    for method in ("fedavg", "fedproto", "fedcontrast"):  # nothing of theirs changed
        current = RunConfig(method=method).resolved()
        assert RunConfig.from_json(written_before(current)) == current


def test_a_config_json_of_method_defaults_version_2_loads_with_its_defaults():
    current = RunConfig(method="feduv").resolved()
    data = json.loads(current.to_json())
    data["method_defaults_version"] = 2  # written before FedUV's image-level uniformity
    assert RunConfig.from_json(json.dumps(data)) == dataclasses.replace(
        current, method_options={"uniformity_level": "pixel"}
    )
    data["method_options"] = {"uniformity_level": "image"}  # what the run set is kept
    assert RunConfig.from_json(json.dumps(data)) == dataclasses.replace(
        current, method_options={"uniformity_level": "image"}
    )
    harmofl = json.loads(RunConfig(method="harmofl").resolved().to_json())
    harmofl["method_defaults_version"] = 2  # its defaults changed before version 2 only
    assert RunConfig.from_json(json.dumps(harmofl)).method_options == {}


# ---- config files: fedbcs train --config ----------------------------------------------


def _parse(*argv):
    from fedbcs_fl.cli import build_parser

    return build_parser().parse_args(list(argv))


def test_train_runs_a_saved_config_json_with_the_flags_given_over_it(tmp_path):
    from fedbcs_fl.cli import config_from_args

    saved = RunConfig(method="fedbcs", rounds=7, batch_size=4, method_options={"tau": 0.2})
    path = tmp_path / "config.json"
    path.write_text(saved.resolved().to_json())
    assert config_from_args(_parse("train", "--config", str(path))) == saved.resolved()
    changed = config_from_args(_parse("train", "--config", str(path), "--rounds", "3", "--no-fsr"))
    assert (
        changed
        == dataclasses.replace(
            saved, rounds=3, method_options={"tau": 0.2, "fsr": False}
        ).resolved()
    )
    # Another method: the file's method options were its method's, so they are left out.
    other = config_from_args(_parse("train", "--config", str(path), "--method", "moon"))
    assert (other.method, other.method_options, other.batch_size) == ("moon", {}, 4)


def test_train_runs_a_toml_config_of_some_fields(tmp_path):
    from fedbcs_fl.cli import config_from_args

    path = tmp_path / "run.toml"
    path.write_text(
        'method = "moon"\nrounds = 5\nlr = 1\nsites = ["site-A", "site-B"]\n\n'
        "[method_options]\ntau = 0.3\n"
    )
    config = config_from_args(_parse("train", "--config", str(path), "--seed", "2"))
    # The fields the file leaves out take today's defaults, not a legacy file's.
    want = RunConfig(
        method="moon", rounds=5, lr=1.0, sites=["site-A", "site-B"], seed=2,
        method_options={"tau": 0.3},
    )  # fmt: skip
    assert config == want.resolved()
    assert isinstance(config.lr, float)


@pytest.mark.parametrize(
    "text, message",
    [
        ("rounds = 3\nbatch-size = 4\n", "unknown fields: batch-size; valid: method,"),
        ("rounds = 0\n", r"run.toml: rounds must be in \[1, inf\); got 0"),
        ('dataset = "mnist"\n', "run.toml: dataset must be one of synthetic-nuclei,"),
        ('lr = "fast"\n', "run.toml: lr must be a number; got 'fast'"),
        ("version = 7\n", "run.toml was written by config version 7"),
        ("method_options = 3\n", "run.toml: method_options must be a table"),
        ("rounds = \n", "run.toml is not valid toml"),
    ],
)
def test_a_bad_config_file_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        RunConfig.load(path)


def test_resume_takes_no_config_file(tmp_path, capsys):
    from fedbcs_fl.cli import main

    args = ["train", "--resume", str(tmp_path), "--config", str(tmp_path / "c.json")]
    assert main(args) == 2
    assert "--resume continues a run with its own config.json" in capsys.readouterr().err


@pytest.mark.parametrize("version", [4, 0, "2", 2.0, None])
def test_a_method_defaults_version_this_fedbcs_does_not_know_is_an_error(version):
    data = json.loads(RunConfig(method="feduv").resolved().to_json())
    data["method_defaults_version"] = version
    with pytest.raises(ValueError, match=r"method_defaults_version .* reads 1 to 3"):
        RunConfig.from_json(json.dumps(data), source="run/config.json")


def test_a_config_without_version_gets_the_method_defaults_it_names():
    config = RunConfig.from_dict({"method": "feduv", "method_defaults_version": 2})
    assert config.method_options == {"uniformity_level": "pixel"}
    assert config.method_defaults_version == 3
