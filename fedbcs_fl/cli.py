"""The ``fedbcs`` command: train, eval, show-data, compare, check-data, calibrate-data,
diagnose, flower-local.

Bad arguments print one line naming the valid choices and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

from .algorithms import METHODS, all_algorithms
from .config import RunConfig
from .data import DATA_SOURCES, NUCLEI_INTENSITIES, data_source, file_sources
from .losses import DICE_LOSS_CLASSES

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error instead of the usage block."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    """A positive integer, also in scientific notation ("1e4"), so that a huge count reaches
    the check that says why it is too large (fedbcs_fl/config_checks.py)."""
    try:
        value = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        value = int(number) if number.is_integer() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _site_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _method_options() -> dict[str, object]:
    """Every method option by name, with the first default seen (for its type)."""
    merged: dict[str, object] = {}
    for cls in all_algorithms().values():
        for name, default in cls.options.items():
            merged.setdefault(name, default)
    return merged


def _method_option_help() -> dict[str, str]:
    """The help of each method option: every method that explains it, with its default."""
    parts: dict[str, list[str]] = {}
    for method, cls in all_algorithms().items():
        for name, text in cls.option_help.items():
            parts.setdefault(name, []).append(f"{method}: {text} (default {cls.options[name]})")
    return {name: "; ".join(texts) for name, texts in parts.items()}


# Options of ``train`` that ``compare`` passes through to every run.
_COMMON = (
    "dataset",
    "data_root",
    "sites",
    "split_file",
    "rounds",
    "local_epochs",
    "clients_per_round",
    "batch_size",
    "eval_batch_size",
    "optimizer",
    "lr",
    "weight_decay",
    "momentum",
    "dice_loss_classes",
    "nuclei_intensity",
    "image_size",
    "slice_neighbours",
    "n_train",
    "n_test",
    "init_features",
    "device",
    "eval_every",
    "proto_dp_epsilon",
    "proto_dp_noise",
    "proto_dp_clip",
    "dp_delta",
)


def _add_run_arguments(p: argparse.ArgumentParser, method_arguments: bool = True) -> None:
    d = RunConfig()
    if method_arguments:
        p.add_argument("--method", choices=list(METHODS), default=d.method)
    p.add_argument("--dataset", choices=list(DATA_SOURCES), default=d.dataset)
    p.add_argument("--data-root", help=f"folder of a real data set ({', '.join(file_sources())})")
    p.add_argument("--sites", type=_site_list, help="comma-separated site names (default: all)")
    p.add_argument("--split-file", help="a split.json of an earlier run, to reuse its split")
    p.add_argument("--rounds", type=_positive_int, default=d.rounds)
    p.add_argument("--local-epochs", type=_positive_int, default=d.local_epochs)
    p.add_argument("--clients-per-round", type=_positive_int, help="default: every client")
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size)
    p.add_argument(
        "--eval-batch-size",
        type=_positive_int,
        default=d.eval_batch_size,
        help="batch size of every evaluation; scores depend on it (BatchNorm uses batch "
        "statistics), and 16 is the released code's",
    )
    p.add_argument("--optimizer", choices=["adam", "sgd"], help="default: the dataset's")
    p.add_argument("--lr", type=float, help="default: the dataset's")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument(
        "--momentum", type=float, help="SGD momentum (default: the dataset's: nuclei 0, else 0.9)"
    )
    p.add_argument(
        "--dice-loss-classes",
        choices=DICE_LOSS_CLASSES,
        default=d.dice_loss_classes,
        help="classes the soft Dice loss averages over (all: background too, as released)",
    )
    p.add_argument(
        "--nuclei-intensity",
        choices=NUCLEI_INTENSITIES,
        default=d.nuclei_intensity,
        help="real nuclei images: per-image min-max (released) or ÷ the pixel type's maximum",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--image-size", type=_positive_int, help="default: the dataset's")
    p.add_argument(
        "--slice-neighbours",
        type=int,
        default=d.slice_neighbours,
        help="folder volumes: slices either side of each sample, stacked as extra channels",
    )
    p.add_argument("--n-train", type=_positive_int, default=d.n_train, help="synthetic only")
    p.add_argument("--n-test", type=_positive_int, default=d.n_test, help="synthetic only")
    p.add_argument("--init-features", type=_positive_int, default=d.init_features)
    p.add_argument("--device", default=d.device)
    p.add_argument("--eval-every", type=_positive_int, default=d.eval_every)
    p.add_argument("--checkpoint-every", type=_positive_int, default=d.checkpoint_every)
    p.add_argument("--client-timeout", type=float, help="seconds (default: no limit)")
    p.add_argument(
        "--screen-norm-factor",
        type=float,
        default=d.screen_norm_factor,
        help="reject updates this many times the median norm (0: off)",
    )
    p.add_argument("--screen-max-examples", type=_positive_int, default=d.screen_max_examples)
    p.add_argument(
        "--proto-dp-epsilon",
        type=float,
        help="differential privacy of the uploaded prototypes: total ε per site over the run, "
        "the noise solved for it (docs/privacy.md; default: off)",
    )
    p.add_argument(
        "--proto-dp-noise", type=float, help="prototype DP by noise multiplier instead of ε"
    )
    p.add_argument(
        "--proto-dp-clip",
        type=float,
        default=d.proto_dp_clip,
        help="prototype DP: L2 bound C on each image's per-class mean feature",
    )
    p.add_argument(
        "--dp-delta", type=float, help="δ of the reported ε (default: 1/(10·n), n a site's images)"
    )
    p.add_argument("--inject-faults", help="fault drill, e.g. site-B:nan@2 (docs/reliability.md)")
    if not method_arguments:
        return
    group = p.add_argument_group("method options (default: the method's own)")
    helps = _method_option_help()
    for name, default in _method_options().items():
        flag = "--" + name.replace("_", "-")
        text = helps.get(name)
        if isinstance(default, bool):
            group.add_argument(
                "--no-" + name.replace("_", "-"),
                dest=name,
                action="store_const",
                const=False,
                default=None,
                help=text,
            )
        elif isinstance(default, str):
            group.add_argument(flag, dest=name, default=None, help=text)
        elif isinstance(default, int):
            group.add_argument(flag, dest=name, type=int, default=None, help=text)
        else:
            group.add_argument(flag, dest=name, type=float, default=None, help=text)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields and k != "method_options"}
    options = {
        name: getattr(args, name)
        for name in _method_options()
        if getattr(args, name, None) is not None
    }
    return RunConfig(**values, method_options=options).resolved()


# Options of ``train`` that are no run setting: they may go with ``--resume``.
_NOT_RUN_SETTINGS = ("resume", "baseline", "quiet", "workers")


def _flags(names) -> str:
    return ", ".join("--" + name.replace("_", "-") for name in names)


def _resumed_config(args: argparse.Namespace, out: Path) -> RunConfig:
    """The configuration ``--resume`` continues ``out`` with: its config.json, with the run
    options given beside ``--resume``, which must agree with it but for the settings
    resuming may change (``RESUME_MAY_CHANGE``: ``--rounds``, ``--data-root``)."""
    from .run_folder import RESUME_MAY_CHANGE, read_config, resume_conflicts

    saved = read_config(out).resolved()
    given = args.given - set(_NOT_RUN_SETTINGS)
    if "out" in given and Path(args.out).resolve() != out.resolve():
        raise ValueError(f"--resume {out} continues that folder: leave out --out {args.out}")
    fields = {f.name for f in dataclasses.fields(RunConfig)} & given
    options = {name: getattr(args, name) for name in _method_options() if name in given}
    requested = dataclasses.replace(
        saved,
        **{name: getattr(args, name) for name in fields},
        method_options={**saved.method_options, **options},
    ).resolved()
    changed = resume_conflicts(saved, requested)
    if changed:
        raise ValueError(
            f"--resume continues {out} with its {out / 'config.json'}; {_flags(changed)} "
            f"differ from it, and resuming may change only {_flags(RESUME_MAY_CHANGE)}"
        )
    return dataclasses.replace(saved, **{f: getattr(requested, f) for f in RESUME_MAY_CHANGE})


def cmd_train(args: argparse.Namespace) -> int:
    from .data import load_sites
    from .data.splits import write_split
    from .run_folder import (
        CONFIG_FILE,
        SPLIT_FILE,
        console_log,
        default_run_dir,
        hold_run_folder,
        holds_run,
        read_baseline,
        read_records,
        split_file,
        write_run_summary,
    )
    from .simulation import Simulation, load_resume_checkpoint

    if args.resume:
        out = Path(args.resume)
        if not (out / CONFIG_FILE).is_file():
            raise ValueError(f"--resume {out}: no run to resume there (no {CONFIG_FILE})")
    else:
        config = config_from_args(args)
        out = Path(args.out) if args.out else default_run_dir(config)
    # Everything that can be refused is, before the data are read: the folder (a file, not
    # writable, in use), the resumed settings and checkpoint, and the baseline.
    with hold_run_folder(out), console_log(out):
        if args.resume:
            config = _resumed_config(args, out)
            checkpoint = load_resume_checkpoint(out, config)
            if holds_run(out):
                read_records(out)  # a line that is not a round record is named here
        elif holds_run(out):
            raise ValueError(
                f"{out} already holds a run; continue it with --resume {out}, "
                "or choose another --out"
            )
        if args.baseline:
            read_baseline(args.baseline, config)
        own_split = split_file(out) if args.resume else None
        data_config = config
        if own_split is not None:  # the run's split, whatever was added to the data since
            data_config = dataclasses.replace(config, split_file=str(own_split))
        sites = load_sites(data_config, workers=args.workers)
        simulation = Simulation(config, sites, out, progress=not args.quiet)
        if args.resume:
            simulation.resume(checkpoint)
            print(f"resuming {out} after round {simulation.completed_rounds}")
        if data_source(config.dataset).reads_files and own_split is None:
            write_split(sites, out / SPLIT_FILE)
        try:
            records = simulation.run()
        except OSError as error:
            raise RuntimeError(
                f"{error}; what the run wrote before is intact: fix the cause (e.g. free "
                f"space), then continue with fedbcs train --resume {out}"
            ) from None
        print(write_run_summary(out, config, records, args.baseline))
        faults = simulation.fault_summary()
        if faults:
            print("faults and rejected updates:\n" + faults)
        print(f"results in {out}/")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .client import evaluate_sites
    from .data import load_sites
    from .metrics import METRICS, class_key
    from .results import classes_of, table1
    from .round import evaluation_fields
    from .run_folder import CONFIG_FILE, model_from_file

    checkpoint = Path(args.checkpoint)
    config_path = Path(args.config) if args.config else checkpoint.parent / CONFIG_FILE
    config = RunConfig.load(config_path)
    if args.dataset:
        config = dataclasses.replace(config, dataset=args.dataset, data_root=args.data_root)
    if args.eval_batch_size:
        config = dataclasses.replace(config, eval_batch_size=args.eval_batch_size)
    config = config.resolved()
    # A foreign, truncated or non-finite model is refused before the data are read.
    model = model_from_file(checkpoint, config).to(config.device)
    sites = load_sites(config)
    results = evaluate_sites(model, sites, config)
    record = evaluation_fields(results)
    print(table1({config.method: [[record]]}, list(results), baseline=None, spread=False))
    for site, m in results.items():
        print(f"{site}: Dice {m['dice']:.4f}  HD95 {m['hd95']:.2f}  ASSD {m['assd']:.2f}")
        for c in classes_of(record):
            dice, hd95, assd = (m[class_key(metric, int(c))] for metric in METRICS)
            print(f"  class {c}: Dice {dice:.4f}  HD95 {hd95:.2f}  ASSD {assd:.2f}")
    return 0


def cmd_show_data(args: argparse.Namespace) -> int:
    from .data import load_sites
    from .data.plots import save_site_grid

    config = RunConfig(dataset=args.dataset, data_root=args.data_root, seed=args.seed).resolved()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    gray_channel = data_source(config.dataset).gray_channel
    save_site_grid(load_sites(config), out, per_site=args.per_site, gray_channel=gray_channel)
    print(f"wrote {out}")
    return 0


def _common_argv(args: argparse.Namespace) -> list[str]:
    argv = []
    for name in _COMMON:
        value = getattr(args, name)
        if value is None:
            continue
        if isinstance(value, list):
            value = ",".join(value)
        argv += ["--" + name.replace("_", "-"), str(value)]
    return argv


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import expand_methods, run_all, write_reports

    specs = expand_methods(args.methods)
    seeds = list(range(args.seeds))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_all(specs, seeds, out, _common_argv(args), jobs=args.jobs)
    print(write_reports(out, specs, seeds, args.dataset, args.rounds))
    print(f"tables and convergence.png in {out}/")
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from .data import check_data

    report = check_data(args.dataset, args.data_root, args.sites, workers=args.workers)
    print(report.format())
    return 0 if report.ok else 1


def cmd_calibrate_data(args: argparse.Namespace) -> int:
    from .calibrate import calibrate

    if args.seed != RunConfig.seed:
        raise ValueError("calibrate-data runs seeds 0..N-1: give --seeds N, not --seed")
    config = config_from_args(args)
    out = Path(args.out) if args.out else Path("runs") / f"calibrate-{config.dataset}"
    calibration = calibrate(
        config, range(args.seeds), out, progress=not args.quiet, workers=args.workers
    )
    print(calibration.markdown())
    print(f"calibration.md, calibration.json and calibration.png in {out}/")
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    from .diagnose import REPORT_FILES, diagnose, write_reports

    diagnosis = diagnose(
        args.run, args.split, args.folds, args.seed, args.device, progress=not args.quiet
    )
    out = Path(args.out)
    write_reports(diagnosis, out)
    print(diagnosis.markdown())
    print(f"{', '.join(REPORT_FILES)} in {out}/")
    return 0


def cmd_flower_local(args: argparse.Namespace) -> int:
    from .flower.local import run_local
    from .run_folder import SUMMARY_FILE, default_run_dir

    config = config_from_args(args)
    out = Path(args.out) if args.out else default_run_dir(config, flower=True)
    report = run_local(config, args.clients, out, args.fail_partition, args.timeout)
    if not report["ok"]:
        print(
            f"fedbcs flower-local: run {report['run_id']} ended {report['status']} after "
            f"{report['rounds_completed']}/{config.rounds} rounds; logs in {report['logs']}",
            file=sys.stderr,
        )
        return 1
    print((out / SUMMARY_FILE).read_text())
    print(f"run {report['run_id']} {report['status']}; results in {out}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fedbcs", description="FedBCS federated segmentation")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="run a federated experiment (default: FedBCS)")
    _add_run_arguments(train)
    train.add_argument("--out", help="run folder (default: runs/<method>-<dataset>-seed<seed>)")
    train.add_argument("--resume", metavar="DIR", help="continue a killed run from its folder")
    train.add_argument("--baseline", help="a FedAvg run folder to report Δ against")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("--workers", type=int, default=0, help="processes decoding real data")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="evaluate a saved global model")
    evaluate.add_argument("--checkpoint", required=True, help="model.safetensors of a run")
    evaluate.add_argument("--config", help="its config.json (default: beside the checkpoint)")
    evaluate.add_argument("--dataset", choices=list(DATA_SOURCES), help="default: the run's")
    evaluate.add_argument("--data-root")
    evaluate.add_argument(
        "--eval-batch-size", type=_positive_int, help="default: the run's (config.json)"
    )
    evaluate.set_defaults(func=cmd_eval)

    show = commands.add_parser("show-data", help="a PNG grid of example images per site")
    show.add_argument("--dataset", choices=list(DATA_SOURCES), default="synthetic-nuclei")
    show.add_argument("--data-root")
    show.add_argument("--seed", type=int, default=0)
    show.add_argument("--per-site", type=_positive_int, default=4)
    show.add_argument("--out", required=True, help="PNG path")
    show.set_defaults(func=cmd_show_data)
    compare = commands.add_parser("compare", help="several methods × seeds, one table")
    compare.add_argument(
        "--methods",
        default="fedavg,fedbcs",
        help="'all' or comma-separated specs, e.g. fedavg,fedbcs,fedbcs/no-fsr",
    )
    compare.add_argument("--seeds", type=_positive_int, default=3, help="seeds 0..N-1")
    compare.add_argument("--jobs", type=_positive_int, default=1, help="runs at a time")
    compare.add_argument("--out", required=True, help="comparison folder (resumable)")
    _add_run_arguments(compare, method_arguments=False)
    compare.set_defaults(func=cmd_compare)

    check = commands.add_parser("check-data", help="validate a real data folder")
    check.add_argument("--dataset", choices=file_sources(), required=True)
    check.add_argument("--data-root", required=True)
    check.add_argument("--sites", type=_site_list)
    check.add_argument("--workers", type=int, default=0, help="processes decoding files")
    check.set_defaults(func=cmd_check_data)

    calibrate = commands.add_parser(
        "calibrate-data",
        help="does a data set carry domain shift? site-local transfer, FedAvg, pooled, style",
    )
    _add_run_arguments(calibrate, method_arguments=False)
    calibrate.add_argument("--seeds", type=_positive_int, default=1, help="seeds 0..N-1")
    calibrate.add_argument("--out", help="report folder (default: runs/calibrate-<dataset>)")
    calibrate.add_argument("--quiet", action="store_true", help="no progress bar")
    calibrate.add_argument("--workers", type=int, default=0, help="processes decoding real data")
    calibrate.set_defaults(func=cmd_calibrate_data)

    diagnose = commands.add_parser(
        "diagnose", help="per layer, how much site style the features of trained runs still hold"
    )
    diagnose.add_argument(
        "--run", action="append", required=True, metavar="DIR", help="a finished run (repeat)"
    )
    diagnose.add_argument("--split", choices=["train", "val", "test"], default="test")
    diagnose.add_argument("--out", default="runs/diagnose", help="report folder")
    diagnose.add_argument("--seed", type=int, default=0, help="shuffles the folds")
    diagnose.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    diagnose.add_argument("--device", help="default: each run's")
    diagnose.add_argument("--quiet", action="store_true", help="no progress bar")
    diagnose.set_defaults(func=cmd_diagnose)

    flower = commands.add_parser(
        "flower-local", help="a real Flower deployment on loopback (SuperLink + SuperNodes)"
    )
    _add_run_arguments(flower)
    flower.add_argument("--clients", type=_positive_int, default=2, help="SuperNodes (sites)")
    flower.add_argument("--out", help="run folder (default: runs/flower-<method>-...)")
    flower.add_argument("--timeout", type=float, default=3600.0, help="seconds for the run")
    flower.add_argument(
        "--fail-partition", type=int, default=-1, help="fault injection: this node's train raises"
    )
    flower.set_defaults(func=cmd_flower_local)
    for command in commands.choices.values():  # to tell given options from defaults
        command.set_defaults(command_parser=command)
    return parser


_UNSET = object()


def _given_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations that ``argv`` sets, not by default: argparse fills in a default
    only where the namespace has no value yet."""
    appending = (argparse._AppendAction, argparse._AppendConstAction, argparse._ExtendAction)
    unset = {
        action.dest: None if isinstance(action, appending) else _UNSET  # they append to it
        for action in parser._actions
    }
    namespace = argparse.Namespace(**unset)
    parser.parse_args(argv, namespace)
    return {dest for dest, value in vars(namespace).items() if value is not unset.get(dest, _UNSET)}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.given = _given_options(args.command_parser, argv[1:])
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError) as error:
        print(f"fedbcs {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
