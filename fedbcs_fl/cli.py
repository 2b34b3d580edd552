"""The ``fedbcs`` command: train, eval, show-data, compare, check-data, calibrate-data,
diagnose, audit-privacy, flower-local.

Bad arguments print one line naming the valid choices and exit with status 2.

The parser is built from declarations that import no torch (the run settings, the methods
and their options, the data sources), so ``fedbcs --help`` answers in well under a second;
a command imports torch when it runs (issue 18).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .algorithms import METHODS
from .config import RUN_SETTINGS, RunConfig
from .data import data_source, file_sources
from .schema import AT_LEAST_ONE, Option, flag

EXIT_USAGE = 2
# The run settings ``fedbcs eval`` may change in the run's config.
_EVAL_SETTINGS = ("dataset", "data_root", "eval_batch_size")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error instead of the usage block."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    """A positive integer, also in scientific notation ("1e4"), as a setting's is
    (:meth:`~fedbcs_fl.schema.Option.parse`)."""
    try:
        value = _COUNT.parse(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


_COUNT = Option(1, "a count", interval=AT_LEAST_ONE)


def _argument_type(option: Option, check: bool = True):
    """argparse's ``type=`` for ``option``: its :meth:`~Option.parse`, and with ``check``
    its rules (a method option is checked when its method is known, to name it)."""

    def convert(text: str):
        try:
            value = option.parse(text)
            return option.check(value) if check else value
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def _add_setting(parser, name: str, **changes) -> None:
    """The run setting ``name`` as the option ``--kebab-name`` of ``parser`` (a parser or
    an argument group), declared by its :data:`RUN_SETTINGS` entry; ``changes`` replace
    argparse arguments (e.g. ``help=``, ``required=``). Not given, it is None."""
    declared = RUN_SETTINGS[name]
    arguments = {
        "dest": name,
        "type": _argument_type(declared),
        "choices": declared.choices,
        "default": None,
        "help": declared.describe().replace("%", "%%"),
    }
    parser.add_argument(flag(name), **(arguments | changes))


def _refuse(message: str):
    """argparse's ``type=`` of an option a command does not take: ``message`` says why."""

    def refuse(text: str):
        raise argparse.ArgumentTypeError(message)

    return refuse


def _method_options() -> dict[str, Option]:
    """Every method option by name (one flag for every method that has it), as the first
    method declares it; ``TypeError`` where two methods give one name two types."""
    merged: dict[str, Option] = {}
    for method, declared in METHODS.items():
        for name, option in declared.options.items():
            first = merged.setdefault(name, option)
            if first.type is not option.type:
                raise TypeError(
                    f"{method} option {name} is {option.type.__name__}, but "
                    f"{first.type.__name__} in another method: one flag cannot take both"
                )
    return merged


def _option_flag(name: str, option: Option) -> str:
    """``--tau``; a switch is named for the change from its default (``--no-fsr``)."""
    if option.type is bool and option.default:
        return flag("no_" + name)
    return flag(name)


def _add_method_options(parser: argparse.ArgumentParser) -> None:
    """One option per method-option name, hidden, which parses it; and for each method a
    group of the help that lists its options with its own help and defaults."""
    for name, option in _method_options().items():
        if option.type is bool:
            switch = {"action": "store_const", "const": not option.default}
        else:
            switch = {"type": _argument_type(option, check=False)}
        parser.add_argument(
            _option_flag(name, option), dest=name, default=None, help=argparse.SUPPRESS, **switch
        )
    for method, declared in METHODS.items():
        if not declared.options:
            continue
        group = parser.add_argument_group(f"{method} options (with --method {method})")
        for name, option in declared.options.items():
            # argparse lists an option in one group only; this entry only shows the flag,
            # with this method's help, in this method's group.
            shown = argparse.Action(
                [_option_flag(name, option)],
                dest=name,
                nargs=0 if option.type is bool else None,
                choices=option.choices,
                help=option.describe().replace("%", "%%"),
            )
            group._group_actions.append(shown)


def _add_run_arguments(parser: argparse.ArgumentParser, per_run: bool = True) -> None:
    """The run settings as options. With ``per_run`` (commands that make one run) also
    ``--method``, ``--seed``, ``--config`` and every method's options; without (commands
    that run seeds 0..N-1 themselves) ``--seed`` is refused."""
    group = parser.add_argument_group("run settings")
    for name, declared in RUN_SETTINGS.items():
        if declared.cli and (per_run or not declared.per_run):
            _add_setting(group, name)
    if not per_run:
        parser.add_argument(
            "--seed", type=_refuse("give --seeds N, not --seed"), help=argparse.SUPPRESS
        )
        return
    group.add_argument(
        "--config",
        metavar="FILE",
        help="the settings of a saved config: JSON (e.g. a run's config.json) or TOML, "
        "with config.json's field names; the options given here override it (its method "
        "options only while --method stays its method)",
    )
    _add_method_options(parser)


def _given(args: argparse.Namespace, names) -> dict:
    """The settings or options of ``names`` given on the command line (else None)."""
    return {name: value for name in names if (value := getattr(args, name, None)) is not None}


def config_from_args(args: argparse.Namespace, defaults: dict | None = None) -> RunConfig:
    """The resolved config of the run ``args`` ask for: the ``--config`` file's (if one;
    else ``RunConfig(**defaults)``), with every setting and method option given on the
    command line over it."""
    config_file = getattr(args, "config", None)
    base = RunConfig.load(config_file) if config_file else RunConfig(**(defaults or {}))
    given = _given(args, RUN_SETTINGS)
    if given.get("method", base.method) != base.method:
        base = dataclasses.replace(base, method_options={})  # they were the other method's
    options = base.method_options | _given(args, _method_options())
    return dataclasses.replace(base, **given, method_options=options).resolved()


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
        if args.config:
            raise ValueError("--resume continues a run with its own config.json: drop --config")
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
    given = _given(args, _EVAL_SETTINGS)
    if "dataset" in given:  # the run's data root holds the run's data set
        given.setdefault("data_root", None)
    config = dataclasses.replace(RunConfig.load(config_path), **given).resolved()
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

    config = config_from_args(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    gray_channel = data_source(config.dataset).gray_channel
    save_site_grid(load_sites(config), out, per_site=args.per_site, gray_channel=gray_channel)
    print(f"wrote {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import expand_methods, run_all, write_reports

    specs = expand_methods(args.methods)
    seeds = list(range(args.seeds))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = config_from_args(args)
    run_all(specs, seeds, out, settings, jobs=args.jobs)
    print(write_reports(out, specs, seeds, settings.dataset, settings.rounds))
    print(f"tables and convergence.png in {out}/")
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from .data import check_data

    report = check_data(args.dataset, args.data_root, args.sites, workers=args.workers)
    print(report.format())
    return 0 if report.ok else 1


def cmd_calibrate_data(args: argparse.Namespace) -> int:
    from .calibrate import calibrate

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


def cmd_audit_privacy(args: argparse.Namespace) -> int:
    from .audit import AUDIT_DEFAULTS, audit_privacy
    from .data import load_sites
    from .run_folder import atomic_write_text

    config = config_from_args(args, AUDIT_DEFAULTS)
    out = Path(args.out) if args.out else Path("runs") / f"audit-privacy-{config.method}"
    site = load_sites(config)[0]
    report = audit_privacy(config, site, args.trials, args.confidence)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "audit.json", report.to_json())
    atomic_write_text(out / "audit.md", report.markdown())
    print(report.markdown())
    print(f"audit.json and audit.md in {out}/")
    return 0


def cmd_flower_local(args: argparse.Namespace) -> int:
    from .flower.local import run_local
    from .run_folder import SUMMARY_FILE, default_run_dir

    config = config_from_args(args)
    out = Path(args.out) if args.out else default_run_dir(config, flower=True)
    report = run_local(
        config,
        args.clients,
        out,
        args.fail_partition,
        args.timeout,
        tls=args.tls or args.auth,  # Flower authenticates SuperNodes only over TLS
        auth=args.auth,
    )
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
    for name in _EVAL_SETTINGS:
        _add_setting(evaluate, name, help=RUN_SETTINGS[name].describe(default="the run's"))
    evaluate.set_defaults(func=cmd_eval)

    show = commands.add_parser("show-data", help="a PNG grid of example images per site")
    for name in ("dataset", "data_root", "seed"):
        _add_setting(show, name)
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
    _add_run_arguments(compare, per_run=False)
    compare.set_defaults(func=cmd_compare)

    check = commands.add_parser("check-data", help="validate a real data folder")
    _add_setting(check, "dataset", choices=file_sources(), required=True, help="the data set")
    _add_setting(check, "data_root", required=True)
    _add_setting(check, "sites")
    check.add_argument("--workers", type=int, default=0, help="processes decoding files")
    check.set_defaults(func=cmd_check_data)

    calibrate = commands.add_parser(
        "calibrate-data",
        help="does a data set carry domain shift? site-local transfer, FedAvg, pooled, style",
    )
    _add_run_arguments(calibrate, per_run=False)
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

    audit = commands.add_parser(
        "audit-privacy",
        help="how well one site's uploaded prototypes reveal a canary image, with prototype "
        "DP off and on: an empirical lower bound on ε beside the accounted one",
        description="Audit the first site's prototypes (docs/privacy.md). Unless given, the "
        "run is small: image size 32, init features 8, 8 training images per site on "
        "synthetic data; the DP arm uses --proto-dp-epsilon 8 unless a prototype DP "
        "setting is given.",
    )
    _add_run_arguments(audit)
    audit.add_argument(
        "--trials", type=_positive_int, default=500, help="releases per world and arm"
    )
    audit.add_argument(
        "--confidence", type=float, default=0.95, help="of the Clopper-Pearson intervals"
    )
    audit.add_argument("--out", help="report folder (default: runs/audit-privacy-<method>)")
    audit.set_defaults(func=cmd_audit_privacy)

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
    flower.add_argument(
        "--tls",
        action="store_true",
        help="every API over TLS, with a throwaway CA and certificate (default: no TLS)",
    )
    flower.add_argument(
        "--auth",
        action="store_true",
        help="SuperNode authentication with throwaway registered keys; turns --tls on",
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
