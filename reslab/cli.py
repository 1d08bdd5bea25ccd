"""The `reslab` command: train, resume, data, models, and the study's experiments."""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Any, Sequence

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

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _train_options(p: argparse.ArgumentParser) -> None:
    """Flags shared by `train` and (as overrides) the experiments; a flag left out keeps the file's value."""
    S = argparse.SUPPRESS
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=S, help="model name: mlp, resmlp, cnn, rescnn (default mlp)")
    g.add_argument("--dataset", default=S, help="mnist, fashionmnist, cifar10, cifar100 (default mnist)")
    g.add_argument("--depth", type=int, default=S, help="conv layers (cnn) or residual blocks (rescnn)")
    g.add_argument("--width", type=int, default=S, help="hidden width (resmlp) or first conv width (cnn, rescnn)")
    g.add_argument("--blocks", type=int, default=S, help="residual blocks of resmlp (default 2)")
    g.add_argument("--hidden", type=int, nargs="+", default=S, help="hidden sizes of mlp (default 128 64)")
    g.add_argument("--dropout", type=float, default=S, help="dropout probability (default 0.2)")
    g.add_argument("--data-dir", default=S, help="folder holding the datasets (default $RESLAB_DATA or ./data)")
    g.add_argument("--val-fraction", type=float, default=S, help="stratified validation share (default 0.1)")
    g.add_argument("--train-subset", type=int, default=S, help="train on only this many images (default all)")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=S,
                   help="random crop + flip (default: on for CIFAR)")
    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int, default=S, help="maximum epochs (default 50)")
    g.add_argument("--batch-size", type=int, default=S, help="training batch size (default 128)")
    g.add_argument("--lr", type=float, default=S, help="Adam learning rate (default 1e-3)")
    g.add_argument("--weight-decay", type=float, default=S, help="Adam weight decay (default 0)")
    g.add_argument("--seed", type=int, default=S, help="seed for split, init, batches, augmentation (default 0)")
    g = p.add_argument_group("early stopping",
                             "stagnation: stop after PATIENCE epochs without val_loss < best - MIN_DELTA; "
                             "overfitting: stop after OVERFIT_PATIENCE epochs in a row with "
                             "val_loss > best * (1 + OVERFIT_RATIO) + OVERFIT_DELTA (best: the lowest val loss "
                             "before that epoch; the older absolute rule is --overfit-ratio 0 --overfit-delta 0.02)")
    g.add_argument("--patience", type=int, default=S, help="stagnation patience in epochs (default 5)")
    g.add_argument("--min-delta", type=float, default=S, help="smallest val-loss drop that counts (default 0)")
    g.add_argument("--overfit-patience", type=int, default=S, help="overfitting epochs in a row (default 3)")
    g.add_argument("--overfit-ratio", type=float, default=S,
                   help="val-loss rise over the best, as a fraction of the best (default 0.15)")
    g.add_argument("--overfit-delta", type=float, default=S, help="val-loss rise over the best, added (default 0)")
    g.add_argument("--no-stagnation-stop", dest="stagnation_stop", action="store_false", default=S,
                   help="switch the stagnation rule off")
    g.add_argument("--no-overfit-stop", dest="overfit_stop", action="store_false", default=S,
                   help="switch the overfitting rule off")
    g = p.add_argument_group("hardware")
    g.add_argument("--device", default=S, help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    g.add_argument("--threads", type=int, default=S,
                   help="CPU threads (default: one per core; 1 is faster when other jobs share the cores)")
    g.add_argument("--no-amp", dest="amp", action="store_false", default=S, help="no bf16 autocast on CUDA")
    g.add_argument("--compile", action="store_true", default=S, help="torch.compile the model")
    g.add_argument("--deterministic", action="store_true", default=S, help="deterministic GPU kernels (slower)")
    g = p.add_argument_group("output")
    g.add_argument("--out", default=S, help="folder for run folders (default runs)")
    g.add_argument("--wandb", choices=["auto", "online", "offline", "disabled"], default=S,
                   help="W&B logging: auto = online when logged in, else offline (default auto)")
    g.add_argument("--wandb-project", default=S, help="W&B project (default reslab)")
    g.add_argument("--grad-norms", dest="log_grad_norms", action="store_true", default=S,
                   help="log per-parameter gradient norms every epoch")


MODEL_FLAGS = ("depth", "width", "blocks", "hidden", "dropout")


# With --resume, the flags that only say where things are: the run folder (its default name is
# MODEL[DEPTH]-DATASET-seedN) and the data.
RUN_LOCATORS = {"out", "name", "model", "dataset", "seed", "model_args", "data_dir"}


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
    from .checkpoint import read_checkpoint
    from .errors import ConfigError
    last = config.run_dir / "last.pth"
    if not last.is_file():
        return   # run_training says what is missing
    saved = read_checkpoint(last)["config"]
    changed = sorted(k for k, v in overrides.items() if k not in RUN_LOCATORS and saved.get(k) != v)
    if changed:
        raise ConfigError(f"--resume continues the run with its saved settings; "
                          f"{', '.join(f'{k}={saved.get(k)!r}' for k in changed)} cannot change (drop the flags, "
                          "or start a new run with --name)")


def cmd_resume(args: argparse.Namespace) -> int:
    from .config import TrainConfig
    from .run import run_training
    run_dir = Path(args.run_dir).resolve()   # `reslab resume .` names the folder by its real name
    config = TrainConfig(out=str(run_dir.parent), name=run_dir.name)
    summary = run_training(config, resume=True)
    return 130 if summary["stopped_by"] == "interrupted" else 0


def cmd_data(args: argparse.Namespace) -> int:
    from .datasets import UNCHECKED, layout_to_read, list_datasets, load_dataset, resolve_data_dir, verify_dataset
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
    from .study import list_experiments
    for name, description in list_experiments():
        print(f"{name:14s} {description}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .study import run_experiment
    overrides = overrides_from(args)
    for key in ("experiment", "seeds", "profile", "overwrite", "jobs"):
        overrides.pop(key, None)
    result = run_experiment(args.experiment, seeds=args.seeds, profile=args.profile, overrides=overrides,
                            overwrite=args.overwrite, jobs=args.jobs)
    return 0 if result["status"] == "done" else 1


def cmd_lab(args: argparse.Namespace) -> int:
    from .study import run_lab
    overrides = overrides_from(args)
    for key in ("seeds", "profile", "overwrite", "jobs"):
        overrides.pop(key, None)
    run_lab(seeds=args.seeds, profile=args.profile, overrides=overrides, overwrite=args.overwrite, jobs=args.jobs)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report
    print(write_report(Path(args.folder)))
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="reslab", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add = sub.add_parser
    sub.add_parser = lambda *a, **k: _add(*a, parents=[common], **k)   # every command takes --debug

    p = sub.add_parser("train", help="train and test one model", description="Train one model with early "
                       "stopping, keep the best weights, test them; writes runs/NAME/ (config.yaml, "
                       "metrics.jsonl, best_model.pth, last.pth, summary.json).")
    p.add_argument("--config", default=argparse.SUPPRESS, help="YAML file of settings (flags override it)")
    p.add_argument("--name", default=argparse.SUPPRESS, help="run folder name (default MODEL[DEPTH]-DATASET-seedN)")
    p.add_argument("--resume", action="store_true", default=argparse.SUPPRESS, help="continue the run in its folder")
    p.add_argument("--overwrite", action="store_true", default=argparse.SUPPRESS, help="replace an existing run folder")
    _train_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("resume", help="continue an interrupted run", description="Continue a run from its last.pth.")
    p.add_argument("run_dir", help="the run folder, e.g. runs/mlp-mnist-seed0")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("data", help="verify or download datasets",
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

    p = sub.add_parser("evaluate", help="test a saved model (best_model.pth)",
                       description="Test a checkpoint on a dataset's test split (default: the one it was trained on).")
    p.add_argument("checkpoint", help="a best_model.pth or last.pth")
    p.add_argument("--dataset", help="dataset to test on (same image shape and classes)")
    p.add_argument("--data-dir", help="folder holding the datasets (default $RESLAB_DATA or ./data)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("models", help="list the models and their arguments")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("list", help="list the shipped experiments")
    p.set_defaults(func=cmd_list)

    for name, func, helptext in (("run", cmd_run, "run one experiment (a shipped name or a YAML file)"),
                                 ("lab", cmd_lab, "run the four reference exercises in order, then the report")):
        p = sub.add_parser(name, help=helptext, description=helptext)
        if name == "run":
            p.add_argument("experiment", help="experiment name (see `reslab list`) or a YAML file")
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

    p = sub.add_parser("report", help="regenerate report.md from run folders")
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
        if args.debug:
            traceback.print_exc()
        print(f"reslab: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:   # a full disk, a vanished folder: say what and where, not a traceback
        if args.debug:
            traceback.print_exc()
        where = f": {exc.filename}" if exc.filename else ""
        print(f"reslab: error: {exc.strerror or exc}{where} (rerun with --debug for details)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("reslab: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())
