"""The Flower ClientApp: one site's local training and evaluation.

Each SuperNode reads its own site (node config: ``partition-id`` and, for real data,
``data-root``; see :func:`~fedbcs_fl.flower.settings.node_site`). ``train`` loads the
global weights and payload, runs :func:`~fedbcs_fl.client.local_train` with the
algorithm and replies with weights, payload and metrics; ``evaluate`` scores the global
model on the site's test split. What must outlive a round (the optimiser state, the
algorithm's ``state`` dict, the loader's shuffling generator) is kept in
``context.state``, which stays on the node.

The metrics of a train reply add, to the algorithm's, what this node received:
``received-payload-arrays`` and ``received-prototypes`` (0 in round 1).
"""

from __future__ import annotations

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ..algorithms import build_algorithm
from ..algorithms.base import Algorithm
from ..client import evaluate_site, local_train, make_optimizer, train_loader
from ..config import RunConfig
from ..data.base import SiteData
from ..payload import prototype_sets
from ..privacy import prototype_privacy
from ..round import is_surface_round
from .records import (
    METRICS_KEY,
    NUM_EXAMPLES,
    PAYLOAD_KEY,
    SITE_KEY,
    WEIGHTS_KEY,
    from_record,
    restore,
    site_record,
    store,
    train_reply,
)
from .settings import engine_setting, from_run_config, node_site

app = ClientApp()

# context.state entries of this node.
OPTIMIZER_STATE = "fedbcs.optimizer"
ALGORITHM_STATE = "fedbcs.algorithm"
LOADER_GENERATOR = "fedbcs.loader-generator"


class InjectedFault(RuntimeError):
    """Raised by the node named in the run's ``fail-partition`` (fault-tolerance tests)."""


def _setup(message: Message, context: Context) -> tuple[RunConfig, SiteData, int, Algorithm]:
    config = from_run_config(context.run_config, context.node_config)
    site, partition_id = node_site(config, context.node_config)
    return config, site, partition_id, build_algorithm(config)


def _global_model(algorithm: Algorithm, message: Message, device):
    model = algorithm.build_model()
    model.load_state_dict(from_record(message.content.array_records[WEIGHTS_KEY]))
    return model.to(device)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Local training from the global weights and payload of ``message``."""
    config, site, partition_id, algorithm = _setup(message, context)
    if partition_id == int(engine_setting(context.run_config, "fail-partition")):
        raise InjectedFault(f"partition {partition_id} ({site.name}) fails as configured")
    device = config.device
    model = _global_model(algorithm, message, device)
    global_payload = {k: v.to(device) for k, v in from_record(message.content[PAYLOAD_KEY]).items()}
    optimizer = make_optimizer(model, config)
    optimizer_state = restore(context.state, OPTIMIZER_STATE)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    loader = train_loader(site.train, config, partition_id)
    generator_state = restore(context.state, LOADER_GENERATOR)
    if generator_state is not None:
        loader.generator.set_state(generator_state.get_state())
    state = restore(context.state, ALGORITHM_STATE) or {}

    privacy = prototype_privacy(
        config,
        len(prototype_sets(algorithm.uploads)),
        partition_id,
        len(site.train),
        int(message.content["config"]["server-round"]),
    )
    update = local_train(
        algorithm,
        model,
        optimizer,
        loader,
        global_payload,
        state,
        config.local_epochs,
        device,
        privacy=privacy,
    )
    update.metrics["received-payload-arrays"] = float(len(global_payload))
    update.metrics["received-prototypes"] = float(algorithm.count_prototypes(global_payload))

    store(context.state, OPTIMIZER_STATE, optimizer.state_dict())
    store(context.state, LOADER_GENERATOR, loader.generator)
    store(context.state, ALGORITHM_STATE, state)
    return Message(train_reply(update, site.name, partition_id), reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Dice of the global model on this site's test split, and HD95 and ASSD on the rounds
    :func:`~fedbcs_fl.round.is_surface_round` picks, as the simulator scores it."""
    config, site, partition_id, algorithm = _setup(message, context)
    model = _global_model(algorithm, message, config.device)
    server_round = int(message.content["config"]["server-round"])
    metrics = evaluate_site(model, site, config, is_surface_round(config, server_round))
    metrics[NUM_EXAMPLES] = len(site.test)
    content = RecordDict(
        {
            METRICS_KEY: MetricRecord({k: float(v) for k, v in metrics.items()}),
            SITE_KEY: site_record(site.name, partition_id),
        }
    )
    return Message(content, reply_to=message)
