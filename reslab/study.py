"""Running experiments: every model x seed of one experiment into one folder, the lab, then the reports."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from . import analysis, transfer
from .checks import check_int
from .config import RESULT_KEYS, RUN_LOCATORS, TrainConfig, TransferSettings, load_yaml
from .datasets import ensure_files, load_dataset
from .device import resolve_device
from .distributed import is_main_process, launched_by_torchrun
from .early_stopping import StopReason
from .errors import ConfigError, DataError, ReslabError
from .experiments import experiment_path, load_experiment, source_config, target_config, train_configs
from .jobs import run_parallel
from .models import model_arguments
from .report import write_report
from .run import has_result, is_finished, run_training
from .runfolder import FolderLock, check_experiment_dir, copy_run, read_json, write_json_atomic, write_yaml

LAB = ("ex1", "ex1.2", "ex1.3", "ex2.1")
# CLI flags that make no sense for a whole experiment.
FORBIDDEN_OVERRIDES = {"model": "edit the experiment's `models` list in a copy of its YAML file",
                       "seed": "use --seeds N for seeds 0..N-1", "name": "run folders are named by the study"}


def say(message: str) -> None:
    """A line about the study on the console; under torchrun, from rank 0 alone."""
    if is_main_process():
        print(message, flush=True)


def _started(run_dir: Path) -> bool:
    """Whether a run folder holds a run that began training (its settings then decide whether it is reused)."""
    return (run_dir / "config.yaml").is_file() and (
        (run_dir / "summary.json").is_file() or (run_dir / "last.pth").is_file())


def _differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The settings whose saved value is not the wanted one."""
    return [key for key, value in wanted.items() if saved.get(key) != value]


def check_same_settings(run_dir: Path, wanted: dict[str, Any]) -> None:
    """Refuse to reuse a run folder whose saved settings differ from the wanted ones."""
    saved = load_yaml(run_dir / "config.yaml")
    differ = _differences(saved, wanted)
    if differ:
        key = differ[0]
        raise ReslabError(f"{run_dir} holds a run with {key}={saved.get(key)!r}, this one wants {wanted[key]!r}; "
                          "use --overwrite to replace it or --out for another folder")


def result_settings(config: TrainConfig) -> dict[str, Any]:
    """The settings of a run that decide its result."""
    return {k: v for k, v in config.to_dict().items() if k in RESULT_KEYS}


def find_twin(config: TrainConfig) -> tuple[Path, dict[str, Any]] | None:
    """A finished run of another experiment beside this one (same --out) with this run's name and result settings,
    and its saved config."""
    run_dir = config.run_dir
    wanted = result_settings(config)
    for other in sorted(run_dir.parent.parent.glob(f"*/{run_dir.name}")):
        if other.parent == run_dir.parent:
            continue
        try:
            if not is_finished(other):
                continue
            saved = load_yaml(other / "config.yaml")
        except ReslabError:   # another experiment's damaged run is no twin; its own command reports it
            continue
        if not _differences(saved, wanted):
            return other, saved
    return None


def train_run(config: TrainConfig, overwrite: bool) -> dict[str, Any]:
    """run_training, except that a finished run with the same settings is reused (from this experiment's folder or
    copied from another experiment's) and an interrupted one resumed."""
    run_dir = config.run_dir
    if not overwrite and _started(run_dir):
        check_same_settings(run_dir, result_settings(config))
        if is_finished(run_dir):
            say(f"reusing finished run {run_dir}")
            return read_json(run_dir / "summary.json")
        say(f"resuming {run_dir}")
        return run_training(config, resume=True)
    twin = None if overwrite else find_twin(config)
    if twin is not None:
        # ex1.2 trains ex1's MLP again with the same settings: the same weights, so its finished run is copied.
        source, saved = twin
        say(f"copying finished run {source} (same settings) to {run_dir}")
        where = {k: v for k, v in config.to_dict().items() if k in RUN_LOCATORS or k.startswith("wandb")}
        copy_run(source, run_dir, {**saved, **where, "copied_from": str(source)})
        return read_json(run_dir / "summary.json")
    # A folder without summary or last.pth died while being set up, before training began: nothing is lost by
    # replacing it.
    return run_training(config, overwrite=True if run_dir.exists() else overwrite)


def run_experiment(name: str | Path, seeds: int = 1, profile: str = "full", overrides: dict[str, Any] | None = None,
                   overwrite: bool = False, folder: str | Path | None = None, jobs: int = 1,
                   only: list[str] | None = None) -> dict[str, Any]:
    """Run one experiment (a shipped name or a YAML file) for seeds 0..seeds-1; write study.json and report.md.

    `jobs` > 1 trains that many of a training experiment's runs at once, each in its own process. `only` (run
    labels such as rescnn6) trains just those models, in that order, and reports them with the experiment's other
    finished runs. Every check is made before anything is written; one command at a time writes an experiment's
    folder (a lock)."""
    overrides = dict(overrides or {})
    for key, why in FORBIDDEN_OVERRIDES.items():
        if key in overrides:
            raise ConfigError(f"--{key} cannot be set for an experiment: {why}")
    check_int("seeds", seeds, minimum=1, maximum=1000)
    check_int("jobs", jobs, minimum=1, maximum=256)
    if jobs > 1 and launched_by_torchrun():
        raise ConfigError("--jobs cannot be combined with torchrun: under torchrun every run already uses all ranks")
    experiment = load_experiment(name, profile)
    training = experiment.get("kind", "train") == "train"
    if only is not None:
        experiment = {**experiment, "only": select_labels(experiment, only)}
    if not training and launched_by_torchrun():
        raise ConfigError(f"{experiment['name']} is a transfer experiment: run it without torchrun")
    out = Path(overrides.pop("out", "runs"))
    folder = Path(folder) if folder is not None else out / experiment["name"]
    if folder.exists() and not folder.is_dir():
        raise ReslabError(f"{folder} is a file, not a folder")
    check_experiment_dir(folder)
    main_process = is_main_process()
    lock = FolderLock(folder, "experiment folder")
    try:
        if main_process:
            lock.acquire()
        return _run_locked(name, experiment, seeds, profile, overrides, overwrite, folder, jobs, main_process)
    finally:
        lock.release()


def _run_locked(name: str | Path, experiment: dict[str, Any], seeds: int, profile: str, overrides: dict[str, Any],
                overwrite: bool, folder: Path, jobs: int, main_process: bool) -> dict[str, Any]:
    """run_experiment once its folder is locked."""
    training = experiment.get("kind", "train") == "train"
    if not overwrite:   # refuse before anything is trained or written
        for run_dir, wanted in (_training_runs(experiment, seeds, overrides, folder) if training
                                else _transfer_runs(experiment, seeds, overrides, folder)):
            if _started(run_dir):
                check_same_settings(run_dir, wanted)
    say(f"== {experiment['name']}: {experiment.get('description', '')} ({profile} profile, {seeds} seed(s)) ==")
    start = time.perf_counter()
    status = {"experiment": experiment["name"], "description": experiment.get("description", ""), "profile": profile,
              "seeds": seeds, "only": experiment.get("only"), "status": "done", "reason": None, "runs": []}
    try:
        if training:
            status["runs"] = _run_training_experiment(experiment, seeds, overrides, folder, overwrite, jobs)
        else:
            status["runs"] = _run_transfer_experiment(experiment, seeds, overrides, folder, overwrite)
    except DataError as exc:
        status.update(status="not run", reason=str(exc))
        say(f"{experiment['name']}: not run: {exc}")
    status["wall_seconds"] = round(time.perf_counter() - start, 1)
    if not main_process:
        return {**status, "folder": str(folder), "report": None}
    # The file as written plus how it was run (the report applies the profile itself to say what it changed),
    # written with the status once the runs are done, so it always describes the runs in the folder.
    record = {"name": experiment["name"], **load_yaml(experiment_path(name)), "profile": profile,
              "seeds": seeds, "overrides": overrides}
    write_yaml(folder / "experiment.yaml", record)
    write_json_atomic(folder / "study.json", status)
    report = write_report(folder)
    say(f"{experiment['name']}: {status['status']} in {status['wall_seconds']:.0f}s; report: {report}")
    return {**status, "folder": str(folder), "report": str(report)}


def select_labels(experiment: dict[str, Any], only: list[str]) -> list[str]:
    """`only`, checked against the experiment's run labels (a transfer has none to choose)."""
    if experiment.get("kind", "train") != "train":
        raise ConfigError(f"--only chooses models of a training experiment; {experiment['name']} is a transfer "
                          f"experiment (its runs are the methods of its `transfer` section)")
    labels = [label for label, _ in train_configs(experiment, 0, {}, Path("."))]
    unknown = [label for label in only if label not in labels]
    if unknown or not only:
        raise ConfigError(f"--only: {experiment['name']} has no model {', '.join(unknown) or '(none given)'}; "
                          f"it has: {', '.join(labels)}")
    return list(dict.fromkeys(only))


def _to_train(experiment: dict[str, Any], pairs: list[tuple[str, TrainConfig]]) -> list[tuple[str, TrainConfig]]:
    """Of one seed's (label, config) pairs, those this command trains: all, or those of `only` in its order."""
    if "only" not in experiment:
        return pairs
    by_label = dict(pairs)
    return [(label, by_label[label]) for label in experiment["only"]]


def _training_runs(experiment: dict[str, Any], seeds: int, overrides: dict[str, Any],
                   folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(run folder, result settings) of every run of a training experiment this command trains."""
    return [(config.run_dir, result_settings(config)) for seed in range(seeds)
            for _, config in _to_train(experiment, train_configs(experiment, seed, overrides, folder))]


def _transfer_runs(experiment: dict[str, Any], seeds: int, overrides: dict[str, Any],
                   folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(run folder, result settings) of every run of a transfer experiment (its source's included)."""
    settings = TransferSettings.from_dict(experiment.get("transfer", {}), f"{experiment['name']}: transfer")
    runs = []
    for seed in range(seeds):
        target = target_config(experiment, seed, overrides, folder)
        src = source_config(experiment, seed, overrides, folder)
        if src is not None and "train" in experiment["source"]:
            runs.append((src.run_dir, result_settings(src)))
        checkpoint = Path(experiment["source"]["checkpoint"]) if src is None else src.run_dir / "best_model.pth"
        runs += [(folder / f"{method}-seed{seed}", transfer.run_settings(method, target, settings, checkpoint))
                 for method in settings.methods]
    return runs


def _with_threads(config: TrainConfig, jobs: int) -> TrainConfig:
    """A run's config for `jobs` runs side by side on the CPU: the cores shared out, and the share recorded."""
    if config.threads is not None or resolve_device(config.device).type != "cpu":
        return config
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return config.replace(threads=max(1, cores // jobs))


def _run_training_experiment(experiment: dict[str, Any], seeds: int, overrides: dict[str, Any], folder: Path,
                             overwrite: bool, jobs: int = 1) -> list[str]:
    """Every model x seed through run_training (`jobs` at a time), then the analyses; return the run folder names."""
    flows = []
    taken = {k for entry in experiment["models"] for k in model_arguments(entry["model"])}
    unused = set(overrides.get("model_args", {})) - taken
    if unused:
        say(f"note: no model of {experiment['name']} takes {', '.join(sorted(unused))}; ignored there")
    pairs_by_seed = [train_configs(experiment, seed, overrides, folder) for seed in range(seeds)]
    todo = [(label, seed, config) for seed, pairs in enumerate(pairs_by_seed)
            for label, config in _to_train(experiment, pairs)]
    configs = [config for _, _, config in todo]
    if jobs > 1 and len(configs) > 1:
        # Fetch missing files once, here: runs side by side would all download the same files at once.
        for dataset, data_dir in {(c.dataset, c.data_dir) for c in configs}:
            ensure_files(dataset, data_dir)
        # Seed-major order: with fewer slots than runs, the first seed's models finish first.
        slots = min(jobs, len(configs))
        tasks = [(config.run_name, (_with_threads(config, slots), overwrite)) for config in configs]
        say(f"-- {experiment['name']}: {len(tasks)} runs, {slots} at a time")
        summaries = run_parallel(train_run, tasks, jobs)
        # A signal stops them all (run_parallel raises); a run stopped on its own ends the study here, after the rest.
        if any(summary["stopped_by"] == StopReason.INTERRUPTED for summary in summaries):
            raise KeyboardInterrupt
    else:
        for label, seed, config in todo:
            say(f"-- {experiment['name']}: {label} seed {seed}")
            if train_run(config, overwrite)["stopped_by"] == StopReason.INTERRUPTED:
                raise KeyboardInterrupt
    # With `only`, the report shows the experiment's other finished runs too.
    trained = {config.run_name for config in configs}
    runs = [config.run_name for pairs in pairs_by_seed for _, config in pairs
            if config.run_name in trained or has_result(config.run_dir)]
    if "gradient_flow" in experiment.get("analysis", []) and is_main_process():
        data = load_dataset(configs[0].dataset, configs[0].data_dir)   # once for every seed
        flows = [analysis.gradient_flow_at_init(dict(pairs), data) for pairs in pairs_by_seed]
    if flows:
        write_json_atomic(folder / "gradient_flow.json", flows)
    return runs


def _run_transfer_experiment(experiment: dict[str, Any], seeds: int, overrides: dict[str, Any], folder: Path,
                             overwrite: bool) -> list[str]:
    """For each seed: make sure the source network exists, then probe its frozen features and fine-tune it."""
    settings = TransferSettings.from_dict(experiment.get("transfer", {}), f"{experiment['name']}: transfer")
    runs = []
    # The target first: when it is missing, no source network is trained for nothing.
    data = transfer.load_target(target_config(experiment, 0, overrides, folder))
    for seed in range(seeds):
        target = target_config(experiment, seed, overrides, folder)
        src = source_config(experiment, seed, overrides, folder)
        if src is None:
            checkpoint = Path(experiment["source"]["checkpoint"])
        elif "experiment" in experiment["source"] and is_finished(src.run_dir):
            # Another experiment's network is reused as it was trained there, whatever its settings.
            say(f"-- {experiment['name']}: reusing source {src.run_dir}")
            checkpoint = src.run_dir / "best_model.pth"
        else:
            say(f"-- {experiment['name']}: training source {src.run_name} in {src.run_dir}")
            # Never replace another experiment's run: --overwrite is for this experiment's folders.
            if train_run(src, overwrite and "train" in experiment["source"])["stopped_by"] == StopReason.INTERRUPTED:
                raise KeyboardInterrupt
            checkpoint = src.run_dir / "best_model.pth"
        todo, resume = [], []
        for method in settings.methods:
            run_dir = folder / f"{method}-seed{seed}"
            if not overwrite and is_finished(run_dir):
                check_same_settings(run_dir, transfer.run_settings(method, target, settings, checkpoint))
                say(f"reusing finished run {run_dir}")
            else:
                todo.append(method)
                # A fine-tuning cut short is continued, as a training run is (_run_locked checked its settings).
                if not overwrite and (run_dir / "last.pth").is_file():
                    say(f"resuming {run_dir}")
                    resume.append(method)
            runs.append(run_dir.name)
        if todo:
            say(f"-- {experiment['name']}: {', '.join(todo)} seed {seed} from {checkpoint}")
            summaries = transfer.run_transfer(checkpoint, data, target, settings, folder, todo, tuple(resume))
            if any(s.get("stopped_by") == StopReason.INTERRUPTED for s in summaries.values()):
                raise KeyboardInterrupt
    return runs


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
    report = write_report(lab)
    for result in results:
        line = result["status"] + (f": {result['reason']}" if result["reason"] else "")
        say(f"{result['experiment']:8s} {line}")
    say(f"lab finished in {record['wall_seconds']:.0f}s; report: {report}")
    return {**record, "results": results, "report": str(report)}
