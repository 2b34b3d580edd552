"""``local_train``: a round's scratch is dropped and the persistent state checked for what a
checkpoint can hold, however the round ends."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedbcs_fl.checkpoint import load_checkpoint, save_checkpoint, unloadable_entry
from fedbcs_fl.client import local_train

from .._tiny import tiny_algorithm

LOADABLE = {
    "weights": {"w": torch.ones(2), "b": nn.Parameter(torch.zeros(1))},
    "rows": [(torch.arange(3), 2), (torch.ones(1), 0.5)],
    "scalars": [True, 3, 2.5, "text", None],
    7: "an int key",
}


def test_what_a_checkpoint_holds_comes_back(tmp_path):
    assert unloadable_entry(LOADABLE, "state") is None
    save_checkpoint(tmp_path / "c.pt", {"state": LOADABLE})
    back = load_checkpoint(tmp_path / "c.pt")["state"]  # weights_only
    assert back["rows"][0][0].equal(torch.arange(3)) and back["scalars"] == LOADABLE["scalars"]


@pytest.mark.parametrize(
    "value, entry, torch_refuses",
    [
        ({"model": nn.Linear(2, 1)}, "state['model'], a Linear", True),
        ({"draws": [1, torch.Generator()]}, "state['draws'][1], a Generator", True),
        ({"mean": np.float64(0.5)}, "state['mean'], a float64", True),
        ({"pairs": {(0, 1): torch.ones(1)}}, "state['pairs'][(0, 1)], a key of type tuple", False),
    ],
)
def test_what_a_checkpoint_cannot_hold_is_named(tmp_path, value, entry, torch_refuses):
    assert unloadable_entry(value, "state") == entry
    save_checkpoint(tmp_path / "c.pt", {"state": value})
    if torch_refuses:  # a tuple key loads here, but Flower's node state cannot keep it
        with pytest.raises(ValueError, match="not a readable fedbcs checkpoint"):
            load_checkpoint(tmp_path / "c.pt")


class Fails(Exception):
    pass


def _round(fail_at_step: int | None, park_in_state: bool):
    """One local round of a FedAvg that puts a model into its scratch (or, misused, into
    its persistent state) and raises at ``fail_at_step``; returns the scratch it used."""
    method = tiny_algorithm("fedavg")
    used = {}

    def begin_local(model, ctx):
        used["scratch"] = ctx.scratch
        ctx.scratch["frozen"] = nn.Linear(2, 1)
        if park_in_state:
            ctx.state["frozen"] = ctx.scratch["frozen"]

    def training_loss(model, images, masks, ctx):
        if ctx.steps_done + 1 == fail_at_step:
            raise Fails
        return method.segmentation_loss(model(images), masks)

    method.begin_local, method.training_loss = begin_local, training_loss
    model = nn.Conv2d(3, 2, kernel_size=1)
    images, masks = torch.rand(4, 3, 8, 8), (torch.rand(4, 8, 8) > 0.5).long()
    loader = DataLoader(TensorDataset(images, masks), batch_size=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    args = (method, model, optimizer, loader, {}, {}, 1, torch.device("cpu"))
    return used, args


@pytest.mark.parametrize("fail_at_step", [None, 2])
def test_the_scratch_is_dropped_however_the_round_ends(fail_at_step):
    used, args = _round(fail_at_step, park_in_state=False)
    if fail_at_step is None:
        assert local_train(*args).metrics["steps"] == 2
    else:
        with pytest.raises(Fails):
            local_train(*args)
    assert used["scratch"] == {}


@pytest.mark.parametrize("fail_at_step", [None, 2])
def test_state_a_checkpoint_cannot_hold_is_named_however_the_round_ends(fail_at_step):
    used, args = _round(fail_at_step, park_in_state=True)
    message = r"fedavg keeps state\['frozen'\], a Linear, .*: keep this round's objects in"
    with pytest.raises(TypeError, match=message) as raised:
        local_train(*args)
    assert isinstance(raised.value.__context__, Fails) == (fail_at_step is not None)
    assert used["scratch"] == {}
