"""A run's folder: one writer at a time (a lock), its JSON files, and the lifecycle every kind of run shares.

`RunFolder` is what `reslab train`, fine-tuning and the transfer probes all go through: check and lock the
folder, write config.yaml, start the trackers (console, metrics.jsonl, W&B), write summary.json once the
result is known, close the trackers and let go of the folder.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from .errors import ReslabError
from .tracking import ConsoleTracker, Tracker, Trackers, WandbTracker

try:   # POSIX: a lock the kernel drops with its process, so a SIGKILL never leaves a stale one
    import fcntl
except ImportError:   # Windows: folders are not locked
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".reslab.lock"
# The files that make a folder a reslab run (or an experiment's folder): --overwrite deletes only such folders.
RUN_FILES = ("config.yaml", "metrics.jsonl", "last.pth", "best_model.pth", "summary.json", "study.json",
             "experiment.yaml", "lab.json")
NUMBER = (int, float)   # a JSON number (a non-finite value is written as null, which is none)
# The fields of a run's or study's JSON files that their readers rely on: a file without them was cut short or
# edited by hand. Groups after the first are all there or all absent (a summary's training fields: a probe has none;
# its transfer fields: a run trained from scratch has none).
FIELDS: dict[str, tuple[dict[str, Any], ...]] = {
    "summary.json": ({"model": str, "model_args": dict, "dataset": str, "seed": int, "test_accuracy": NUMBER,
                      "test_precision": NUMBER, "train_seconds": NUMBER},
                     {"epochs_run": int, "best_epoch": int, "stopped_by": str, "test_loss": NUMBER},
                     {"method": str, "source_dataset": str}),
    "study.json": ({"experiment": str, "description": str, "status": str, "runs": list, "seeds": int,
                    "wall_seconds": NUMBER},),
    "lab.json": ({"exercises": list, "profile": str, "seeds": int, "wall_seconds": NUMBER},),
}
# What every line of a metrics.jsonl holds (values may be null: a non-finite loss).
RECORD_FIELDS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")


class FolderLock:
    """An exclusive OS lock on a folder for as long as one process writes in it (a context manager)."""

    def __init__(self, folder: str | Path, what: str = "run folder"):
        self.folder, self.what = Path(folder), what
        self.file: Any = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, or raise a one-line error naming the process that holds it."""
        if fcntl is None or self.file is not None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            file = open(self.folder / LOCK_NAME, "a+")
        except OSError as exc:
            raise ReslabError(f"output folder {self.folder} is not writable ({exc.strerror or exc})") from None
        self._lock_or_refuse(file)
        file.seek(0)
        file.truncate()
        file.write(f"process {os.getpid()}")
        file.flush()
        self.file = file

    def check_free(self) -> None:
        """Raise the error `acquire` would if another process holds the lock now; write nothing (a folder that is
        then refused for another reason stays as it was)."""
        if fcntl is None or self.file is not None:
            return
        try:
            file = open(self.folder / LOCK_NAME)
        except OSError:   # no lock file: nobody has ever held the lock
            return
        with file:
            self._lock_or_refuse(file)   # closing the file drops the lock again

    def _lock_or_refuse(self, file: Any) -> None:
        """flock an open lock file; if another process holds it, close the file and say which process."""
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder(file)
            file.close()
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise ReslabError(f"{self.what} {self.folder} is in use by {holder}; wait for it to finish (or stop "
                              "it) before writing there") from None

    def release(self) -> None:
        if self.file is not None:
            self.file.close()   # closing the file drops the lock
            self.file = None


def _holder(file: Any) -> str:
    """Who holds a lock file: 'process N' (its holder writes that just after taking the lock, so wait a moment)."""
    for _ in range(20):
        file.seek(0)
        holder = file.read().strip()
        if holder:
            return holder
        time.sleep(0.01)
    return "another process"


def find_os_error(exc: BaseException | None) -> OSError | None:
    """The OSError an exception is, or was raised from or while handling (its __cause__/__context__ chain)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Name `path` in an OSError raised while writing it, even one wrapped in another exception: a write into
    an open file (a full disk) raises one that names no file, and the user must learn which write failed."""
    try:
        yield
    except Exception as exc:
        error = find_os_error(exc)
        if error is None:
            raise
        raise OSError(error.errno, error.strerror or str(error), str(path)) from exc


def is_reslab_folder(folder: Path) -> bool:
    """Whether a folder holds a reslab run's or study's files (and so may be replaced by --overwrite)."""
    return any((folder / name).exists() for name in RUN_FILES)


STUDY_FILES = RUN_FILES + ("report.md", "figures", "gradient_flow.json", LOCK_NAME)


def check_experiment_dir(folder: Path) -> None:
    """An experiment folder may hold only what reslab writes there: its own files and run folders."""
    if not folder.is_dir():
        return
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in STUDY_FILES and not p.name.startswith(".")
                     and not (p.is_dir() and (is_reslab_folder(p) or not any(p.iterdir()))))
    if foreign:
        raise ReslabError(f"{folder} holds files that are not a reslab study's ({', '.join(foreign[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}); choose another --out (reslab never writes "
                          "among them)")


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Fail early, before any work, if the run folder cannot be used as asked."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ReslabError(f"{run_dir} is a file, not a folder")
    if resume and not run_dir.is_dir():
        raise ReslabError(f"cannot resume: {run_dir} does not exist")
    if not run_dir.exists():
        check_can_create(run_dir)
    entries = [p for p in run_dir.iterdir() if p.name != LOCK_NAME] if run_dir.is_dir() else []
    if entries and not is_reslab_folder(run_dir):
        raise ReslabError(f"{run_dir} holds files that are not a reslab run; choose another --out or --name "
                          "(reslab never deletes them, --overwrite included)")
    if resume and not (run_dir / "last.pth").is_file():
        # A run writes last.pth before its first epoch: without one it stopped while it was still being set up.
        raise ReslabError(f"cannot resume: {run_dir / 'last.pth'} does not exist (the run stopped before training "
                          "began); start it again with --overwrite")
    if not resume and not overwrite and entries:
        raise ReslabError(f"run folder {run_dir} already exists; use --resume to continue it, --overwrite to "
                          "replace it, or --name for a new one")


def check_can_create(folder: Path) -> None:
    """A folder that does not exist yet could be made: its nearest existing parent is a folder we may write in.
    Nothing is created, so a command refused later for another reason leaves no empty folders behind."""
    parent = next(p for p in folder.absolute().parents if p.exists())
    if not parent.is_dir():
        raise ReslabError(f"output folder {folder} cannot be made: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ReslabError(f"output folder {folder} cannot be made: {parent} is not writable")


def empty_folder(folder: Path) -> None:
    """Delete everything in a folder but its lock (which the caller holds)."""
    for entry in folder.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def copy_run(source: Path, run_dir: Path, config: dict[str, Any]) -> None:
    """Copy a finished run folder (locked while copied) into an empty or new run_dir, with `config` as its
    config.yaml (the source's, amended by the caller)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with FolderLock(source), FolderLock(run_dir):
        empty_folder(run_dir)
        with writing(run_dir):
            for entry in source.iterdir():
                if entry.name in (LOCK_NAME, "config.yaml") or entry.name.endswith(".tmp"):
                    continue
                if entry.is_dir():
                    shutil.copytree(entry, run_dir / entry.name)
                else:
                    shutil.copy2(entry, run_dir / entry.name)
        # config.yaml last: until it is written the folder holds no started run, so a copy cut short is redone.
        write_yaml(run_dir / "config.yaml", config)


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Create the run folder (emptied first when overwriting), check it is writable, drop half-written temp files."""
    check_run_dir(run_dir, resume, overwrite)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if overwrite and not resume:
            empty_folder(run_dir)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ReslabError(f"output folder {run_dir} is not writable ({exc.strerror or exc})") from None
    for stale in run_dir.glob(".*.tmp"):   # a checkpoint write that a crash cut short
        stale.unlink()


def finite(obj: Any) -> Any:
    """`obj` with every non-finite float replaced by None: JSON files hold standard JSON only."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def json_text(obj: Any, indent: str = "") -> str:
    """JSON indented by two spaces, except that a list of plain values stays on one line."""
    # A CIFAR-100 confusion matrix then reads one row per line: 100 lines, not 10,000 (and a third of the bytes).
    inner = indent + "  "
    if isinstance(obj, dict) and obj:
        # A key as json.dumps would write it: a string as it is, any other key as its JSON text.
        items = [f"{inner}{json.dumps(k if isinstance(k, str) else json.dumps(k))}: {json_text(v, inner)}"
                 for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    if isinstance(obj, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) and v for v in obj):
        return "[\n" + ",\n".join(inner + json_text(v, inner) for v in obj) + f"\n{indent}]"
    return json.dumps(obj, allow_nan=False)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON through a temp file and a rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with writing(path):
        tmp.write_text(json_text(finite(obj)) + "\n")
        os.replace(tmp, path)


def write_yaml(path: Path, obj: Any) -> None:
    """Write a YAML mapping (settings in their order) through a temp file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with writing(path):
        tmp.write_text(yaml.safe_dump(finite(obj), sort_keys=False))
        os.replace(tmp, path)


def read_json(path: Path, kind: type = dict, needs: tuple[str, ...] = ()) -> Any:
    """A JSON file of a run or study folder, of the expected kind and with the fields its readers rely on (FIELDS;
    `needs` names optional ones this reader needs too); a missing or damaged one is a one-line error naming it."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        why = "missing" if isinstance(exc, FileNotFoundError) else "damaged"
        raise ReslabError(f"{path} is {why}; the folder is incomplete (rerun, with --overwrite to replace "
                          "it)") from None
    if not isinstance(value, kind):
        raise _damaged(path, f"not a JSON {'object' if kind is dict else 'list'}")
    if isinstance(value, dict):
        _check_fields(path, value, FIELDS.get(Path(path).name, ()), needs)
    return value


def _check_fields(path: Path, value: dict[str, Any], groups: tuple[dict[str, Any], ...],
                  needs: tuple[str, ...]) -> None:
    """Every field of the first group, and of each later group that is there (or needed), of its type."""
    for number, fields in enumerate(groups):
        if number > 0 and not any(key in value or key in needs for key in fields):
            continue
        wrong = [key for key, types in fields.items() if not _of_type(value.get(key), types)]
        if wrong:
            raise _damaged(path, f"{', '.join(wrong)} missing or of the wrong type")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (none when it is missing); a damaged line is a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        records = [json.loads(line) for line in path.read_text().splitlines() if line]
    except ValueError:
        records = None
    if records is None or not all(isinstance(r, dict) and all(k in r for k in RECORD_FIELDS) for r in records):
        raise _damaged(path, f"a line is not a JSON object with {', '.join(RECORD_FIELDS)}")
    return records


def _of_type(value: Any, types: Any) -> bool:
    """isinstance, except that JSON true and false are no numbers."""
    return isinstance(value, types) and not isinstance(value, bool)


def _damaged(path: Path, why: str) -> ReslabError:
    return ReslabError(f"{path} is damaged ({why}); rerun, with --overwrite to replace it")


class JsonlTracker(Tracker):
    """metrics.jsonl: one JSON object per epoch, flushed and synced as it is written."""

    def __init__(self, path: str | Path, history: list[dict[str, Any]] | None = None):
        self.path = Path(path)
        # A resumed run rewrites the file from its checkpoint's history, dropping epochs the crash lost.
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with writing(self.path):
            tmp.write_text("".join(json.dumps(finite(record), allow_nan=False) + "\n" for record in history or []))
            os.replace(tmp, self.path)

    def log_epoch(self, record: dict[str, Any]) -> None:
        with writing(self.path), open(self.path, "a") as f:
            f.write(json.dumps(finite(record), allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())


class RunFolder:
    """One run's folder from start to finish (a context manager).

    On entry: lock the folder (a second writer gets a one-line error), check and prepare it, write config.yaml,
    start the trackers. `finish(summary)` writes summary.json and hands the summary to the trackers. On exit:
    close the trackers (W&B with the exit code) and release the lock. `lock` may be a FolderLock the caller
    took already (to read the folder before deciding what to write).
    """

    def __init__(self, run_dir: Path, config: dict[str, Any], *, wandb: WandbTracker | None = None,
                 console_epochs: int | None = None, tracker: Tracker | None = None,
                 history: list[dict[str, Any]] | None = None, resume: bool = False, overwrite: bool = False,
                 lock: FolderLock | None = None):
        self.run_dir, self.config = Path(run_dir), config
        self.resume, self.overwrite = resume, overwrite
        self.lock = lock if lock is not None else FolderLock(self.run_dir)
        self.wandb = wandb
        self._parts = (console_epochs, tracker, history)
        self.trackers = Trackers()
        self.exit_code = 1

    def __enter__(self) -> RunFolder:
        self.lock.acquire()
        try:
            prepare_run_dir(self.run_dir, self.resume, self.overwrite)
            write_yaml(self.run_dir / "config.yaml", self.config)
            console_epochs, tracker, history = self._parts
            self.trackers = Trackers(ConsoleTracker(console_epochs) if console_epochs else None,
                                     JsonlTracker(self.run_dir / "metrics.jsonl", history or []), self.wandb, tracker)
            self.trackers.start(self.config)
        except BaseException:
            self.lock.release()
            raise
        return self

    @property
    def wandb_id(self) -> str | None:
        return self.wandb.run_id if self.wandb is not None else None

    def finish(self, summary: dict[str, Any]) -> None:
        """Write summary.json (after the checkpoint it describes) and log the summary."""
        write_json_atomic(self.run_dir / "summary.json", summary)
        self.trackers.log_summary(summary)
        self.exit_code = 0

    def __exit__(self, *exc: Any) -> None:
        try:
            self.trackers.finish(self.exit_code)
        finally:
            self.lock.release()
