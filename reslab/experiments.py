"""Experiment files: find, read and validate them, apply a profile, and turn them into each run's settings."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig, TransferSettings, check_keys, load_yaml
from .datasets import DatasetSpec, get_spec
from .errors import ConfigError, DataError
from .models import build_model, check_model, list_models, model_arguments

EXPERIMENTS_DIR = Path(__file__).parent / "experiments"
PROFILES = ("quick", "full")
KINDS = ("train", "transfer")
ANALYSES = ("gradient_flow",)
TOP_KEYS = ("description", "kind", "train", "models", "analysis", "compare", "source", "transfer", "profiles",
            "reference", "targets")
MODEL_KEYS = ("model", "model_args", "depths")
SOURCE_KEYS = ("experiment", "model", "depth", "checkpoint", "train")
PROFILE_KEYS = ("train", "transfer", "source")


def list_experiments() -> list[tuple[str, str]]:
    """(name, description) of every experiment shipped with reslab."""
    paths = sorted(EXPERIMENTS_DIR.glob("*.yaml"), key=lambda p: p.stem)
    return [(path.stem, load_yaml(path).get("description", "")) for path in paths]


def experiment_path(name_or_file: str | Path) -> Path:
    """The YAML file of a shipped experiment name, or the user's file itself."""
    text = str(name_or_file)
    if text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text:
        if not Path(text).is_file():
            raise ConfigError(f"experiment file {text} does not exist")
        return Path(text)
    path = EXPERIMENTS_DIR / f"{text}.yaml"
    if not path.is_file():
        names = [name for name, _ in list_experiments()]
        close = [n for n in names if n.startswith(text)] or names
        raise ConfigError(f"unknown experiment {text!r}; shipped: {', '.join(close)} (or give a YAML file)")
    return path


def load_experiment(name_or_file: str | Path, profile: str = "full") -> dict[str, Any]:
    """Read and validate an experiment file and return it with `profile` applied and its `name` added."""
    path = experiment_path(name_or_file)
    definition = load_yaml(path)
    validate(definition, path.name)
    if profile not in PROFILES:
        raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    for name in definition.get("profiles", {}):
        validate(apply_profile(definition, name), f"{path.name} (profile {name})")
    resolved = apply_profile(definition, profile)
    return {"name": path.stem, **resolved, "profile": profile}


def apply_profile(definition: dict[str, Any], profile: str) -> dict[str, Any]:
    """The definition with the profile's sections merged over its own (one level deep)."""
    resolved = copy.deepcopy(definition)
    for section, changes in definition.get("profiles", {}).get(profile, {}).items():
        resolved[section] = {**resolved.get(section, {}), **changes}
    return resolved


def validate(definition: dict[str, Any], source: str) -> None:
    """Raise ConfigError for the first unknown key or bad value of an experiment definition."""
    check_keys(definition, list(TOP_KEYS), source)
    kind = definition.get("kind", "train")
    if kind not in KINDS:
        raise ConfigError(f"{source}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    _check_mapping(definition.get("train", {}), f"{source}: train")
    for name, profile in _check_mapping(definition.get("profiles", {}), f"{source}: profiles").items():
        if name not in PROFILES:
            raise ConfigError(f"{source}: unknown profile {name!r}; profiles are {', '.join(PROFILES)}")
        where = f"{source}: profiles.{name}"
        check_keys(_check_mapping(profile, where), list(PROFILE_KEYS), where)
        for section, changes in profile.items():
            _check_mapping(changes, f"{source}: profiles.{name}.{section}")
    for section in ("reference", "targets"):
        for label, values in _check_mapping(definition.get(section, {}), f"{source}: {section}").items():
            for metric, value in _check_mapping(values, f"{source}: {section}.{label}").items():
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(f"{source}: {section}.{label}.{metric} must be a number, got {value!r}")
    if kind == "train":
        models = definition.get("models")
        if not isinstance(models, list) or not models:
            raise ConfigError(f"{source}: `models` must be a non-empty list of {{model: NAME, ...}} entries")
        for entry in models:
            _check_model_entry(entry, source)
        analyses = definition.get("analysis", [])
        if not isinstance(analyses, list):
            raise ConfigError(f"{source}: analysis must be a list, e.g. [gradient_flow], got {analyses!r}")
        for name in analyses:
            if name not in ANALYSES:
                raise ConfigError(f"{source}: unknown analysis {name!r}; available: {', '.join(ANALYSES)}")
        _check_compare(definition.get("compare", []), [entry["model"] for entry in models], source)
        for label, config in train_configs(definition, 0, {}, Path("."), source):
            _check_model(config, f"{source}: {label}")
    else:
        for key in ("models", "analysis", "compare"):
            if key in definition:
                raise ConfigError(f"{source}: a transfer experiment has no `{key}`; its network comes from `source`")
        TransferSettings.from_dict(_check_mapping(definition.get("transfer", {}), f"{source}: transfer"),
                                            f"{source}: transfer")
        _check_source(definition, source)
        _check_dataset(target_config(definition, 0, {}, Path("."), source).dataset, source)


def _check_mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def _check_dataset(name: str, source: str) -> DatasetSpec:
    try:
        return get_spec(name)
    except DataError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _check_model(config: TrainConfig, where: str) -> None:
    """Build the config's model on the meta device: every argument checked, no weights allocated."""
    spec = _check_dataset(config.dataset, where)
    try:
        with torch.device("meta"):
            build_model(config.model, spec.input_shape, spec.num_classes, **config.model_args)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_model_entry(entry: Any, source: str) -> None:
    entry = _check_mapping(entry, f"{source}: each entry of `models`")
    check_keys(entry, list(MODEL_KEYS), f"{source}: models")
    model_args = _check_mapping(entry.get("model_args", {}), f"{source}: model_args")
    try:
        valid = check_model(entry.get("model"), model_args)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    depths = entry.get("depths")
    if depths is not None:
        if "depth" not in valid:
            raise ConfigError(f"{source}: model {entry['model']!r} has no depth, so it takes no `depths`")
        if not isinstance(depths, list) or not depths or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in depths):
            raise ConfigError(f"{source}: depths must be a list of positive integers, got {depths!r}")


def _check_compare(pairs: Any, models: list[str], source: str) -> None:
    """`compare` is a list of [A, B] pairs of the experiment's models (the report tabulates A minus B per depth)."""
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise ConfigError(f"{source}: compare must be a list of [A, B] model pairs, got {pairs!r}")
    for name in (name for pair in pairs for name in pair):
        if name not in models:
            raise ConfigError(f"{source}: compare names {name!r}, which is not one of the experiment's models "
                              f"({', '.join(models)})")


def _check_source(definition: dict[str, Any], source: str) -> None:
    src = _check_mapping(definition.get("source"), f"{source}: source")
    check_keys(src, list(SOURCE_KEYS), f"{source}: source")
    given = [k for k in ("experiment", "checkpoint", "train") if k in src]
    if len(given) != 1:
        raise ConfigError(f"{source}: source needs exactly one of `experiment`, `checkpoint` or `train`")
    if "experiment" in src:
        source_experiment(src, "full")   # the named experiment exists, trains models, and has this one
    elif "train" in src:
        values = {**definition.get("train", {}), **_check_mapping(src["train"], f"{source}: source.train")}
        config = TrainConfig.from_dict(values, f"{source}: source.train")
        _check_model_entry({"model": config.model, "model_args": config.model_args}, f"{source}: source.train")
        _check_model(config, f"{source}: source.train")


def source_experiment(src: dict[str, Any], profile: str) -> tuple[dict[str, Any], str, int | None]:
    """The source experiment of a transfer, the model it names, and the depth (default: its deepest)."""
    experiment = load_experiment(src["experiment"], profile)
    if experiment.get("kind", "train") != "train":
        raise ConfigError(f"source experiment {src['experiment']!r} trains no models (it is a transfer)")
    entries = [e for e in experiment["models"] if e["model"] == src.get("model", e["model"])]
    if not entries:
        raise ConfigError(f"source experiment {src['experiment']!r} has no model {src['model']!r}")
    entry = entries[-1]
    depths = entry.get("depths") or [None]
    depth = src.get("depth", max(depths) if depths != [None] else None)
    if depth not in depths:
        raise ConfigError(f"source experiment {src['experiment']!r} trains {entry['model']} at depths "
                          f"{depths}, not {depth}")
    return experiment, entry["model"], depth


def run_label(model: str, depth: int | None) -> str:
    """The name of a model in tables and folders: model, with its depth when it has one (rescnn6)."""
    return f"{model}{depth}" if depth is not None else model


def make_config(values: dict[str, Any], overrides: dict[str, Any], seed: int, folder: Path, name: str,
                group: str, job_type: str, source: str) -> TrainConfig:
    """A run's TrainConfig: the experiment's settings, then the command line's, then seed, folder and W&B group."""
    overrides = dict(overrides)
    # A model flag (--width 8) applies to the models that take it; ex1.2's mlp has no width.
    extra = taken_by(values.get("model", "mlp"), overrides.pop("model_args", {}))
    model_args = {**values.get("model_args", {}), **extra}
    return TrainConfig.from_dict({**values, **overrides, "model_args": model_args, "seed": seed, "out": str(folder),
                                  "name": name, "wandb_group": group, "wandb_job_type": job_type}, source)


def taken_by(model: str, model_args: dict[str, Any]) -> dict[str, Any]:
    """The model arguments of `model_args` that `model` takes."""
    accepted = model_arguments(model) if model in list_models() else {}
    return {k: v for k, v in model_args.items() if k in accepted}


def train_configs(experiment: dict[str, Any], seed: int, overrides: dict[str, Any], folder: Path,
                  source: str | None = None) -> list[tuple[str, TrainConfig]]:
    """(label, config) of every model (and depth) of a training experiment for one seed.

    `train.model_args` (a profile's narrower widths, say) apply to every model that takes them, over its own."""
    name = experiment.get("name", "experiment")
    shared_args = experiment.get("train", {}).get("model_args", {})
    pairs = []
    for entry in experiment["models"]:
        for depth in entry.get("depths") or [None]:
            label = run_label(entry["model"], depth)
            model_args = {**entry.get("model_args", {}), **taken_by(entry["model"], shared_args),
                          **({"depth": depth} if depth is not None else {})}
            values = {**experiment.get("train", {}), "model": entry["model"], "model_args": model_args}
            pairs.append((label, make_config(values, overrides, seed, folder, f"{label}-seed{seed}", name, label,
                                             source or name)))
    return pairs


def target_config(experiment: dict[str, Any], seed: int, overrides: dict[str, Any], folder: Path,
                  source: str | None = None) -> TrainConfig:
    """The fine-tuning settings of a transfer experiment (the network itself comes from the source)."""
    name = experiment.get("name", "experiment")
    return make_config({**experiment.get("train", {}), "model": "mlp", "model_args": {}}, overrides, seed, folder,
                       f"finetune-seed{seed}", name, "finetune", source or name)


def source_config(experiment: dict[str, Any], seed: int, overrides: dict[str, Any], folder: Path) -> TrainConfig | None:
    """The TrainConfig that trains a transfer's source network (None when the source is a checkpoint file)."""
    src = experiment["source"]
    if "train" in src:
        values = {**experiment.get("train", {}), **src["train"]}
        label = run_label(values.get("model", "mlp"), values.get("model_args", {}).get("depth"))
        return make_config(values, overrides, seed, folder, f"source-{label}-seed{seed}", experiment["name"],
                           f"source-{label}", experiment["name"])
    if "experiment" in src:
        source_exp, model, depth = source_experiment(src, experiment["profile"])
        # The source trains on its own dataset: a --dataset flag is meant for the target.
        overrides = {k: v for k, v in overrides.items() if k != "dataset"}
        pairs = dict(train_configs(source_exp, seed, overrides, folder.parent / source_exp["name"]))
        return pairs[run_label(model, depth)]
    return None
