"""Run configuration: one dataclass whose fields declare themselves (:mod:`fedbcs_fl.schema`),
the data source's defaults filled in, and config files: JSON round trip, TOML read.

Importing it imports neither torch nor numpy, nor do the declarations it reads (the
methods, the data sources, the choices below): ``fedbcs --help`` is built from them in
well under a second, where torch's import alone takes seconds (issue 18). The modules that
implement the choices read them from here.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .algorithms.methods import METHODS
from .config_checks import check_config
from .data.sources import DATA_SOURCES, NUCLEI_INTENSITIES, data_source, file_sources
from .schema import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, setting, settings_of

CONFIG_VERSION = 1

# The rules that aggregate the model weights (fedbcs_fl/aggregation.py): the method's mean,
# or a robust one.
AGGREGATIONS = ("mean", "median", "trimmed-mean", "krum")
# Which classes the soft Dice loss averages over (fedbcs_fl/losses.py): "all" (background
# too, as the released ``DiceLoss``) or "foreground" (every class but 0).
DICE_LOSS_CLASSES = ("all", "foreground")

# Settings added to follow the released code (docs/fidelity.md). A config.json without
# them was written before they existed: it loads with the values its run was trained and
# evaluated with, so ``--resume`` and ``fedbcs eval`` reproduce that run.
BEFORE_FIDELITY = {"dice_loss_classes": "foreground", "nuclei_intensity": "dtype"}
BEFORE_FIDELITY_METHOD_OPTIONS = {"fedbcs": {"contrast": "exact"}}

# Baseline options whose defaults changed to follow the original methods (issue 14,
# docs/algorithms.md): version → method → the values before that version. A config.json
# written at an older ``method_defaults_version`` (none: 1) loads with the values of its
# version, so its run resumes and evaluates as it ran.
METHOD_DEFAULTS_VERSION = 3
METHOD_OPTIONS_BEFORE = {
    2: {
        "feduv": {"variance_target": "balanced", "uniformity_sigma": "detached"},
        "harmofl": {"amplitude_ratio": 0.1},
        "fedplvm": {"lambda_plvm": 1.0, "prototype_pass": "last-epoch"},
    },
    3: {"feduv": {"uniformity_level": "pixel"}},
}


def method_options_of_version(method: str, version: int) -> dict[str, Any]:
    """The defaults of ``method`` that changed after ``method_defaults_version``
    ``version``, at the values that version had."""
    options: dict[str, Any] = {}
    for changed in sorted(METHOD_OPTIONS_BEFORE, reverse=True):  # the oldest value wins
        if changed > version:
            options |= METHOD_OPTIONS_BEFORE[changed].get(method, {})
    return options


@dataclass
class RunConfig:
    """Everything a run depends on; written to ``config.json`` in the run folder.

    Each run setting is declared once, with its help and the values it may take
    (:func:`~fedbcs_fl.schema.setting`); :data:`RUN_SETTINGS` lists them. Method
    hyper-parameters live in ``method_options`` (name → value); each method declares its
    own and fills in their defaults.
    """

    method: str = setting(
        "fedbcs", "the federated method (docs/algorithms.md)", choices=METHODS, per_run=True
    )
    dataset: str = setting("synthetic-nuclei", "the data set", choices=DATA_SOURCES)
    data_root: str | None = setting(
        None,
        f"folder of a real data set ({', '.join(file_sources())})",
        none_means="none (synthetic data)",
        flower="node",
    )
    sites: list[str] | None = setting(None, "comma-separated site names", none_means="all")
    split_file: str | None = setting(
        None,
        "a split.json of an earlier run, to reuse its split",
        none_means="a new split, drawn by the seed",
        flower="node",
    )
    rounds: int = setting(30, "federated rounds", interval=AT_LEAST_ONE)
    local_epochs: int = setting(1, "local epochs per round", interval=AT_LEAST_ONE)
    clients_per_round: int | None = setting(
        None,
        "clients trained each round, drawn by the seed",
        none_means="every client",
        interval=AT_LEAST_ONE,
        flower_none=0,
    )
    batch_size: int = setting(6, "training batch size", interval=AT_LEAST_ONE)
    eval_batch_size: int = setting(
        16,
        "batch size of every evaluation; scores depend on it (BatchNorm uses batch "
        "statistics), and 16 is the released code's",
        interval=AT_LEAST_ONE,
    )
    optimizer: str | None = setting(
        None,
        "the local optimiser",
        none_means="the dataset's",
        choices=("adam", "sgd"),
    )
    lr: float | None = setting(
        None,
        "learning rate",
        none_means="the dataset's",
        interval=POSITIVE,
        flower_none=0.0,
    )
    weight_decay: float = setting(1e-4, "the optimiser's weight decay", interval=NON_NEGATIVE)
    momentum: float | None = setting(
        None,
        "SGD momentum",
        none_means="the dataset's: nuclei 0, as released, else 0.9",
        interval="[0, 1]",
    )
    dice_loss_classes: str = setting(
        "all",
        "classes the soft Dice loss averages over (all: background too, as released)",
        choices=DICE_LOSS_CLASSES,
    )
    nuclei_intensity: str = setting(
        "minmax",
        "real nuclei images: per-image min-max (released) or ÷ the pixel type's maximum",
        choices=NUCLEI_INTENSITIES,
    )
    # Each client's shuffling generator is seeded with seed·1000 + its index, a 64-bit seed.
    seed: int = setting(
        0,
        "draws the synthetic data or the split, the weights, batches, clients",
        interval="[0, 4294967295]",
        per_run=True,
    )
    # The paper's sides are 256 (nuclei) and 384 (prostate); the UNet's first stage alone
    # holds init_features·S² floats per image, 1 GiB at S = 8192 and 16 features.
    image_size: int | None = setting(
        None,
        "image side in pixels",
        none_means="the dataset's",
        interval="[1, 8192]",
        flower_none=0,
    )
    slice_neighbours: int = setting(
        0,
        "folder volumes: slices either side of each sample, stacked as extra channels",
        interval=NON_NEGATIVE,
    )
    # The ServerApp reads no data: on Flower with folder data the run config gives these.
    in_channels: int | None = setting(
        None,
        "the model's input channels",
        none_means="the data's (dataset.json for folder data)",
        interval=AT_LEAST_ONE,
        cli=False,
        flower_none=0,
    )
    num_classes: int | None = setting(
        None,
        "classes, background included",
        none_means="the data's (dataset.json for folder data)",
        interval="[2, inf)",
        cli=False,
        flower_none=0,
    )
    n_train: int = setting(
        24, "synthetic only: mean training images per site", interval=AT_LEAST_ONE
    )
    n_test: int = setting(12, "synthetic only: mean test images per site", interval=AT_LEAST_ONE)
    # The UNet's parameters grow with its square: 7.8 M at 32 (the paper), 8 G at 1024.
    init_features: int = setting(16, "channels of the UNet's first stage", interval="[1, 1024]")
    device: str = setting("cpu", "torch device, e.g. cuda")
    eval_every: int = setting(
        1, "evaluate every N rounds, and after the last", interval=AT_LEAST_ONE
    )
    # HD95 and ASSD took half an evaluation's time (issue 18); Dice is every evaluated round's.
    surface_metrics_every: int | None = setting(
        None,
        "also HD95 and ASSD on the evaluated rounds that are multiples of N, and the last",
        none_means="the last round only",
        interval=AT_LEAST_ONE,
        flower_none=0,
    )
    checkpoint_every: int = setting(
        1, "checkpoint every N rounds, and after the last", interval=AT_LEAST_ONE, flower="extra"
    )
    client_timeout: float | None = setting(
        None,
        "seconds a client may take",
        none_means="no limit",
        interval=POSITIVE,
        flower="extra",
    )
    screen_norm_factor: float = setting(
        10.0,
        "reject updates this many times the median norm (0: off; off under weight DP, "
        "whose clip bounds every update)",
        interval=NON_NEGATIVE,
        flower="extra",
    )
    screen_max_examples: int = setting(
        10_000_000, "reject replies claiming more examples", interval=AT_LEAST_ONE, flower="extra"
    )
    screen_count_factor: float = setting(
        4.0,
        "count a site's examples at most this many times the median of the others' (0: off)",
        interval=NON_NEGATIVE,
        flower="extra",
    )
    aggregation: str = setting(
        "mean",
        "of the model weights: the method's mean, or a robust rule (docs/reliability.md)",
        choices=AGGREGATIONS,
    )
    stall_rounds: int = setting(
        3,
        "stop with an error after this many rounds in a row with no reply aggregated",
        interval=AT_LEAST_ONE,
    )
    inject_faults: str | None = setting(
        None,
        "fault drill, e.g. site-B:nan@2 (docs/reliability.md)",
        none_means="none",
        flower="extra",
    )
    # Differential privacy of the uploaded prototypes (fedbcs_fl/privacy.py, docs/privacy.md).
    proto_dp_epsilon: float | None = setting(
        None,
        "differential privacy of the uploaded prototypes: total ε per site over the run, "
        "the noise solved for it",
        none_means="off",
        interval=POSITIVE,
        flower="extra",
    )
    proto_dp_noise: float | None = setting(
        None,
        "prototype DP by noise multiplier instead of ε",
        none_means="off",
        interval=POSITIVE,
        flower="extra",
    )
    proto_dp_clip: float = setting(
        1.0,
        "prototype DP: L2 bound C on each image's per-class mean feature",
        interval=POSITIVE,
        flower="extra",
    )
    dp_delta: float | None = setting(
        None,
        "δ of the reported ε",
        none_means="1/(10·n), n a site's training images (prototype DP) or the sites (weight DP)",
        interval="(0, 1)",
        flower="extra",
    )
    # Client-level DP of the model weights, DP-FedAvg (fedbcs_fl/weight_privacy.py).
    weight_dp_noise: float | None = setting(
        None,
        "differential privacy of each site's contribution to the weights (DP FedAvg): noise "
        "multiplier z; the server adds N(0, (z·S/m)²) to the mean of the m sites' clipped "
        "updates",
        none_means="off",
        interval=NON_NEGATIVE,
        flower="extra",
    )
    weight_dp_epsilon: float | None = setting(
        None,
        "weight DP by total ε per site over the run instead, the noise solved for it",
        none_means="off",
        interval=POSITIVE,
        flower="extra",
    )
    weight_dp_clip: float = setting(
        1.0,
        "weight DP: L2 bound S on each site's update (its weights − the global weights)",
        interval=POSITIVE,
        flower="extra",
    )
    data_version: int | None = setting(
        None,
        "the version of the synthetic data's generator",
        none_means="the data set's (none for real data)",
        interval=AT_LEAST_ONE,
        cli=False,
        flower="extra",
    )
    method_options: dict = field(default_factory=dict)
    # The method defaults the file was written with: from_json makes an older file's old
    # defaults explicit in method_options (METHOD_OPTIONS_BEFORE).
    method_defaults_version: int = METHOD_DEFAULTS_VERSION
    version: int = CONFIG_VERSION

    def resolved(self) -> RunConfig:
        """A copy with the data source's defaults (:class:`~fedbcs_fl.data.RunDefaults`)
        and model shape (:meth:`~fedbcs_fl.data.DataSource.model_shape`) filled in where a
        field is None; ``ValueError`` for an unknown dataset, a shape it cannot have or a
        setting out of its range (:func:`~fedbcs_fl.config_checks.check_config`)."""
        _checked({name: getattr(self, name) for name in RUN_SETTINGS})
        source = data_source(self.dataset)
        out = dataclasses.replace(self, method_options=dict(self.method_options))
        for default in dataclasses.fields(source.defaults):  # tau is a method option's
            if default.name in RUN_SETTINGS and getattr(out, default.name) is None:
                setattr(out, default.name, getattr(source.defaults, default.name))
        out.in_channels, out.num_classes = source.model_shape(out)
        if out.data_version is None:
            out.data_version = source.version
        check_config(out)
        return out

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "config") -> RunConfig:
        return cls.from_dict(json.loads(text), source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> RunConfig:
        """The config of field → value ``data``: a saved ``config.json`` (it has a
        ``version``), read as its run ran, or some fields, the others at their defaults.

        ``ValueError`` naming ``source`` for another config version, an unknown field, or
        a value its :class:`~fedbcs_fl.schema.Setting` does not allow.
        """
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(
                f"{source} has unknown fields: {', '.join(unknown)}; valid: {', '.join(known)}"
            )
        if "version" in data:
            data = cls._as_it_ran(data, source)
        elif "method_defaults_version" in data:
            data = cls._with_method_defaults_of(data, source)
        values = dict(data)
        values |= _checked({name: values[name] for name in RUN_SETTINGS if name in values}, source)
        if not isinstance(values.get("method_options", {}), dict):
            raise ValueError(f"{source}: method_options must be a table of option → value")
        return cls(**values)

    @classmethod
    def _as_it_ran(cls, data: Mapping[str, Any], source: str) -> dict[str, Any]:
        """A saved config's fields with what its run used where it was written before a
        setting existed (:data:`BEFORE_FIDELITY`, :data:`METHOD_OPTIONS_BEFORE`,
        the generators' first version)."""
        version = data["version"]
        if version != CONFIG_VERSION:
            raise ValueError(
                f"{source} was written by config version {version}; this fedbcs reads "
                f"version {CONFIG_VERSION}"
            )
        data = dict(data)
        if "data_version" not in data and data_source(data.get("dataset", cls.dataset)).version:
            data["data_version"] = 1  # written before the generators had versions
        if not set(BEFORE_FIDELITY) & set(data):
            data = cls._before_fidelity(data)
        return cls._with_method_defaults_of({"method_defaults_version": 1, **data}, source)

    @classmethod
    def _with_method_defaults_of(cls, data: Mapping[str, Any], source: str) -> dict[str, Any]:
        """``data`` with the method defaults of its ``method_defaults_version`` made
        explicit options, so the config, now of the current version, runs as the file's
        run did. ``ValueError`` for a version that is not an integer from 1 to
        :data:`METHOD_DEFAULTS_VERSION` (a newer one was written by a newer fedbcs)."""
        version = data["method_defaults_version"]
        if type(version) is not int or not 1 <= version <= METHOD_DEFAULTS_VERSION:
            raise ValueError(
                f"{source} has method_defaults_version {version!r}; this fedbcs reads 1 to "
                f"{METHOD_DEFAULTS_VERSION} (a newer one was written by a newer fedbcs)"
            )
        legacy = method_options_of_version(data.get("method", cls.method), version)
        return {
            **data,
            "method_options": {**legacy, **data.get("method_options", {})},
            "method_defaults_version": METHOD_DEFAULTS_VERSION,
        }

    @classmethod
    def _before_fidelity(cls, data: dict) -> dict:
        """``data`` with what a run written before the fidelity settings used: the
        :data:`BEFORE_FIDELITY` values, evaluation at the training batch size, and the
        method's :data:`BEFORE_FIDELITY_METHOD_OPTIONS`."""
        batch_size = data.get("batch_size", cls.batch_size)
        filled = {**BEFORE_FIDELITY, "eval_batch_size": batch_size, **data}
        legacy = BEFORE_FIDELITY_METHOD_OPTIONS.get(filled.get("method", cls.method), {})
        filled["method_options"] = {**legacy, **filled.get("method_options", {})}
        return filled

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """The config in ``path``: JSON (e.g. a run folder's ``config.json``) or, for a
        ``.toml`` file, TOML, with the field names of ``config.json`` (:meth:`from_dict`)."""
        path = Path(path)
        text = path.read_text()
        try:
            data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not valid {path.suffix[1:] or 'JSON'}: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold an object of field → value")
        return cls.from_dict(data, source=str(path))


# The run settings, by field name: what each is, what it may be, where it is given.
RUN_SETTINGS = settings_of(RunConfig)


def _checked(values: Mapping[str, Any], source: str | None = None) -> dict[str, Any]:
    """``values`` (setting → value), each checked by its :data:`RUN_SETTINGS` declaration
    (an integer for a number becomes a float); ``ValueError`` naming the first that breaks
    its rules, and ``source`` where given."""
    checked = {}
    for name, value in values.items():
        try:
            checked[name] = RUN_SETTINGS[name].check(value)
        except ValueError as error:
            where = f"{source}: " if source else ""
            raise ValueError(f"{where}{name} {error}") from None
    return checked
