"""Where a run's numbers go besides its folder: the console, and Weights & Biases when it is available."""
from __future__ import annotations

import math
import netrc
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


class Tracker:
    """Receives a run's config, one record per epoch and the final summary; the base class ignores them."""

    def start(self, config: dict[str, Any]) -> None: ...

    def log_epoch(self, record: dict[str, Any]) -> None: ...

    def log_summary(self, summary: dict[str, Any]) -> None: ...

    def finish(self, exit_code: int = 0) -> None: ...


class Trackers(Tracker):
    """Fans every call out to several trackers."""

    def __init__(self, *trackers: Tracker | None):
        self.trackers = [t for t in trackers if t is not None]

    def start(self, config):
        for t in self.trackers:
            t.start(config)

    def log_epoch(self, record):
        for t in self.trackers:
            t.log_epoch(record)

    def log_summary(self, summary):
        for t in self.trackers:
            t.log_summary(summary)

    def finish(self, exit_code=0):
        for t in self.trackers:
            t.finish(exit_code)


class ConsoleTracker(Tracker):
    """One line per epoch on stdout."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def log_epoch(self, record):
        width = len(str(self.epochs))
        print(f"epoch {record['epoch']:>{width}}/{self.epochs}  "
              f"train loss {record['train_loss']:.4f} acc {100 * record['train_accuracy']:.2f}%  "
              f"val loss {record['val_loss']:.4f} acc {100 * record['val_accuracy']:.2f}%  "
              f"{record['seconds']:.1f}s", flush=True)


class WandbTracker(Tracker):
    """Weights & Biases run; any trouble becomes one warning and the run goes on without it."""

    def __init__(self, mode: str, run_dir: Path, project: str, name: str, group: str | None = None,
                 job_type: str | None = None, run_id: str | None = None):
        self.mode = resolve_wandb_mode(mode)
        self.run_dir, self.project, self.name = Path(run_dir), project, name
        self.group, self.job_type, self.run_id = group, job_type, run_id
        self.run: Any = None   # a wandb Run once started

    def start(self, config):
        try:
            import wandb
        except ImportError:
            _warn("wandb is not installed (pip install 'reslab[wandb]'); W&B logging is off")
            return
        try:
            self.run = wandb.init(project=self.project, name=self.name, group=self.group, job_type=self.job_type,
                                  config=config, dir=str(self.run_dir), mode=self.mode, id=self.run_id,  # type: ignore[arg-type]
                                  resume="allow" if self.run_id else None, reinit="create_new",
                                  settings=wandb.Settings(silent=True, console="off", init_timeout=30))
            self.run_id = self.run.id
        except Exception as exc:  # no network, bad key, a wandb bug: never kill training for it
            _warn(f"W&B could not start ({type(exc).__name__}: {exc}); W&B logging is off")
            self.run = None

    def log_epoch(self, record):
        self._call(lambda: self.run.log({k: v for k, v in record.items() if k != "epoch"}, step=record["epoch"]))

    def log_summary(self, summary):
        def update():
            for key, value in summary.items():
                if isinstance(value, (int, float, str, bool)) and not (isinstance(value, float) and math.isnan(value)):
                    self.run.summary[key] = value
        self._call(update)

    def finish(self, exit_code=0):
        if self.run is None:
            return
        self._call(lambda: self.run.finish(exit_code=exit_code))
        if self.mode == "offline":
            print(f"W&B offline run saved; upload it with: wandb sync {self.run_dir / 'wandb'}/offline-run-*",
                  flush=True)
        self.run = None

    def _call(self, fn) -> None:
        if self.run is None:
            return
        try:
            fn()
        except Exception as exc:
            _warn(f"W&B failed ({type(exc).__name__}: {exc}); W&B logging is off for the rest of the run")
            self.run = None


def wandb_tracker(config: Any, run_dir: Path, name: str | None = None, job_type: str | None = None,
                  run_id: str | None = None) -> WandbTracker | None:
    """The W&B run a TrainConfig asks for (None when `wandb` is disabled), in its experiment's group."""
    if config.wandb == "disabled":
        return None
    return WandbTracker(config.wandb, run_dir, config.wandb_project, name or config.run_name, config.wandb_group,
                        job_type or config.wandb_job_type, run_id)


def resolve_wandb_mode(mode: str) -> str:
    """'auto' becomes online when an API key is set or stored, offline otherwise."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return "online" if netrc.netrc().authenticators(host) else "offline"
    except (OSError, netrc.NetrcParseError):
        return "offline"


def _warn(message: str) -> None:
    print(f"reslab: warning: {message}", file=sys.stderr, flush=True)
