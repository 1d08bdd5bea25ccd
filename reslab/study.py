"""Experiments as data: load a YAML experiment, run every model x seed into one folder, then write its report."""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from . import analysis, transfer
from .config import TrainConfig, check_keys, load_yaml
from .datasets import DatasetSpec, ensure_files, get_spec, load_dataset
from .distributed import is_main_process, launched_by_torchrun
from .errors import ConfigError, DataError, ReslabError
from .jobs import run_parallel
from .models import build_model, list_models, model_arguments
from .run import read_json, run_training, write_json_atomic

EXPERIMENTS_DIR = Path(__file__).parent / "experiments"
LAB = ("ex1", "ex1.2", "ex1.3", "ex2.1")
PROFILES = ("quick", "full")
KINDS = ("train", "transfer")
ANALYSES = ("gradient_flow",)
TOP_KEYS = ("description", "kind", "train", "models", "analysis", "compare", "source", "transfer", "profiles",
            "reference", "targets")
MODEL_KEYS = ("model", "model_args", "depths")
SOURCE_KEYS = ("experiment", "model", "depth", "checkpoint", "train")
PROFILE_KEYS = ("train", "transfer", "source")
# The settings that decide a run's result: a finished run folder is reused only when all of them match.
RESULT_KEYS = ("model", "dataset", "model_args", "epochs", "batch_size", "lr", "weight_decay", "stagnation_stop",
               "patience", "min_delta", "overfit_stop", "overfit_patience", "overfit_ratio", "overfit_delta", "val_fraction",
               "train_subset", "augment", "seed", "log_grad_norms")
# CLI flags that make no sense for a whole experiment.
FORBIDDEN_OVERRIDES = {"model": "edit the experiment's `models` list in a copy of its YAML file",
                       "seed": "use --seeds N for seeds 0..N-1", "name": "run folders are named by the study"}


def say(message: str) -> None:
    """A line about the study on the console; under torchrun, from rank 0 alone."""
    if is_main_process():
        print(message, flush=True)


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
        transfer.TransferSettings.from_dict(_check_mapping(definition.get("transfer", {}), f"{source}: transfer"),
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
    if entry.get("model") not in list_models():
        raise ConfigError(f"{source}: unknown model {entry.get('model')!r}; choose one of: {', '.join(list_models())}")
    valid = list(model_arguments(entry["model"]))
    check_keys(_check_mapping(entry.get("model_args", {}), f"{source}: model_args"), valid,
               f"{source}: model_args of {entry['model']}")
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
    model_args = {**values.get("model_args", {}), **taken_by(values.get("model", "mlp"), overrides.pop("model_args", {}))}
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


def train_run(config: TrainConfig, overwrite: bool) -> dict[str, Any]:
    """run_training, except that a finished run with the same settings is reused and an interrupted one resumed."""
    run_dir = config.run_dir
    summary_path = run_dir / "summary.json"
    wanted = {k: v for k, v in config.to_dict().items() if k in RESULT_KEYS}
    started = summary_path.is_file() or (run_dir / "last.pth").is_file()
    if not overwrite and (run_dir / "config.yaml").is_file() and started:
        check_same_settings(run_dir, wanted)
        if summary_path.is_file():
            summary = read_json(summary_path)
            if summary["stopped_by"] != "interrupted":
                say(f"reusing finished run {run_dir}")
                return summary
        say(f"resuming {run_dir}")
        return run_training(config, resume=True)
    # A folder without summary or last.pth holds no finished epoch: nothing is lost by replacing it.
    return run_training(config, overwrite=True if run_dir.exists() else overwrite)


def check_same_settings(run_dir: Path, wanted: dict[str, Any]) -> None:
    """Refuse to reuse a run folder whose saved settings differ from the wanted ones."""
    saved = load_yaml(run_dir / "config.yaml")
    for key, value in wanted.items():
        if saved.get(key) != value:
            raise ReslabError(f"{run_dir} holds a run with {key}={saved.get(key)!r}, this one wants {value!r}; "
                              "use --overwrite to replace it or --out for another folder")


def run_experiment(name: str | Path, seeds: int = 1, profile: str = "full", overrides: dict[str, Any] | None = None,
                   overwrite: bool = False, folder: str | Path | None = None, jobs: int = 1) -> dict[str, Any]:
    """Run one experiment (a shipped name or a YAML file) for seeds 0..seeds-1; write study.json and report.md.

    `jobs` > 1 trains that many of a training experiment's runs at once, each in its own process."""
    overrides = dict(overrides or {})
    for key, why in FORBIDDEN_OVERRIDES.items():
        if key in overrides:
            raise ConfigError(f"--{key} cannot be set for an experiment: {why}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds must be a positive integer, got {seeds!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be a positive integer, got {jobs!r}")
    if jobs > 1 and launched_by_torchrun():
        raise ConfigError("--jobs cannot be combined with torchrun: under torchrun every run already uses all ranks")
    experiment = load_experiment(name, profile)
    if experiment.get("kind", "train") != "train" and launched_by_torchrun():
        raise ConfigError(f"{experiment['name']} is a transfer experiment: run it without torchrun")
    out = Path(overrides.pop("out", "runs"))
    folder = Path(folder) if folder is not None else out / experiment["name"]
    main_process = is_main_process()
    say(f"== {experiment['name']}: {experiment.get('description', '')} ({profile} profile, {seeds} seed(s)) ==")
    start = time.perf_counter()
    status = {"experiment": experiment["name"], "description": experiment.get("description", ""), "profile": profile,
              "seeds": seeds, "status": "done", "reason": None, "runs": []}
    if main_process:
        folder.mkdir(parents=True, exist_ok=True)
        # The file as written plus how it was run: the report applies the profile itself to say what it changed.
        record = {"name": experiment["name"], **load_yaml(experiment_path(name)), "profile": profile,
                  "seeds": seeds, "overrides": overrides}
        (folder / "experiment.yaml").write_text(yaml.safe_dump(record, sort_keys=False))
    try:
        if experiment.get("kind", "train") == "train":
            status["runs"] = _run_training_experiment(experiment, seeds, overrides, folder, overwrite, jobs)
        else:
            status["runs"] = _run_transfer_experiment(experiment, seeds, overrides, folder, overwrite)
    except DataError as exc:
        status.update(status="not run", reason=str(exc))
        say(f"{experiment['name']}: not run: {exc}")
    status["wall_seconds"] = round(time.perf_counter() - start, 1)
    if not main_process:
        return {**status, "folder": str(folder), "report": None}
    write_json_atomic(folder / "study.json", status)
    from .report import write_report
    report = write_report(folder)
    say(f"{experiment['name']}: {status['status']} in {status['wall_seconds']:.0f}s; report: {report}")
    return {**status, "folder": str(folder), "report": str(report)}


def _run_training_experiment(experiment: dict[str, Any], seeds: int, overrides: dict[str, Any], folder: Path,
                             overwrite: bool, jobs: int = 1) -> list[str]:
    """Every model x seed through run_training (`jobs` at a time), then the analyses; return the run folder names."""
    flows = []
    taken = {k for entry in experiment["models"] for k in model_arguments(entry["model"])}
    unused = set(overrides.get("model_args", {})) - taken
    if unused:
        say(f"note: no model of {experiment['name']} takes {', '.join(sorted(unused))}; ignored there")
    pairs_by_seed = [train_configs(experiment, seed, overrides, folder) for seed in range(seeds)]
    configs = [config for pairs in pairs_by_seed for _, config in pairs]
    if jobs > 1 and len(configs) > 1:
        # Fetch missing files once, here: runs side by side would all download the same files at once.
        for dataset, data_dir in {(c.dataset, c.data_dir) for c in configs}:
            ensure_files(dataset, data_dir)
        # Seed-major order: with fewer slots than runs, the first seed's models finish first.
        tasks = [(config.run_name, (config, overwrite)) for config in configs]
        say(f"-- {experiment['name']}: {len(tasks)} runs, {min(jobs, len(tasks))} at a time")
        summaries = run_parallel(train_run, tasks, jobs)
        # A signal stops them all (run_parallel raises); a run stopped on its own ends the study here, after the rest.
        if any(summary["stopped_by"] == "interrupted" for summary in summaries):
            raise KeyboardInterrupt
    else:
        for seed, pairs in enumerate(pairs_by_seed):
            for label, config in pairs:
                say(f"-- {experiment['name']}: {label} seed {seed}")
                if train_run(config, overwrite)["stopped_by"] == "interrupted":
                    raise KeyboardInterrupt
    runs = [config.run_name for config in configs]
    if "gradient_flow" in experiment.get("analysis", []) and is_main_process():
        data = load_dataset(configs[0].dataset, configs[0].data_dir)   # once for every seed
        flows = [analysis.gradient_flow_at_init(dict(pairs), data) for pairs in pairs_by_seed]
    if flows:
        write_json_atomic(folder / "gradient_flow.json", flows)
    return runs


def _run_transfer_experiment(experiment: dict[str, Any], seeds: int, overrides: dict[str, Any], folder: Path,
                             overwrite: bool) -> list[str]:
    """For each seed: make sure the source network exists, then probe its frozen features and fine-tune it."""
    settings = transfer.TransferSettings.from_dict(experiment.get("transfer", {}), f"{experiment['name']}: transfer")
    runs = []
    # The target first: when it is missing, no source network is trained for nothing.
    data = transfer.load_target(target_config(experiment, 0, overrides, folder))
    for seed in range(seeds):
        target = target_config(experiment, seed, overrides, folder)
        src = source_config(experiment, seed, overrides, folder)
        if src is None:
            checkpoint = Path(experiment["source"]["checkpoint"])
        elif "experiment" in experiment["source"] and _finished(src.run_dir):
            # Another experiment's network is reused as it was trained there, whatever its settings.
            say(f"-- {experiment['name']}: reusing source {src.run_dir}")
            checkpoint = src.run_dir / "best_model.pth"
        else:
            say(f"-- {experiment['name']}: training source {src.run_name} in {src.run_dir}")
            # Never replace another experiment's run: --overwrite is for this experiment's folders.
            if train_run(src, overwrite and "train" in experiment["source"])["stopped_by"] == "interrupted":
                raise KeyboardInterrupt
            checkpoint = src.run_dir / "best_model.pth"
        todo = []
        for method in settings.methods:
            run_dir = folder / f"{method}-seed{seed}"
            wanted = transfer.run_settings(method, target, settings, checkpoint)
            if not overwrite and _finished(run_dir):
                check_same_settings(run_dir, wanted)
                say(f"reusing finished run {run_dir}")
            else:
                todo.append(method)
            runs.append(run_dir.name)
        if todo:
            say(f"-- {experiment['name']}: {', '.join(todo)} seed {seed} from {checkpoint}")
            summaries = transfer.run_transfer(checkpoint, data, target, settings, folder, todo)
            if any(s.get("stopped_by") == "interrupted" for s in summaries.values()):
                raise KeyboardInterrupt
    return runs


def _finished(run_dir: Path) -> bool:
    """Whether a transfer run folder holds a result that was not cut short."""
    if not (run_dir / "summary.json").is_file() or not (run_dir / "config.yaml").is_file():
        return False
    return read_json(run_dir / "summary.json").get("stopped_by") != "interrupted"


def run_lab(seeds: int = 1, profile: str = "full", overrides: dict[str, Any] | None = None,
            overwrite: bool = False, jobs: int = 1) -> dict[str, Any]:
    """The four reference exercises in order into <out>/lab/, ex2.1 reusing ex1.3's network; then the lab report."""
    if launched_by_torchrun():
        raise ConfigError("the lab cannot run under torchrun (its transfer exercise runs in one process); "
                          "run its training exercises with `torchrun ... -m reslab run NAME`")
    overrides = dict(overrides or {})
    lab = Path(overrides.pop("out", "runs")) / "lab"
    start = time.perf_counter()
    results = [run_experiment(name, seeds, profile, overrides, overwrite, folder=lab / name, jobs=jobs) for name in LAB]
    record = {"exercises": list(LAB), "profile": profile, "seeds": seeds,
              "wall_seconds": round(time.perf_counter() - start, 1)}
    write_json_atomic(lab / "lab.json", record)
    from .report import write_report
    report = write_report(lab)
    for result in results:
        line = result["status"] + (f": {result['reason']}" if result["reason"] else "")
        say(f"{result['experiment']:8s} {line}")
    say(f"lab finished in {record['wall_seconds']:.0f}s; report: {report}")
    return {**record, "results": results, "report": str(report)}
