"""RunConfig: dataset-resolved defaults, and config.json files written by older versions."""

import dataclasses
import json

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
        "feduv": {"variance_target": "balanced", "uniformity_sigma": "detached"},
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
