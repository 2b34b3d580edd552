"""The Flower engine: records, run config, and real local deployments on loopback.

Real deployments (``fedbcs flower-local``) are shared by the end-to-end checks: clean
two-round runs of FedBCS (rounds, prototypes, processes, equality with the simulator) and
of MOON (equality with the simulator), and a FedBCS run where one SuperNode's ClientApp
raises (fault reporting). One more runs over TLS with authenticated SuperNodes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
from contextlib import suppress
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg
from flwr.supercore.task_identity import TaskIdentity
from safetensors.torch import load_file

from fedbcs_fl.algorithms import build_algorithm
from fedbcs_fl.algorithms.base import ClientUpdate
from fedbcs_fl.config import RunConfig
from fedbcs_fl.data import load_sites
from fedbcs_fl.flower import client_app, server_app
from fedbcs_fl.flower.local import flower_environment, free_port
from fedbcs_fl.flower.processes import DONE, alive, descendants, stop_processes, watch
from fedbcs_fl.flower.records import (
    CONFIG_KEY,
    PAYLOAD_KEY,
    SITE_KEY,
    WEIGHTS_KEY,
    restore,
    site_record,
    store,
    train_reply,
)
from fedbcs_fl.flower.secure import write_node_keys
from fedbcs_fl.flower.settings import (
    ENGINE_DEFAULTS,
    FLAT_FIELDS,
    JSON_KEYS,
    from_run_config,
    to_run_config,
)
from fedbcs_fl.flower.strategy import AlgorithmStrategy
from fedbcs_fl.round import FederationStalled, aggregate_round
from fedbcs_fl.run_folder import LOCK_FILE, read_config, read_records
from fedbcs_fl.screening import ScreeningPolicy
from fedbcs_fl.simulation import Simulation
from fedbcs_fl.weight_privacy import WeightPrivacy, weight_privacy
from fedbcs_models import UNet

from .._tiny import first_conv_and_head, round_one_replies, tiny_argv, tiny_config
from .test_secure import handshake

ROOT = Path(__file__).resolve().parents[2]


def flower_local(out: Path, method: str, *args: str) -> subprocess.CompletedProcess:
    """``fedbcs flower-local`` of the tiny run of ``method``, written to ``out``."""
    command = [sys.executable, "-m", "fedbcs_fl.cli", "flower-local", *tiny_argv(method)]
    return subprocess.run(
        [*command, "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=False,
    )


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ---- fast checks ---------------------------------------------------------------------------


def test_state_round_trip_keeps_tensors_generators_and_structure():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    generator = torch.Generator().manual_seed(7)
    torch.randn(3, generator=generator)
    value = {"opt": optimizer.state_dict(), "gen": generator, "x": [1, (2.5, None)], 3: "s"}
    state = RecordDict()
    store(state, "k", value)
    back = restore(state, "k")
    assert back["x"] == [1, (2.5, None)] and back[3] == "s"
    assert torch.equal(torch.randn(3, generator=back["gen"]), torch.randn(3, generator=generator))
    restored = torch.optim.Adam(model.parameters())
    restored.load_state_dict(back["opt"])
    for key, moments in optimizer.state_dict()["state"].items():
        for name, tensor in moments.items():
            assert torch.equal(restored.state_dict()["state"][key][name], tensor)
    assert restore(state, "missing") is None
    with pytest.raises(TypeError, match=r"k\['m'\]: a Linear"):
        store(state, "k", {"m": model})


def test_pyproject_run_config_is_the_one_the_settings_declare():
    """``[tool.flwr.app.config]``: the keys, defaults and value types that the RunConfig
    settings declared ``flower="key"`` (fedbcs_fl/config.py) and the engine settings give."""
    in_pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    engine = {key.replace("-", "_"): value for key, value in ENGINE_DEFAULTS.items()}
    derived = to_run_config(RunConfig(), **engine)
    assert set(in_pyproject["config"]) == set(derived)
    for key, value in derived.items():
        assert (key, in_pyproject["config"][key]) == (key, value)
        assert type(in_pyproject["config"][key]) is type(value), key
    assert set(derived) == (
        {name.replace("_", "-") for name in FLAT_FIELDS} | set(ENGINE_DEFAULTS) | set(JSON_KEYS)
    )
    assert from_run_config(in_pyproject["config"]) == RunConfig().resolved()
    with pytest.raises(ValueError, match="holds 'prostate' data"):
        from_run_config(in_pyproject["config"], {"dataset": "prostate"})


def test_run_config_round_trip_and_bad_values():
    config = RunConfig(
        method="fedbcs", image_size=32, sites=["site-A"], method_options={"proto_dim": 8}
    ).resolved()
    assert from_run_config(to_run_config(config, out_dir="/x")) == config
    extra = dataclasses.replace(config, client_timeout=5.0, inject_faults="site-A:nan@2")
    flat = to_run_config(extra)
    assert json.loads(flat["extra-config"]) == {
        "client_timeout": 5.0,
        "inject_faults": "site-A:nan@2",
        "data_version": config.data_version,
    }
    assert from_run_config(flat) == extra
    with pytest.raises(ValueError, match="Flower run config: rounds must be in"):
        from_run_config({**flat, "rounds": 0})
    with pytest.raises(ValueError, match="extra-config cannot set rounds; valid: checkpoint"):
        from_run_config({**flat, "extra-config": '{"rounds": 3}'})


def test_run_config_carries_the_robustness_settings():
    config = RunConfig(aggregation="krum", stall_rounds=5, screen_count_factor=2.0).resolved()
    flat = to_run_config(config)
    assert (flat["aggregation"], flat["stall-rounds"]) == ("krum", 5)
    assert json.loads(flat["extra-config"])["screen_count_factor"] == 2.0
    assert from_run_config(flat) == config


def test_run_config_carries_the_fidelity_settings_and_a_zero_momentum():
    config = RunConfig(
        dataset="synthetic-prostate",
        optimizer="sgd",
        momentum=0.0,
        eval_batch_size=4,
        dice_loss_classes="foreground",
        nuclei_intensity="dtype",
    ).resolved()
    flat = to_run_config(config)
    assert (flat["momentum"], flat["eval-batch-size"]) == (0.0, 4)
    assert (flat["dice-loss-classes"], flat["nuclei-intensity"]) == ("foreground", "dtype")
    assert from_run_config(flat) == config  # a momentum of 0 stays 0
    # "" leaves the momentum to the dataset: none for nuclei, as released.
    assert from_run_config({**flat, "momentum": ""}).momentum == 0.9
    assert from_run_config({**flat, "momentum": "", "dataset": "nuclei"}).momentum == 0.0


def _flower_task_identity(monkeypatch):
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def _client_context(config, partition: int, **node) -> Context:
    """The Context a SuperNode gives the ClientApp of ``partition`` in run 1; ``node``
    adds to its node config (e.g. ``{"data-root": ...}``)."""
    return Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": partition, **node},
        state=RecordDict(),
        run_config=to_run_config(config),
    )


def _evaluate_instruction(config: RunConfig, server_round: int) -> Message:
    """An evaluate instruction of ``server_round`` carrying a fresh model of ``config``."""
    model = build_algorithm(config).build_model()
    content = RecordDict(
        {
            "arrays": ArrayRecord(torch_state_dict=model.state_dict()),
            CONFIG_KEY: ConfigRecord({"server-round": server_round}),  # as FedAvg sends it
        }
    )
    return Message(content, dst_node_id=1, message_type="evaluate")


def test_the_client_app_evaluates_at_the_runs_eval_batch_size(monkeypatch, eval_batch_sizes):
    _flower_task_identity(monkeypatch)
    config = tiny_config("fedavg", eval_batch_size=2)
    context = _client_context(config, 0)
    seen = eval_batch_sizes
    reply = client_app.evaluate(_evaluate_instruction(config, 1), context)
    assert seen == [2] and reply.content["metrics"]["num-examples"] == 3


@pytest.mark.parametrize(
    "every, server_round, distances", [(None, 2, False), (None, 3, True), (2, 2, True)]
)
def test_the_client_app_computes_distances_on_the_rounds_the_run_asks(
    monkeypatch, every, server_round, distances
):
    _flower_task_identity(monkeypatch)
    config = tiny_config("fedavg", rounds=3, surface_metrics_every=every)
    message = _evaluate_instruction(config, server_round)
    reply = client_app.evaluate(message, _client_context(config, 0))
    metrics = reply.content["metrics"]
    assert "dice" in metrics and ("hd95" in metrics) == ("assd" in metrics) == distances


def test_a_round_where_every_client_fails_keeps_the_global_model(monkeypatch):
    _flower_task_identity(monkeypatch)
    config = tiny_config("fedbcs")
    strategy = AlgorithmStrategy(build_algorithm(config), config, on_round=print)
    content = RecordDict({"config": ConfigRecord()})
    instruction = Message(content, dst_node_id=9, message_type="train")
    failed = Message(Error(code=0, reason="boom"), reply_to=instruction)
    strategy.global_weights = {"w": torch.ones(3)}
    arrays, metrics = strategy.aggregate_train(1, [failed])
    assert torch.equal(arrays.to_torch_state_dict()["w"], torch.ones(3)) and metrics is None
    assert strategy.record["aggregated"] == [] and "boom" in str(strategy.record["faults"])


# ---- replies from a broken or hostile node (issue 15 §1) -----------------------------------

GLOBAL = {"w": torch.zeros(3)}


def _reply(node: int, content: RecordDict) -> Message:
    """The reply of ``node`` to a train instruction."""
    instruction = Message(
        RecordDict({"config": ConfigRecord()}), dst_node_id=node, message_type="train"
    )
    return Message(content, reply_to=instruction)


def _content(site: str, partition: int, value: float = 1.0, count: int = 4) -> RecordDict:
    update = ClientUpdate({"w": torch.full((3,), value)}, count, metrics={"loss": 0.5})
    return train_reply(update, site, partition)


def _strategy(**fields) -> AlgorithmStrategy:
    config = tiny_config("fedavg", **fields)
    strategy = AlgorithmStrategy(build_algorithm(config), config, on_round=lambda record: None)
    strategy.global_weights = dict(GLOBAL)
    return strategy


def _train_round(strategy, server_round: int, replies: list[Message]):
    arrays, _ = strategy.aggregate_train(server_round, replies)
    return arrays.to_torch_state_dict()["w"], strategy.record


def _metrics(**changed) -> MetricRecord:
    return MetricRecord({"loss": 0.5, "num-examples": 4} | changed)


def _without(record: RecordDict, key: str) -> RecordDict:
    return RecordDict({k: v for k, v in record.items() if k != key})


def _with(record: RecordDict, key: str, value) -> RecordDict:
    return RecordDict({**dict(record.items()), key: value})


MALFORMED = {
    "num-examples-missing": (
        lambda c: _with(c, "metrics", MetricRecord({"loss": 0.5})),
        "example count None is not a positive integer",
    ),
    "num-examples-a-float": (
        lambda c: _with(c, "metrics", _metrics(**{"num-examples": 4.5})),
        "example count 4.5 is not a positive integer",
    ),
    "num-examples-a-list": (
        lambda c: _with(c, "metrics", _metrics(**{"num-examples": [4, 4]})),
        "example count [4, 4] is not a positive integer",
    ),
    "num-examples-1e12": (
        lambda c: _with(c, "metrics", _metrics(**{"num-examples": 10**12})),
        "exceeds the maximum",
    ),
    "metric-a-list": (
        lambda c: _with(c, "metrics", _metrics(loss=[0.5, 0.1])),
        "metric 'loss' is a list, not a number",
    ),
    "partition-id-a-string": (
        lambda c: _with(c, "site", ConfigRecord({"name": "site-B", "partition-id": "one"})),
        "partition-id 'one' is not an integer",
    ),
    "partition-id-missing": (
        lambda c: _with(c, "site", ConfigRecord({"name": "site-B"})),
        "partition-id None is not an integer",
    ),
    "site-name-a-number": (
        lambda c: _with(c, "site", ConfigRecord({"name": 3, "partition-id": 1})),
        "its site name is a int, not a string",
    ),
    "no-metrics-record": (lambda c: _without(c, "metrics"), "lacks the records ['metrics']"),
    "metrics-an-array-record": (
        lambda c: _with(c, "metrics", ArrayRecord()),
        "'metrics' is a ArrayRecord, not a MetricRecord",
    ),
    "weights-of-strings": (
        lambda c: _with(c, "arrays", ArrayRecord({"w": Array(np.array(["a", "b", "c"]))})),
        "'arrays' cannot be read as tensors",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_reply_that_cannot_be_read_is_rejected_and_the_round_goes_on(monkeypatch, case):
    """Malformed num-examples or partition-id crashed the reply decoding before screening."""
    _flower_task_identity(monkeypatch)
    strategy = _strategy()
    break_content, reason = MALFORMED[case]
    replies = [
        _reply(1, _content("site-A", 0, 1.0)),
        _reply(2, break_content(_content("site-B", 1))),
    ]
    weights, record = _train_round(strategy, 1, replies)
    assert torch.equal(weights, torch.ones(3)) and record["aggregated"] == ["site-A"]
    ((name, why),) = record["rejected"].items()
    assert name in ("site-B", "node 2") and reason in why, why


def test_a_node_that_replies_as_another_site_is_rejected_under_its_own_name(monkeypatch):
    """Rejections were keyed by the name a reply gives: a bad node that replied as site-A got
    the honest site-A's reply dropped with its own."""
    _flower_task_identity(monkeypatch)
    strategy = _strategy()
    honest = [_reply(1, _content("site-A", 0, 1.0)), _reply(2, _content("site-B", 1, 3.0))]
    weights, record = _train_round(strategy, 1, honest)
    assert record["aggregated"] == ["site-A", "site-B"] and torch.equal(
        weights, torch.full((3,), 2.0)
    )
    spoofed = _reply(2, _content("site-A", 0, 1e3))
    newcomer = _reply(3, _content("site-A", 0, -1e3))
    weights, record = _train_round(strategy, 2, [honest[0], spoofed, newcomer])
    assert record["aggregated"] == ["site-A"] and torch.equal(weights, torch.ones(3))
    assert record["rejected"] == {
        "site-B": "claims to be site-A, but is enrolled as site-B",
        "node 3": "claims site-A, which another node enrolled as",
    }


def test_an_evaluate_reply_that_cannot_be_read_is_a_fault_not_a_crash(monkeypatch):
    _flower_task_identity(monkeypatch)
    strategy = _strategy(surface_metrics_every=1)
    _train_round(strategy, 1, [_reply(1, _content("site-A", 0)), _reply(2, _content("site-B", 1))])
    good = {"dice": 0.5, "hd95": 2.0, "assd": 1.0, "num-examples": 3}
    replies = [
        _reply(1, RecordDict({"metrics": MetricRecord(good), "site": site_record("site-A", 0)})),
        _reply(
            2,
            RecordDict({"metrics": MetricRecord({"dice": 0.5}), "site": site_record("site-B", 1)}),
        ),
    ]
    strategy.aggregate_evaluate(1, replies)
    assert strategy.record["dice"] == {"site-A": 0.5}
    assert (
        "its metric 'hd95' is None, not a number" in strategy.record["evaluation_faults"]["site-B"]
    )


def test_a_round_without_distances_records_dice_alone(monkeypatch):
    _flower_task_identity(monkeypatch)
    strategy = _strategy(rounds=3)
    _train_round(strategy, 1, [_reply(1, _content("site-A", 0)), _reply(2, _content("site-B", 1))])
    dice_only = MetricRecord({"dice": 0.5, "num-examples": 3})
    replies = [
        _reply(n, RecordDict({"metrics": dice_only, "site": site_record(site, n - 1)}))
        for n, site in ((1, "site-A"), (2, "site-B"))
    ]
    strategy.aggregate_evaluate(1, replies)
    assert strategy.record["dice"] == {"site-A": 0.5, "site-B": 0.5}
    assert strategy.record["evaluation_faults"] == {}
    assert not {"hd95", "assd", "mean_hd95", "hd95_per_class"} & set(strategy.record)


def test_the_run_fails_after_stall_rounds_with_nothing_aggregated(monkeypatch):
    _flower_task_identity(monkeypatch)
    strategy = _strategy(stall_rounds=2)
    content = RecordDict({"config": ConfigRecord()})
    failed = Message(
        Error(code=0, reason="boom"), reply_to=Message(content, dst_node_id=9, message_type="train")
    )
    for server_round in (1, 2):
        strategy.aggregate_train(server_round, [failed])
        if server_round == 1:
            strategy.aggregate_evaluate(server_round, [])
    with pytest.raises(FederationStalled, match=r"last 2 rounds .* node 9: boom"):
        strategy.aggregate_evaluate(2, [])


def test_the_server_app_sends_the_model_its_source_declares(
    three_class_source, monkeypatch, tmp_path
):
    class Sent(Exception):
        """Stops the server once it has the initial model."""

    def start(strategy, grid, initial_arrays, **settings):
        raise Sent(first_conv_and_head(initial_arrays.to_torch_state_dict()))

    monkeypatch.setattr(AlgorithmStrategy, "start", start)
    config = tiny_config("fedbcs", dataset=three_class_source.name)
    with pytest.raises(Sent) as sent:
        server_app.run_server(None, to_run_config(config, out_dir=str(tmp_path)))
    assert sent.value.args[0] == (1, 3)


def _train_instruction(in_channels: int, classes: int, init_features: int) -> Message:
    """A round-1 train instruction carrying a fresh UNet of that shape."""
    model = UNet(in_channels=in_channels, classes=classes, init_features=init_features)
    content = RecordDict(
        {
            WEIGHTS_KEY: ArrayRecord(torch_state_dict=model.state_dict()),
            PAYLOAD_KEY: ArrayRecord(),
            CONFIG_KEY: ConfigRecord({"server-round": 1}),  # as the strategy sends it
        }
    )
    return Message(content, dst_node_id=1, message_type="train")


def test_the_client_app_trains_the_model_its_source_declares(three_class_source, monkeypatch):
    _flower_task_identity(monkeypatch)
    config = tiny_config("fedavg", dataset=three_class_source.name)
    message = _train_instruction(1, 3, config.init_features)
    context = _client_context(config, 1)
    reply = client_app.train(message, context)  # loads the weights into the model it built
    weights = reply.content.array_records[WEIGHTS_KEY].to_torch_state_dict()
    assert first_conv_and_head(weights) == (1, 3)
    assert reply.content.config_records[SITE_KEY]["name"] == "south"


def test_folder_data_on_supernodes_and_a_server_without_data(monkeypatch, tmp_path):
    """Each hospital's node names its folder and site; the ServerApp, which reads no data,
    builds the model from the run config's in-channels and num-classes."""
    from tests.data.conftest import write_folder_site

    _flower_task_identity(monkeypatch)
    root = tmp_path / "data"
    for site in ("north", "south"):
        write_folder_site(root, site, cases=4, classes=3)
    config = tiny_config("fedavg", dataset="folder", data_root=str(root))
    run_config = to_run_config(config, out_dir=str(tmp_path / "run"))
    assert (run_config["in-channels"], run_config["num-classes"]) == (1, 3)
    server = from_run_config(run_config)
    assert server.data_root is None and first_conv_and_head(
        build_algorithm(server).build_model().state_dict()
    ) == (1, 3)
    without = {**run_config, "in-channels": 0, "num-classes": 0}
    with pytest.raises(ValueError, match="takes the run config's in-channels and num-classes"):
        from_run_config(without)
    message = _train_instruction(1, 3, config.init_features)
    node = {"data-root": str(root), "site": "south"}
    reply = client_app.train(message, _client_context(config, 0, **node))
    assert reply.content.config_records[SITE_KEY]["name"] == "south"
    weights = reply.content.array_records[WEIGHTS_KEY].to_torch_state_dict()
    assert first_conv_and_head(weights) == (1, 3)
    wrong = to_run_config(dataclasses.replace(config, num_classes=4))
    context = _client_context(config, 0, **node)
    context.run_config = wrong
    with pytest.raises(ValueError, match="has in_channels 1 and num_classes 3"):
        client_app.train(message, context)


def test_the_server_app_renames_every_file_into_place_whole(tmp_path, monkeypatch):
    # The rounds are canned; what is under test is how the ServerApp writes its folder:
    # through the run folder's atomic writes, as the simulator, all but the appended log.
    canned = [
        {"round": r, "dice": {"site-A": 0.5, "site-B": 0.2 * r}, "mean_dice": 0.35 + 0.1 * r}
        for r in (1, 2)
    ]

    def start(strategy, grid, initial_arrays, num_rounds, timeout):
        for record in canned:
            strategy.on_round(dict(record))
        return SimpleNamespace(arrays=initial_arrays)

    renamed = []
    replace = os.replace

    def recording_replace(source, target):
        renamed.append(Path(target))
        replace(source, target)

    monkeypatch.setattr(AlgorithmStrategy, "start", start)
    monkeypatch.setattr(os, "replace", recording_replace)
    config, out = tiny_config("fedavg"), tmp_path / "run"
    assert server_app.run_server(None, to_run_config(config, out_dir=str(out))) == canned
    whole = {path.name for path in renamed if path.parent == out}
    assert whole == {"config.json", "summary.md", "dice.png", "model.safetensors"}
    appended = {"metrics.jsonl", "train.log", "tensorboard", LOCK_FILE}  # not renamed
    assert {path.name for path in out.iterdir()} == whole | appended
    assert read_config(out) == config and read_records(out) == canned
    assert (out / "summary.md").read_text().startswith("# fedavg on synthetic-nuclei (Flower)")


def test_the_watchdog_stops_what_its_parent_started_unless_told_it_is_done(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    sleeper = subprocess.Popen(["sleep", "600"])
    watch(home, iter([f"{sleeper.pid}\n"]))  # the parent died: its pipe just ended
    assert sleeper.wait(timeout=10) == -signal.SIGTERM
    assert not home.exists()
    home.mkdir()
    sleeper = subprocess.Popen(["sleep", "600"])
    watch(home, iter([f"{sleeper.pid}\n", f"{DONE}\n"]))  # the parent stopped them itself
    assert sleeper.poll() is None and home.exists()
    watch(home, iter([f"{sleeper.pid}\n", f"-{sleeper.pid}\n"]))  # reaped, so forgotten
    assert sleeper.poll() is None
    sleeper.kill()
    sleeper.wait()


# ---- client-level DP of the weights (issue 19) ----------------------------------------------


def _flower_reply(node: int, state: dict) -> Message:
    """A reply as Flower's own FedAvg reads it: one ArrayRecord, one example."""
    content = RecordDict(
        {
            "arrays": ArrayRecord(torch_state_dict=state),
            "metrics": MetricRecord({"num-examples": 1}),
        }
    )
    return _reply(node, content)


def test_flowers_server_side_fixed_clipping_gives_our_mean_and_noise_scale(monkeypatch):
    """Flower's wrapper around its FedAvg, every reply counted once (its accounted mode),
    against :class:`WeightPrivacy`: the same clipped mean, noise of the same scale."""
    _flower_task_identity(monkeypatch)
    reference = {"a": torch.zeros(3, 50_000), "b": torch.ones(20_000)}
    gen = torch.Generator().manual_seed(0)
    states = [
        {k: v + scale * torch.randn(v.shape, generator=gen) for k, v in reference.items()}
        for scale in (0.01, 0.002, 0.05)
    ]

    def flower(noise: float) -> dict[str, torch.Tensor]:
        wrapper = DifferentialPrivacyServerSideFixedClipping(FedAvg(), noise, 0.5, len(states))
        wrapper.current_arrays = ArrayRecord(torch_state_dict=reference)
        replies = [_flower_reply(node, s) for node, s in enumerate(states, start=1)]
        arrays, _ = wrapper.aggregate_train(1, replies)
        return dict(arrays.to_torch_state_dict())

    def ours(noise: float) -> dict[str, torch.Tensor]:
        return WeightPrivacy(noise, 0.5, 1e-3, seed=0, round=1).aggregate(states, reference)

    clipped, flowers_clipped = ours(0.0), flower(0.0)
    for key in reference:
        torch.testing.assert_close(clipped[key], flowers_clipped[key], rtol=0, atol=1e-6)
    np.random.seed(0)  # noqa: NPY002 -- Flower draws its noise from numpy's global generator
    noised = {"Flower's": (flower(2.0), flowers_clipped), "ours": (ours(2.0), clipped)}
    for who, (noisy, clean) in noised.items():
        noise = torch.cat([(noisy[k] - clean[k]).flatten() for k in reference])
        assert noise.std().item() == pytest.approx(2.0 * 0.5 / len(states), rel=0.01), who


def test_the_strategy_and_the_simulators_round_give_the_same_private_model(monkeypatch):
    """The Flower engine hands its round the simulator's mechanism, round and history."""
    _flower_task_identity(monkeypatch)
    config = tiny_config("fedavg", weight_dp_noise=0.7, weight_dp_clip=0.05)
    algorithm = build_algorithm(config)
    weights, replies = round_one_replies(algorithm, clients=2)
    strategy = AlgorithmStrategy(algorithm, config, on_round=lambda record: None)
    history = []
    for server_round in (1, 2):
        strategy.global_weights = dict(weights)
        messages = [
            _reply(node, train_reply(update, site, node - 1))
            for node, (site, update) in enumerate(replies, start=1)
        ]
        arrays, _ = strategy.aggregate_train(server_round, messages)
        expected = aggregate_round(
            algorithm,
            server_round,
            ["site-A", "site-B"],
            replies,
            {},
            weights,
            {},
            ScreeningPolicy.of(config),
            weight_privacy=weight_privacy(config, 2, server_round),
            history=history,
        )
        flower = arrays.to_torch_state_dict()
        for key, value in expected.weights.items():
            assert torch.equal(flower[key], value), key
        assert strategy.record["weight_dp_epsilon"] == expected.record["weight_dp_epsilon"]
        history.append(expected.record)
        strategy.history.append(strategy.record)
    assert 0 < history[0]["weight_dp_epsilon"]["site-A"] < history[1]["weight_dp_epsilon"]["site-A"]


# ---- real deployments ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def clean_runs(tmp_path_factory):
    """method → (folder, process) of a clean two-round deployment, run when first asked."""
    runs = {}

    def clean_run(method: str) -> tuple[Path, subprocess.CompletedProcess]:
        if method not in runs:
            out = tmp_path_factory.mktemp("flower") / method
            runs[method] = out, flower_local(out, method, "--clients", "2", "--eval-every", "2")
        return runs[method]

    return clean_run


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("flower") / "faulty"
    result = flower_local(out, "fedbcs", "--clients", "2", "--rounds", "1", "--fail-partition", "1")
    return out, result


@pytest.mark.e2e
def test_two_rounds_complete_and_prototypes_reach_the_clients(clean_runs):
    out, result = clean_runs("fedbcs")
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads((out / "flower-local.json").read_text())
    assert report["ok"] and report["status"] == "finished:completed"
    first, second = records(out)
    assert [first["round"], second["round"]] == [1, 2]
    for record in (first, second):
        assert record["aggregated"] == ["site-A", "site-B"] and record["faults"] == {}
        assert all(n > 0 for n in record["prototypes_uploaded"].values())
    assert all(m["received-prototypes"] == 0 for m in first["client_metrics"].values())
    assert all(m["received-prototypes"] > 0 for m in second["client_metrics"].values())
    assert set(second["dice"]) == {"site-A", "site-B"}
    assert set(second["hd95"]) == {"site-A", "site-B"}  # the last round's, as simulated
    for name in ("config.json", "summary.md", "model.safetensors"):
        assert (out / name).exists()
    assert len(report["pids"]) >= 2 + 3  # SuperLink, SuperNodes, flwr run, and children
    assert not [pid for pid in report["pids"] if alive(pid)]


@pytest.mark.e2e
@pytest.mark.parametrize("method", ["fedbcs", "moon"])
def test_flower_and_the_simulator_give_the_same_global_model(clean_runs, method):
    out, result = clean_runs(method)
    assert result.returncode == 0, result.stderr + result.stdout
    config = RunConfig.load(out / "config.json")
    simulation = Simulation(config, load_sites(config), out_dir=None, progress=False)
    simulation.run()
    flower = load_file(str(out / "model.safetensors"))
    assert flower.keys() == simulation.global_weights.keys()
    for key, tensor in simulation.global_weights.items():
        torch.testing.assert_close(flower[key], tensor, rtol=0, atol=1e-6, msg=key)


@pytest.mark.e2e
def test_flower_and_the_simulator_give_the_same_private_model(tmp_path):
    """Weight DP on a real deployment: the same noise, the same ε in every record."""
    out = tmp_path / "private"
    dp = ["--weight-dp-noise", "0.5", "--weight-dp-clip", "0.1"]
    result = flower_local(out, "fedavg", "--clients", "2", "--eval-every", "2", *dp)
    assert result.returncode == 0, result.stderr + result.stdout
    config = RunConfig.load(out / "config.json")
    assert config.weight_dp_noise == 0.5
    simulation = Simulation(config, load_sites(config), out_dir=None, progress=False)
    history = simulation.run()
    flower = load_file(str(out / "model.safetensors"))
    for key, tensor in simulation.global_weights.items():
        torch.testing.assert_close(flower[key], tensor, rtol=0, atol=1e-6, msg=key)
    spent = [record["weight_dp_epsilon"] for record in records(out)]
    assert spent == [record["weight_dp_epsilon"] for record in history]
    assert "Client-level differential privacy of the weights" in (out / "summary.md").read_text()


@pytest.mark.e2e
def test_a_client_that_raises_is_reported_and_the_round_completes(faulty_run):
    out, result = faulty_run
    assert result.returncode == 0, result.stderr + result.stdout
    (record,) = records(out)
    assert record["aggregated"] == ["site-A"]
    ((name, reason),) = record["faults"].items()
    assert name.startswith("node ") and "InjectedFault" in reason
    assert (out / "model.safetensors").exists()
    report = json.loads((out / "flower-local.json").read_text())
    assert not [pid for pid in report["pids"] if alive(pid)]


@pytest.fixture
def started_flower_local(tmp_path):
    """A long ``fedbcs flower-local`` (temporary files in ``tmp_path/tmp``), once its
    ServerApp has begun the run, when every kind of process of the deployment runs:
    (process, out, tmp). Whatever the test leaves running is stopped afterwards."""
    tmp, out = tmp_path / "tmp", tmp_path / "run"
    tmp.mkdir()
    command = [sys.executable, "-m", "fedbcs_fl.cli", "flower-local", *tiny_argv("fedavg")]
    process = subprocess.Popen(
        [*command, "--rounds", "100", "--out", str(out)],
        cwd=ROOT,
        env=os.environ | {"TMPDIR": str(tmp)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen = {process.pid}
    try:
        deadline = time.monotonic() + 900
        while not (out / "config.json").exists():
            assert process.poll() is None and time.monotonic() < deadline, "no run began"
            seen |= descendants([process.pid])
            time.sleep(1)
        time.sleep(5)  # the ServerApp's round 1 asks the ClientApps
        yield process, out, tmp
    finally:
        stop_processes(seen | descendants(seen))
        process.wait()


def _left_running(pids: set[int], seconds: float) -> list[int]:
    """The processes of ``pids`` still running after up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while [pid for pid in pids if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.5)
    return [pid for pid in pids if alive(pid)]


@pytest.mark.e2e
def test_flower_local_killed_leaves_no_process_and_no_temporary_folder(started_flower_local):
    process, _, tmp = started_flower_local
    tree = descendants([process.pid])
    assert len(tree) >= 6  # flower-local, its watchdog, SuperLink, 2 SuperNodes, flwr run, ...
    process.kill()
    process.wait()
    assert _left_running(tree, 60) == []
    assert list(tmp.glob("fedbcs-flwr-home-*")) == []


@pytest.mark.e2e
def test_flower_local_stopped_by_sigterm_says_so(started_flower_local):
    process, out, _ = started_flower_local
    tree = descendants([process.pid])
    process.terminate()
    assert process.wait(timeout=120) == 130
    assert _left_running(tree, 30) == []
    report = json.loads((out / "flower-local.json").read_text())
    assert report["status"] == "stopped by SIGTERM" and not report["ok"]
    assert report["run_id"] is not None


def _flower_commands(root: int, deadline: float) -> dict[str, list[list[str]]]:
    """The argument lists of the SuperLink and the SuperNodes below ``root`` (``ps``),
    by program, once the SuperLink and two SuperNodes run."""
    while True:
        assert alive(root) and time.monotonic() < deadline, "no SuperLink and SuperNodes"
        pids = ",".join(map(str, descendants([root])))
        table = subprocess.run(
            ["ps", "-ww", "-o", "args=", "-p", pids], capture_output=True, text=True
        )
        commands: dict[str, list[list[str]]] = {"flower-superlink": [], "flower-supernode": []}
        for args in map(shlex.split, table.stdout.splitlines()):
            program = next((Path(a).name for a in args if Path(a).name in commands), None)
            if program:
                commands[program].append(args)
        if len(commands["flower-superlink"]) == 1 and len(commands["flower-supernode"]) == 2:
            return commands
        time.sleep(0.5)


def _option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.mark.e2e
def test_flower_local_runs_over_tls_and_admits_only_registered_supernodes(tmp_path):
    """While the run goes on: the SuperLink speaks only TLS, with a certificate only its CA
    vouches for, and refuses a SuperNode whose key was not registered."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "fedbcs_fl.cli", "flower-local", *tiny_argv("fedavg")]
    with open(tmp_path / "flower-local.out", "wb") as output:
        process = subprocess.Popen(
            [*command, "--rounds", "1", "--tls", "--auth", "--out", str(out)],
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        commands = _flower_commands(process.pid, time.monotonic() + 300)
        ((link,),) = [commands["flower-superlink"]]
        assert "--insecure" not in link and "--enable-supernode-auth" in link
        port, ca = int(_option(link, "--port")), _option(link, "--ssl-ca-certfile")
        for node in commands["flower-supernode"]:
            assert "--insecure" not in node and _option(node, "--root-certificates") == ca
            assert Path(_option(node, "--auth-supernode-private-key")).is_file()

        trusting = ssl.create_default_context(cafile=ca)
        assert ("IP Address", "127.0.0.1") in handshake(port, trusting)["subjectAltName"]
        with pytest.raises(ssl.SSLCertVerificationError):
            handshake(port, ssl.create_default_context())  # the system's CAs only
        answer = b""  # an insecure SuperLink would answer HTTP/1.1 404
        with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
            plain.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            with suppress(ConnectionResetError):
                answer = plain.recv(64)
        assert not answer.startswith(b"HTTP/")

        (stranger,) = write_node_keys(tmp_path / "stranger", 1)
        with open(tmp_path / "stranger.log", "wb") as log:  # its SuperExec outlives it
            refused = subprocess.run(
                [
                    str(Path(sys.executable).parent / "flower-supernode"),
                    *("--superlink", f"127.0.0.1:{port}", "--root-certificates", ca),
                    *("--auth-supernode-private-key", str(stranger.private_key)),
                    *("--max-retries", "0", "--port", str(free_port())),
                ],
                env=flower_environment(tmp_path / "home"),
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=120,
            )
        assert refused.returncode != 0
        assert "Failed to activate SuperNode" in (tmp_path / "stranger.log").read_text()

        assert process.wait(timeout=600) == 0, (tmp_path / "flower-local.out").read_text()
    finally:
        stop_processes(descendants([process.pid]))
        process.wait()
    report = json.loads((out / "flower-local.json").read_text())
    assert report["ok"] and report["tls"] and report["auth"]
    assert not [pid for pid in report["pids"] if alive(pid)]
