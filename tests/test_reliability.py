"""Nothing lost: resume after SIGKILL, atomic checkpoints, SIGINT, NaN, determinism, W&B trouble."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reslab.checkpoint import load_checkpoint, read_checkpoint
from reslab.cli import main
from reslab.run import evaluate_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--model", "mlp", "--dataset", "mnist", "--epochs", "6", "--batch-size", "32",
         "--no-stagnation-stop", "--no-overfit-stop", "--wandb", "disabled"]


def _metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl without its timing field."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def _summary(run_dir: Path) -> dict:
    s = json.loads((run_dir / "summary.json").read_text())
    return {k: v for k, v in s.items() if k != "train_seconds"}


def _run_killed(data: Path, out: Path, name: str, patch: str) -> int:
    """Run `reslab train` in a child process with `patch` applied first (it SIGKILLs the child somewhere)."""
    code = (f"import os, signal, torch, reslab.loader, reslab.checkpoint\n{patch}\n"
            f"from reslab.cli import main\n"
            f"main({TRAIN + ['--data-dir', str(data), '--out', str(out), '--name', name]!r})\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    return proc.returncode


@pytest.fixture(scope="module")
def reference_run(tiny_data, tmp_path_factory) -> Path:
    """An uninterrupted run to compare the resumed ones with."""
    out = tmp_path_factory.mktemp("ref")
    assert main(TRAIN + ["--data-dir", str(tiny_data), "--out", str(out), "--name", "ref"]) == 0
    return out / "ref"


KILL_MID_EPOCH = """
original = reslab.loader.TensorLoader.__iter__
state = {"epoch": 0}
def iterate(self):
    if self.shuffle:
        state["epoch"] += 1
    for i, batch in enumerate(original(self)):
        if self.shuffle and state["epoch"] == 3 and i == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        yield batch
reslab.loader.TensorLoader.__iter__ = iterate
"""

KILL_MID_CHECKPOINT = """
original = torch.save
calls = {"last": 0}
def save(obj, f, *a, **k):
    if isinstance(obj, dict) and "history" in obj:   # last.pth, not best_model.pth
        calls["last"] += 1
        if calls["last"] == 3:   # third epoch's last.pth: write half of it, then die
            import io
            buf = io.BytesIO(); original(obj, buf, *a, **k)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2]); f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    return original(obj, f, *a, **k)
reslab.checkpoint.torch.save = save
"""


# Mid-checkpoint, epoch 3 was already logged to metrics.jsonl when its last.pth write died.
@pytest.mark.parametrize("patch, logged", [(KILL_MID_EPOCH, 2), (KILL_MID_CHECKPOINT, 3)],
                         ids=["mid-epoch", "mid-checkpoint"])
def test_sigkill_then_resume_matches_uninterrupted(tiny_data, tmp_path, reference_run, patch, logged):
    rc = _run_killed(tiny_data, tmp_path, "run", patch)
    assert rc == -signal.SIGKILL
    run_dir = tmp_path / "run"
    assert len(_metrics(run_dir)) == logged
    last = read_checkpoint(run_dir / "last.pth")            # the file on disk always loads
    assert last["epoch"] == 2
    load_checkpoint(run_dir / "best_model.pth")
    assert main(["resume", str(run_dir)]) == 0
    assert _metrics(run_dir) == _metrics(reference_run)
    assert _summary(run_dir) == _summary(reference_run)
    assert not list(run_dir.glob(".*.tmp"))                 # the half-written temp file was cleaned up


def test_train_resume_flag_continues_a_killed_run(tiny_data, tmp_path, reference_run):
    assert _run_killed(tiny_data, tmp_path, "run", KILL_MID_EPOCH) == -signal.SIGKILL
    args = TRAIN + ["--data-dir", str(tiny_data), "--out", str(tmp_path), "--name", "run"]
    assert main(args) == 2                                   # the folder exists: refused without --resume
    assert main(args + ["--resume"]) == 0
    assert _metrics(tmp_path / "run") == _metrics(reference_run)


def test_same_seed_gives_identical_metrics(tiny_data, tmp_path):
    for name in ("a", "b"):
        assert main(TRAIN + ["--data-dir", str(tiny_data), "--out", str(tmp_path), "--name", name]) == 0
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")
    assert _summary(tmp_path / "a") == _summary(tmp_path / "b")


def test_other_seed_gives_other_metrics(tiny_data, tmp_path):
    for name, seed in (("a", "0"), ("b", "1")):
        assert main(TRAIN + ["--data-dir", str(tiny_data), "--out", str(tmp_path), "--name", name,
                             "--seed", seed]) == 0
    assert _metrics(tmp_path / "a") != _metrics(tmp_path / "b")


def test_sigint_stops_cleanly_with_best_weights(tiny_data, tmp_path):
    args = ["train", "--model", "mlp", "--dataset", "mnist", "--epochs", "10000", "--no-stagnation-stop",
            "--no-overfit-stop", "--batch-size", "8", "--wandb", "disabled", "--data-dir", str(tiny_data),
            "--out", str(tmp_path), "--name", "run"]
    proc = subprocess.Popen([sys.executable, "-m", "reslab", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped_by"] == "interrupted"
    assert "reslab resume" in out
    # The summary's test figures are those of the best checkpoint: the best weights were restored.
    best = evaluate_checkpoint(tmp_path / "run" / "best_model.pth", data_dir=str(tiny_data), device="cpu")
    assert best["accuracy"] == summary["test_accuracy"]
    assert best["loss"] == pytest.approx(summary["test_loss"], rel=1e-6)
    assert read_checkpoint(tmp_path / "run" / "last.pth")["epoch"] == summary["epochs_run"]


def test_nan_loss_stops_at_once_and_names_the_cause(tiny_data, tmp_path, capsys):
    rc = main(["train", "--model", "mlp", "--dataset", "mnist", "--epochs", "5", "--lr", "1e30",
               "--wandb", "disabled", "--data-dir", str(tiny_data), "--out", str(tmp_path), "--name", "run"])
    assert rc == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped_by"] == "nan"
    assert summary["epochs_run"] == 0 and summary["nan_at"].startswith("epoch 1, batch ")
    assert "learning rate" in out and "lr=1e+30" in out


def test_wandb_missing_is_one_warning(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)          # import wandb -> ImportError
    rc = main(["train", "--model", "mlp", "--dataset", "mnist", "--epochs", "2", "--wandb", "offline",
               "--data-dir", str(tiny_data), "--out", str(tmp_path), "--name", "run"])
    assert rc == 0
    err = capsys.readouterr().err
    assert err.count("warning: wandb is not installed") == 1
    assert (tmp_path / "run" / "summary.json").exists()


class _BrokenRun:
    id = "broken"

    def log(self, *a, **k):
        raise RuntimeError("connection reset")

    def finish(self, *a, **k):
        raise RuntimeError("connection reset")


@pytest.mark.parametrize("failure", ["init", "log"])
def test_wandb_errors_never_kill_training(tiny_data, tmp_path, monkeypatch, capsys, failure):
    import wandb

    def init(*a, **k):
        if failure == "init":
            raise wandb.errors.CommError("no network") if hasattr(wandb, "errors") else RuntimeError("no network")
        return _BrokenRun()

    monkeypatch.setattr(wandb, "init", init)
    rc = main(["train", "--model", "mlp", "--dataset", "mnist", "--epochs", "2", "--wandb", "online",
               "--data-dir", str(tiny_data), "--out", str(tmp_path), "--name", "run"])
    assert rc == 0
    err = capsys.readouterr().err
    assert err.count("reslab: warning: W&B") == 1
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["epochs_run"] == 2


def test_checkpoints_hold_only_plain_data(tiny_data, tmp_path):
    assert main(TRAIN + ["--data-dir", str(tiny_data), "--out", str(tmp_path), "--name", "run", "--epochs", "2"]) == 0
    for name in ("best_model.pth", "last.pth"):
        torch.load(tmp_path / "run" / name, weights_only=True)   # raises if anything but tensors/containers
