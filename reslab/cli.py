"""The `reslab` command: train, resume, data, models, and the study's experiments."""
from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .errors import ReslabError

DESCRIPTION = """Fast, trustworthy image-classification studies in PyTorch: does a residual connection help, and
how well does a network trained on one dataset transfer to another?"""

EPILOG = """examples:
  reslab train --model mlp --dataset mnist --data-dir ../shared/data
  reslab train --model rescnn --depth 6 --dataset cifar10 --epochs 30
  reslab resume runs/mlp-mnist-seed0
  reslab data verify --data-dir ../shared/data
  reslab run ex1 --seeds 3          (one exercise of the study; `reslab list` shows them)
  reslab lab --profile quick        (the whole study, then runs/lab/report.md)

data: files are read in torchvision's layouts (MNIST/raw, FashionMNIST/raw, cifar-10-batches-py,
cifar-100-python) under --data-dir, else $RESLAB_DATA, else ./data; missing files are downloaded."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake in one line (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


MODEL_FLAGS = {   # the model arguments that have a flag (they go into model_args, for the models that take them)
    "depth": (int, "conv layers (cnn) or BasicBlocks (rescnn, noskipcnn)"),
    "width": (int, "hidden width (resmlp) or first conv width (cnn, rescnn, noskipcnn)"),
    "blocks": (int, "residual blocks of resmlp (default 2)"),
    "hidden": (int, "hidden sizes of mlp (default 128 64)"),
    "dropout": (float, "dropout probability (default 0.2)"),
}
GROUP_HELP = {"early stopping": "stagnation: stop after PATIENCE epochs in a row without val_loss < best - "
                                "MIN_DELTA; overfitting: stop after OVERFIT_PATIENCE epochs in a row with val_loss > "
                                "best * (1 + OVERFIT_RATIO) + OVERFIT_DELTA (best: the lowest val loss before that "
                                "epoch; the older absolute rule is --overfit-ratio 0 --overfit-delta 0.02)"}
FLAG_ALIASES = {"log_grad_norms": ["--grad-norms"]}


def _train_options(p: argparse.ArgumentParser) -> None:
    """Flags shared by `train` and (as overrides) the experiments, one per TrainConfig setting, with its help."""
    import dataclasses
    import typing

    from .config import TrainConfig
    hints = typing.get_type_hints(TrainConfig)
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        if not meta["flag"]:
            continue
        if meta["group"] not in groups:
            groups[meta["group"]] = p.add_argument_group(meta["group"], GROUP_HELP.get(meta["group"]))
            if meta["group"] == "model and data":
                for name, (kind, text) in MODEL_FLAGS.items():
                    groups[meta["group"]].add_argument(f"--{name}", type=kind, nargs="+" if name == "hidden" else None,
                                                       default=argparse.SUPPRESS, help=text)
        flags = [f"--{f.name.replace('_', '-')}", *FLAG_ALIASES.get(f.name, [])]
        kinds = typing.get_args(hints[f.name]) or (hints[f.name],)
        shown = "on" if f.default is True else "off" if f.default is False else f.default
        text = meta["help"] + ("" if f.default is None or f.default == dataclasses.MISSING else f" (default {shown})")
        options: dict[str, Any] = {"default": argparse.SUPPRESS, "help": text.replace("%", "%%")}
        if bool in kinds:
            options["action"] = argparse.BooleanOptionalAction
        elif int in kinds:
            options["type"] = int
        elif float in kinds:
            options["type"] = float
        if meta["choices"]:
            options["choices"] = meta["choices"]
        groups[meta["group"]].add_argument(*flags, dest=f.name, **options)


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig settings given on the command line (model flags go into model_args)."""
    values = {k: v for k, v in vars(args).items() if k not in ("command", "func", "debug")}
    model_args = {k: values.pop(k) for k in MODEL_FLAGS if k in values}
    if model_args:
        values["model_args"] = model_args
    return values


def build_config(file: str | None, overrides: dict[str, Any]):
    """TrainConfig from an optional YAML file with flags on top."""
    from .config import TrainConfig, load_yaml
    from .errors import ConfigError
    values = load_yaml(file) if file else {}
    source = file or "config"
    file_model_args = values.pop("model_args", None) or {}
    if not isinstance(file_model_args, dict):
        raise ConfigError(f"{source}: model_args must be a mapping, got {file_model_args!r}")
    model_args = {**file_model_args, **overrides.pop("model_args", {})}
    return TrainConfig.from_dict({**values, **overrides, "model_args": model_args}, source)


def cmd_train(args: argparse.Namespace) -> int:
    from .run import run_training
    overrides = overrides_from(args)
    file, resume, overwrite, name = (overrides.pop(k, None) for k in ("config", "resume", "overwrite", "name"))
    if name:
        overrides["name"] = name
    config = build_config(file, overrides)
    if resume:
        refuse_changed_settings(config, overrides)
    summary = run_training(config, resume=bool(resume), overwrite=bool(overwrite))
    return 130 if summary["stopped_by"] == "interrupted" else 0


def refuse_changed_settings(config: Any, overrides: dict[str, Any]) -> None:
    """--resume continues a run with its saved settings: a flag that would change one is an error, not ignored."""
    from .checkpoint import MODEL_FIELDS, read_checkpoint
    from .config import RUN_LOCATORS
    from .errors import ConfigError
    last = config.run_dir / "last.pth"
    if not last.is_file():
        return   # run_training says what is missing
    saved = read_checkpoint(last, MODEL_FIELDS + ("config",))["config"]
    changed = sorted(k for k, v in overrides.items() if k not in RUN_LOCATORS and saved.get(k) != v)
    if changed:
        raise ConfigError(f"--resume continues the run with its saved settings; "
                          f"{', '.join(f'{k}={saved.get(k)!r}' for k in changed)} cannot change (drop the flags, "
                          "or start a new run with --name)")


def cmd_resume(args: argparse.Namespace) -> int:
    from .config import TrainConfig
    from .run import run_training
    run_dir = Path(args.run_dir).resolve()   # `reslab resume .` names the folder by its real name
    config = TrainConfig(out=str(run_dir.parent), name=run_dir.name, data_dir=args.data_dir)
    summary = run_training(config, resume=True)
    return 130 if summary["stopped_by"] == "interrupted" else 0


def cmd_data(args: argparse.Namespace) -> int:
    from .datasets import (
        UNCHECKED,
        get_spec,
        layout_to_read,
        list_datasets,
        load_dataset,
        resolve_data_dir,
        verify_dataset,
    )
    names = args.dataset or list_datasets()
    if args.action == "download":
        for name in names:
            data = load_dataset(name, args.data_dir)
            print(f"{name}: {len(data.train_labels)} train + {len(data.test_labels)} test images in "
                  f"{resolve_data_dir(args.data_dir) / data.layout} ({data.provenance})")
        return 0
    all_official = True
    for name in names:
        layout = layout_to_read(name, args.data_dir)   # None: nothing complete, `reslab train` would download
        read_folder = resolve_data_dir(args.data_dir) / layout.folder if layout else None
        all_official &= layout is not None
        for path, status in verify_dataset(name, args.data_dir):
            read = path.parent == read_folder
            mark = "  (read by reslab train)" if read else ""
            print(f"{name:13s} {status:9s}  {path}{mark}" if status in ("official", "missing")
                  else f"{name:13s} {status}  {path}{mark}")
            if read and status != UNCHECKED:   # class-name files without an official md5 do not count
                all_official &= status == "official"
        if layout is None:
            folders = " or ".join(f"{lay.folder}/" for lay in get_spec(name).layouts)
            print(f"{name:13s} no complete copy in {folders}: `reslab data download --dataset {name}` fetches the "
                  "official release")
    return 0 if all_official else 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .run import evaluate_checkpoint
    m = evaluate_checkpoint(args.checkpoint, args.dataset, args.data_dir, args.device)
    print(f"{m['model']} on {m['dataset']} test: loss {m['loss']:.4f}  accuracy {100 * m['accuracy']:.2f}%  "
          f"precision {100 * m['precision']:.2f}%  recall {100 * m['recall']:.2f}%  f1 {100 * m['f1']:.2f}%")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models, model_arguments
    for name in list_models():
        args_text = ", ".join(f"{k}={v}" for k, v in model_arguments(name).items())
        print(f"{name:8s} {args_text}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .experiments import list_experiments
    for name, description in list_experiments():
        print(f"{name:14s} {description}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .study import run_experiment
    overrides = overrides_from(args)
    for key in ("experiment", "seeds", "profile", "overwrite", "jobs", "only"):
        overrides.pop(key, None)
    only = [label.strip() for label in args.only.split(",") if label.strip()] if args.only is not None else None
    result = run_experiment(args.experiment, seeds=args.seeds, profile=args.profile, overrides=overrides,
                            overwrite=args.overwrite, jobs=args.jobs, only=only)
    return 0 if result["status"] == "done" else 1


def cmd_lab(args: argparse.Namespace) -> int:
    from .study import run_lab
    overrides = overrides_from(args)
    for key in ("seeds", "profile", "overwrite", "jobs"):
        overrides.pop(key, None)
    result = run_lab(seeds=args.seeds, profile=args.profile, overrides=overrides, overwrite=args.overwrite,
                     jobs=args.jobs)
    return 0 if all(r["status"] == "done" for r in result["results"]) else 1   # as `reslab run` does


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report
    print(write_report(Path(args.folder)))
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="reslab", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        """A subcommand; every command takes --debug."""
        return sub.add_parser(name, parents=[common], **kwargs)

    p = command("train", help="train and test one model", description="Train one model with early "
                       "stopping, keep the best weights, test them; writes runs/NAME/ (config.yaml, "
                       "metrics.jsonl, best_model.pth, last.pth, summary.json).")
    p.add_argument("--config", default=argparse.SUPPRESS, help="YAML file of settings (flags override it)")
    p.add_argument("--name", default=argparse.SUPPRESS, help="run folder name (default MODEL[DEPTH]-DATASET-seedN)")
    p.add_argument("--resume", action="store_true", default=argparse.SUPPRESS, help="continue the run in its folder")
    p.add_argument("--overwrite", action="store_true", default=argparse.SUPPRESS, help="replace an existing run folder")
    _train_options(p)
    p.set_defaults(func=cmd_train)

    p = command("resume", help="continue an interrupted run", description="Continue a run from its last.pth "
                       "with its saved settings (a finished run is left as it is).")
    p.add_argument("run_dir", help="the run folder, e.g. runs/mlp-mnist-seed0")
    p.add_argument("--data-dir", help="where the run's data is now, if it moved (default: where it was)")
    p.set_defaults(func=cmd_resume)

    p = command("data", help="verify or download datasets",
                       description="verify: list every file of every layout found in the data folder (CIFAR: the "
                       "binary folder cifar-10-batches-bin / cifar-100-binary and the python folder "
                       "cifar-10-batches-py / cifar-100-python), one line each, with whether its md5 is the official "
                       "one, and mark the files `reslab train` reads (the binary layout when both are complete). "
                       "Exit 0 when, for every dataset asked, the layout that would be read is the official release "
                       "(class-name files without an official md5 aside); exit 1 otherwise, also when a dataset has no "
                       "complete layout. download: fetch missing files from the official sources (CIFAR: the python "
                       "archive) unless a complete layout is present.")
    p.add_argument("action", choices=["verify", "download"])
    p.add_argument("--dataset", nargs="+", help="datasets (default all)")
    p.add_argument("--data-dir", help="folder holding the datasets (default $RESLAB_DATA or ./data)")
    p.set_defaults(func=cmd_data)

    p = command("evaluate", help="test a saved model (best_model.pth)",
                       description="Test a checkpoint on a dataset's test split (default: the one it was trained on).")
    p.add_argument("checkpoint", help="a best_model.pth or last.pth")
    p.add_argument("--dataset", help="dataset to test on (same image shape and classes)")
    p.add_argument("--data-dir", help="folder holding the datasets (default $RESLAB_DATA or ./data)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.set_defaults(func=cmd_evaluate)

    p = command("models", help="list the models and their arguments")
    p.set_defaults(func=cmd_models)

    p = command("list", help="list the shipped experiments")
    p.set_defaults(func=cmd_list)

    reuse = ("A finished run with the same settings is reused, in this experiment's folder or copied from another "
             "experiment's beside it (same --out): ex1.2's MLP runs are ex1's. An interrupted run is resumed. Each "
             "experiment folder gets report.md with the lab's tables, figures and findings. Exit status 1 when an "
             "experiment was not run (e.g. its data is missing and cannot be downloaded; the others still run).")
    for name, func, helptext in (("run", cmd_run, "run one experiment (a shipped name or a YAML file)"),
                                 ("lab", cmd_lab, "run the four reference exercises in order, then the report")):
        p = command(name, help=helptext, description=f"{helptext[0].upper()}{helptext[1:]}. {reuse}")
        if name == "run":
            p.add_argument("experiment", help="experiment name (see `reslab list`) or a YAML file")
            p.add_argument("--only", metavar="LABELS",
                           help="train only these models of the experiment, comma-separated run labels as in its "
                                "tables (e.g. rescnn6,noskipcnn6), started in this order; the report also shows "
                                "its other finished runs")
        p.add_argument("--seeds", type=int, default=1, help="repeat every model with seeds 0..N-1 (default 1)")
        p.add_argument("--profile", choices=["quick", "full"], default="full",
                       help="full = the reference protocol; quick = fewer epochs/images (default full)")
        p.add_argument("--overwrite", action="store_true", help="replace existing run folders")
        p.add_argument("--jobs", type=int, default=1,
                       help="train up to N runs of a training experiment at once, each in its own process on "
                            "the same device (default 1): a GPU that one small model leaves mostly idle gets "
                            "through a study sooner; on a CPU they only share the cores (transfer experiments "
                            "run one step at a time)")
        _train_options(p)
        p.set_defaults(func=func)

    p = command("report", help="regenerate report.md from run folders")
    p.add_argument("folder", help="an experiment's or the lab's output folder")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except ReslabError as exc:
        return _one_line(str(exc), args.debug)
    except KeyboardInterrupt:
        print("reslab: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:   # a full disk, a vanished folder, even wrapped in another error: what and where
        from .runfolder import find_os_error
        error = find_os_error(exc)
        if error is None:
            raise   # a bug: the traceback says where
        where = f": {error.filename}" if error.filename else ""
        return _one_line(f"{_lower_first(error.strerror or str(error))}{where}", args.debug)


def _one_line(message: str, debug: bool) -> int:
    """Say what went wrong in one line on stderr (with the traceback first under --debug); exit code 2."""
    if debug:
        traceback.print_exc()
    print(f"reslab: error: {message}", file=sys.stderr)
    return 2


def _lower_first(text: str) -> str:
    """'No space left on device' -> 'no space left on device', as reslab's own messages read."""
    return text[:1].lower() + text[1:]


def entry() -> None:
    sys.exit(main())
