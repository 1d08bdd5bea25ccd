"""Every setting of a run in one validated dataclass, the single source of each setting's facts.

A setting's default, help text, command-line flag, valid range, whether it decides the result ("data": the
split; "training": how the network is trained; "model": which network; "record": what the run logs) and
whether it locates a run folder are written once, here; the CLI, the study's reuse checks and the transfer
runs derive what they need from these fields.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .checks import check_int, check_number
from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")
WANDB_MODES = ("auto", "online", "offline", "disabled")
RESULT_KINDS = ("data", "training", "model", "record")


def setting(default: Any, help: str, group: str, *, result: str | None = None, locates: bool = False,
            flag: bool = True, minimum: float | None = None, maximum: float | None = None,
            above: float | None = None, below: float | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A TrainConfig field with its facts in the field's metadata."""
    meta = {"help": help, "group": group, "result": result, "locates": locates, "flag": flag, "minimum": minimum,
            "maximum": maximum, "above": above, "below": below, "choices": choices}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


DATA, OPTIM, STOP, HARDWARE, OUTPUT = "model and data", "optimization", "early stopping", "hardware", "output"


@dataclass
class TrainConfig:
    """The settings of one training run; defaults reproduce the reference lab's exercise 1."""

    model: str = setting("mlp", "model name (see `reslab models`)", DATA, result="model", locates=True)
    dataset: str = setting("mnist", "mnist, fashionmnist, cifar10 or cifar100", DATA, result="data", locates=True)
    model_args: dict[str, Any] = setting({}, "the model's arguments (model flags such as --depth)", DATA,
                                         result="model", locates=True, flag=False)
    data_dir: str | None = setting(None, "folder holding the datasets (default: $RESLAB_DATA, else ./data)", DATA,
                                   locates=True)
    val_fraction: float = setting(0.1, "stratified validation share of the training images", DATA, result="data",
                                  above=0, below=1)
    train_subset: int | None = setting(None, "train on only this many images, a stratified subset (default: all)",
                                       DATA, result="data", minimum=1)
    augment: bool | None = setting(None, "random 32x32 crop from 4-pixel padding + horizontal flip (default: on "
                                   "for 32x32 colour images)", DATA, result="training")
    epochs: int = setting(50, "maximum epochs; early stopping usually ends sooner", OPTIM, result="training",
                          minimum=1)
    batch_size: int = setting(128, "training batch size", OPTIM, result="training", minimum=1, maximum=2 ** 20)
    eval_batch_size: int = setting(1024, "validation and test batch size (same numbers, fewer steps)", OPTIM,
                                   minimum=1, maximum=2 ** 20)
    lr: float = setting(1e-3, "Adam learning rate", OPTIM, result="training", above=0)
    weight_decay: float = setting(0.0, "Adam weight decay", OPTIM, result="training", minimum=0)
    seed: int = setting(0, "seed of the split, initial weights, batch order and augmentation", OPTIM,
                        result="data", locates=True, minimum=0, maximum=2 ** 32 - 1)
    stagnation_stop: bool = setting(True, "stop after PATIENCE epochs in a row without val_loss < best - "
                                    "MIN_DELTA", STOP, result="training")
    patience: int = setting(5, "stagnation patience, in epochs", STOP, result="training", minimum=0)
    min_delta: float = setting(0.0, "smallest val-loss drop that counts as an improvement", STOP,
                               result="training", minimum=0)
    overfit_stop: bool = setting(True, "stop after OVERFIT_PATIENCE epochs in a row with val_loss > best * "
                                 "(1 + OVERFIT_RATIO) + OVERFIT_DELTA", STOP, result="training")
    overfit_patience: int = setting(3, "overfitting epochs in a row that stop training", STOP, result="training",
                                    minimum=1)
    # Relative by default, chosen by replaying recorded curves (bench/RESULTS.md); the older absolute rule is
    # overfit_ratio 0, overfit_delta 0.02.
    overfit_ratio: float = setting(0.15, "val-loss rise over the best that counts as overfitting, as a fraction "
                                   "of the best", STOP, result="training", minimum=0)
    overfit_delta: float = setting(0.0, "val-loss rise over the best that counts as overfitting, added to the "
                                   "relative one", STOP, result="training", minimum=0)
    device: str = setting("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps", HARDWARE)
    threads: int | None = setting(None, "CPU threads for torch (default: one per core; recorded, and a resumed run "
                                  "uses the same number)", HARDWARE, minimum=1, maximum=4096)
    amp: bool = setting(True, "bf16 autocast on CUDA", HARDWARE)
    compile: bool = setting(False, "torch.compile the model", HARDWARE)
    cuda_graphs: bool = setting(False, "capture the training step as one CUDA graph, replayed for every full batch "
                                "(CUDA only; not with --compile or torchrun)", HARDWARE)
    deterministic: bool = setting(False, "deterministic GPU kernels (slower)", HARDWARE)
    log_grad_norms: bool = setting(False, "log per-parameter gradient L2 norms (mean over each epoch)", OUTPUT,
                                   result="record")
    out: str = setting("runs", "folder for run folders", OUTPUT, locates=True)
    name: str | None = setting(None, "run folder name (default MODEL[DEPTH]-DATASET-seedN)", OUTPUT, locates=True,
                               flag=False)
    wandb: str = setting("auto", "W&B logging: auto = online when logged in, else offline", OUTPUT,
                         choices=WANDB_MODES)
    wandb_project: str = setting("reslab", "W&B project", OUTPUT)
    wandb_group: str | None = setting(None, "W&B group (an experiment's name)", OUTPUT, flag=False)
    wandb_job_type: str | None = setting(None, "W&B job type (a model's label)", OUTPUT, flag=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first setting of the wrong type or out of range."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            _check_type(f.name, value, _FIELD_TYPES[f.name])
            meta = f.metadata
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            bounds = {k: meta[k] for k in ("minimum", "maximum", "above", "below")}
            if int in (typing.get_args(_FIELD_TYPES[f.name]) or (_FIELD_TYPES[f.name],)):
                check_int(f.name, value, bounds["minimum"], bounds["maximum"])
            else:
                check_number(f.name, value, **bounds)
        if self.name and (self.name in (".", "..") or Path(self.name).name != self.name):
            # A name is one folder inside `out`: --overwrite deletes it, so it must never reach outside.
            raise ConfigError(f"name must be a plain folder name (no '/', '.' or '..'), got {self.name!r}")
        if self.device not in DEVICES and not re.fullmatch(r"cuda:\d+", self.device):
            raise ConfigError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {self.device!r}")
        if self.wandb not in WANDB_MODES:
            raise ConfigError(f"wandb must be one of {', '.join(WANDB_MODES)}, got {self.wandb!r}")

    @property
    def run_name(self) -> str:
        """The run folder's name: `name` if set, else model[depth]-dataset-seedN."""
        if self.name:
            return self.name
        depth = self.model_args.get("depth")
        return f"{self.model}{depth if depth is not None else ''}-{self.dataset}-seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.run_name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a mapping; an unknown key is an error that names the closest valid key."""
        check_keys(values, [f.name for f in dataclasses.fields(cls)], source)
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some settings changed (validated again)."""
        check_keys(changes, [f.name for f in dataclasses.fields(self)], "override")
        return dataclasses.replace(self, **changes)


def settings_where(**facts: Any) -> list[str]:
    """The names of the TrainConfig settings whose facts match, e.g. settings_where(locates=True)."""
    return [f.name for f in dataclasses.fields(TrainConfig)
            if all(f.metadata[k] in (v if isinstance(v, tuple) else (v,)) for k, v in facts.items())]


# The settings that decide a run's result: a finished run is reused only when all of them match.
RESULT_KEYS = settings_where(result=RESULT_KINDS)
# With --resume, the settings that only say where a run is (its folder and its data), never what it does.
RUN_LOCATORS = settings_where(locates=True)
# Settings added after earlier runs were saved, with the value that reproduces those runs on resume.
LEGACY_VALUES = {"overfit_ratio": 0.0}

PROBES = ("svm", "knn", "logreg")
TRANSFER_METHODS = PROBES + ("finetune", "staged")


@dataclass
class TransferSettings:
    """How a transfer probes the frozen features and how staged fine-tuning is split."""

    svm_c: float = 1.0                   # LinearSVC regularization, on standardized features
    knn_k: int = 5
    logreg_c: float = 1.0                # LogisticRegression regularization, on standardized features
    probe_max_train: int | None = None   # fit the probes on at most this many training images (stratified)
    head_epochs: int = 3                 # staged: epochs that train the head alone before everything is trained
    methods: list[str] = field(default_factory=lambda: list(TRANSFER_METHODS))

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "transfer") -> TransferSettings:
        """Build and validate; an unknown key is an error naming the closest valid one."""
        check_keys(values, [f.name for f in dataclasses.fields(cls)], source)
        settings = cls(**values)
        try:
            check_number("svm_c", settings.svm_c, above=0)
            check_number("logreg_c", settings.logreg_c, above=0)
            check_int("knn_k", settings.knn_k, minimum=1)
            check_int("head_epochs", settings.head_epochs, minimum=1)
            if settings.probe_max_train is not None:
                check_int("probe_max_train", settings.probe_max_train, minimum=1)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        if (not isinstance(settings.methods, list) or not settings.methods
                or any(m not in TRANSFER_METHODS for m in settings.methods)):
            raise ConfigError(f"{source}: methods must be a non-empty list of {', '.join(TRANSFER_METHODS)}, "
                              f"got {settings.methods!r}")
        return settings


def check_keys(values: dict[str, Any], valid: list[str], source: str) -> None:
    """Raise ConfigError for the first key not in `valid`, suggesting the closest valid one."""
    for key in values:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"
            raise ConfigError(f"{source}: unknown setting {key!r}{hint}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping safely; a missing or malformed file is a one-line error."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, found {type(data).__name__}")
    return data


_FIELD_TYPES = typing.get_type_hints(TrainConfig)
_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a text", dict: "a mapping"}


def _check_type(name: str, value: Any, hint: Any) -> None:
    """Raise ConfigError unless `value` fits the annotation (bool, int, float, str, dict, or X | None)."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for option in options:
        base = typing.get_origin(option) or option
        if option is type(None) and value is None:
            return
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if base in (bool, str, dict) and isinstance(value, base):
            return
    wanted = " or ".join("empty (null)" if o is type(None) else _TYPE_NAMES[typing.get_origin(o) or o]
                         for o in options)
    raise ConfigError(f"{name} must be {wanted}, got {value!r}")
