"""The ``fedbcs`` command: train, eval, show-data, compare, check-data, calibrate-data,
flower-local.

Bad arguments print one line naming the valid choices and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .aggregation import AGGREGATIONS
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
    value = int(text)
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
    "n_train",
    "n_test",
    "init_features",
    "device",
    "eval_every",
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
        "--screen-count-factor",
        type=float,
        default=d.screen_count_factor,
        help="count a site's examples at most this many times the median of the others' (0: off)",
    )
    p.add_argument(
        "--aggregation",
        choices=AGGREGATIONS,
        default=d.aggregation,
        help="of the model weights: the method's mean, or a robust rule (docs/reliability.md)",
    )
    p.add_argument(
        "--stall-rounds",
        type=_positive_int,
        default=d.stall_rounds,
        help="stop with an error after this many rounds in a row with no reply aggregated",
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


def cmd_train(args: argparse.Namespace) -> int:
    from .data import load_sites
    from .data.splits import write_split
    from .run_folder import default_run_dir, holds_run, read_config, write_run_summary
    from .simulation import Simulation

    if args.resume:
        out = Path(args.resume)
        config = read_config(out)
    else:
        config = config_from_args(args)
        out = Path(args.out) if args.out else default_run_dir(config)
        if holds_run(out):
            raise ValueError(
                f"{out} already holds a run; continue it with --resume {out}, "
                "or choose another --out"
            )
    sites = load_sites(config, workers=args.workers)
    simulation = Simulation(config, sites, out, progress=not args.quiet)
    if args.resume:
        simulation.resume()
        print(f"resuming {out} after round {simulation.completed_rounds}")
    if data_source(config.dataset).reads_files and not (out / "split.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        write_split(sites, out / "split.json")
    records = simulation.run()
    print(write_run_summary(out, config, records, args.baseline))
    faults = simulation.fault_summary()
    if faults:
        print("faults and rejected updates:\n" + faults)
    print(f"results in {out}/")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import load_file

    from .data import load_sites
    from .results import table1
    from .run_folder import CONFIG_FILE
    from .simulation import Simulation

    checkpoint = Path(args.checkpoint)
    config_path = Path(args.config) if args.config else checkpoint.parent / CONFIG_FILE
    config = RunConfig.load(config_path)
    if args.dataset:
        config = dataclasses.replace(config, dataset=args.dataset, data_root=args.data_root)
    if args.eval_batch_size:
        config = dataclasses.replace(config, eval_batch_size=args.eval_batch_size)
    config = config.resolved()
    sites = load_sites(config)
    simulation = Simulation(config, sites, out_dir=None, progress=False)
    weights = load_file(str(checkpoint))
    model = simulation.algorithm.build_model()
    missing = sorted(set(model.state_dict()) ^ set(weights))
    if missing:
        raise ValueError(
            f"{checkpoint} does not fit a {config.method} model: keys differ ({missing[:3]}...)"
        )
    model.load_state_dict(weights)
    with torch.no_grad():
        results = simulation.evaluate(model.to(simulation.device))
    dice = {site: m["dice"] for site, m in results.items()}
    print(table1({config.method: [[{"dice": dice}]]}, list(dice), baseline=None, spread=False))
    for site, m in results.items():
        print(f"{site}: Dice {m['dice']:.4f}  HD95 {m['hd95']:.2f}  ASSD {m['assd']:.2f}")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"fedbcs {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
