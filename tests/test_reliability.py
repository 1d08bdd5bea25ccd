"""Nothing lost: resume after SIGKILL, atomic checkpoints, SIGINT, NaN, determinism, W&B trouble, finished runs
left alone, the thread count restored."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import reslab.loader
import reslab.train
from reslab.checkpoint import STAGED_BEST, load_checkpoint, read_checkpoint
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


def _run_killed(data: Path, out: Path, name: str, patch: str, argv: list[str] | None = None) -> int:
    """Run `reslab train` (or `reslab ARGV`) in a child process with `patch` applied first (it SIGKILLs the child
    somewhere)."""
    argv = argv if argv is not None else TRAIN + ["--data-dir", str(data), "--out", str(out), "--name", name]
    code = (f"import os, signal, torch, reslab.loader, reslab.checkpoint\n{patch}\n"
            f"from reslab.cli import main\n"
            f"main({argv!r})\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    return proc.returncode


@pytest.fixture(scope="module")
def reference_run(tiny_data, tmp_path_factory) -> Path:
    """An uninterrupted run to compare the resumed ones with."""
    out = tmp_path_factory.mktemp("ref")
    assert main(TRAIN + ["--data-dir", str(tiny_data), "--out", str(out), "--name", "ref"]) == 0
    return out / "ref"


def kill_mid_epoch(epoch: int) -> str:
    """A patch that SIGKILLs the run at the third batch of this training epoch."""
    return f"""
original = reslab.loader.TensorLoader.__iter__
state = {{"epoch": 0}}
def iterate(self):
    if self.shuffle:
        state["epoch"] += 1
    for i, batch in enumerate(original(self)):
        if self.shuffle and state["epoch"] == {epoch} and i == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        yield batch
reslab.loader.TensorLoader.__iter__ = iterate
"""


KILL_MID_EPOCH = kill_mid_epoch(3)

KILL_MID_CHECKPOINT = """
original = torch.save
def save(obj, f, *a, **k):
    if isinstance(obj, dict) and "history" in obj:   # last.pth, not best_model.pth
        if obj["epoch"] == 3:   # third epoch's last.pth: write half of it, then die
            import io
            buf = io.BytesIO(); original(obj, buf, *a, **k)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2]); f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    return original(obj, f, *a, **k)
reslab.checkpoint.torch.save = save
"""


KILL_BETWEEN_CHECKPOINTS = """
original = torch.save
def save(obj, f, *a, **k):
    # last.pth of an improving epoch from the third on: its new best is staged, last.pth is not written yet.
    if isinstance(obj, dict) and "history" in obj and obj["epoch"] >= 3 and obj["best_epoch"] == obj["epoch"]:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(obj, f, *a, **k)
reslab.checkpoint.torch.save = save
"""


# Mid-checkpoint, epoch 3 was already logged to metrics.jsonl when its last.pth write died. In the first epoch
# nothing is logged yet: last.pth holds the state training started from.
@pytest.mark.slow   # a child process
@pytest.mark.parametrize("patch, logged, saved", [(KILL_MID_EPOCH, 2, 2), (KILL_MID_CHECKPOINT, 3, 2),
                                                  (kill_mid_epoch(1), 0, 0)],
                         ids=["mid-epoch", "mid-checkpoint", "first-epoch"])
def test_sigkill_then_resume_matches_uninterrupted(tiny_data, tmp_path, reference_run, patch, logged, saved):
    rc = _run_killed(tiny_data, tmp_path, "run", patch)
    assert rc == -signal.SIGKILL
    run_dir = tmp_path / "run"
    assert len(_metrics(run_dir)) == logged
    last = read_checkpoint(run_dir / "last.pth")            # the file on disk always loads
    assert last["epoch"] == saved
    if saved:
        load_checkpoint(run_dir / "best_model.pth")
    assert main(["resume", str(run_dir)]) == 0
    assert _metrics(run_dir) == _metrics(reference_run)
    assert _summary(run_dir) == _summary(reference_run)
    assert not list(run_dir.glob(".*.tmp"))                 # the half-written temp file was cleaned up


@pytest.mark.slow   # a child process
def test_kill_between_the_checkpoints_then_ctrl_c_in_the_rerun_epoch(tiny_data, tmp_path, monkeypatch):
    """A best staged but never named by last.pth is dropped, and the summary names the weights it tested."""
    assert _run_killed(tiny_data, tmp_path, "run", KILL_BETWEEN_CHECKPOINTS) == -signal.SIGKILL
    run_dir = tmp_path / "run"
    killed_epoch = read_checkpoint(run_dir / "last.pth")["epoch"] + 1
    assert read_checkpoint(run_dir / STAGED_BEST)["epoch"] == killed_epoch
    original = reslab.loader.TensorLoader.__iter__

    def iterate(self):
        for i, batch in enumerate(original(self)):
            if self.shuffle and i == 2:   # Ctrl-C in the resume's first epoch: the one the kill cut short
                os.kill(os.getpid(), signal.SIGINT)
            yield batch

    monkeypatch.setattr(reslab.loader.TensorLoader, "__iter__", iterate)
    assert main(["resume", str(run_dir)]) == 130
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped_by"] == "interrupted" and summary["epochs_run"] == killed_epoch - 1
    best = read_checkpoint(run_dir / "best_model.pth")
    assert best["epoch"] == summary["best_epoch"] < killed_epoch
    assert not (run_dir / STAGED_BEST).exists()
    tested = evaluate_checkpoint(run_dir / "best_model.pth", data_dir=str(tiny_data), device="cpu")
    assert tested["accuracy"] == summary["test_accuracy"]
    assert tested["loss"] == pytest.approx(summary["test_loss"], rel=1e-6)


def _ctrl_c_in_the_first_epoch(monkeypatch) -> None:
    """Ctrl-C at the third batch of the first training epoch (once: a rerun in this process trains on)."""
    original = reslab.loader.TensorLoader.__iter__
    sent = []

    def iterate(self):
        for i, batch in enumerate(original(self)):
            if self.shuffle and i == 2 and not sent:
                sent.append(True)
                os.kill(os.getpid(), signal.SIGINT)
            yield batch

    monkeypatch.setattr(reslab.loader.TensorLoader, "__iter__", iterate)


def test_ctrl_c_in_the_first_epoch_then_resume_matches_uninterrupted(tiny_data, tmp_path, reference_run,
                                                                      monkeypatch, capsys):
    _ctrl_c_in_the_first_epoch(monkeypatch)
    run_dir = tmp_path / "run"
    assert main(TRAIN + ["--data-dir", str(tiny_data), "--out", str(tmp_path), "--name", "run"]) == 130
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped_by"] == "interrupted" and summary["epochs_run"] == summary["best_epoch"] == 0
    out = capsys.readouterr().out
    assert f"continue with: reslab resume {run_dir}" in out and "the test used the initial weights" in out
    assert read_checkpoint(run_dir / "last.pth")["epoch"] == 0
    assert main(["resume", str(run_dir)]) == 0
    assert _metrics(run_dir) == _metrics(reference_run)
    assert _summary(run_dir) == _summary(reference_run)


def test_a_study_rerun_resumes_a_run_stopped_in_its_first_epoch(tiny_data, tmp_path, monkeypatch, capsys):
    _ctrl_c_in_the_first_epoch(monkeypatch)
    argv = ["run", "ex1", *EARLY, "--data-dir", str(tiny_data), "--out", str(tmp_path)]
    run_dir = tmp_path / "ex1" / "mlp-seed0"
    assert main(argv) == 130
    capsys.readouterr()
    assert main(argv) == 0
    assert f"resuming {run_dir}" in capsys.readouterr().out
    assert json.loads((run_dir / "summary.json").read_text())["stopped_by"] == "stagnation"


def test_resume_without_last_pth_says_how_to_start_again(tiny_data, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("model: mlp\n")   # killed while the run was being set up
    assert main(["resume", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "last.pth does not exist (the run stopped before training began)" in err and "--overwrite" in err
    assert main(["resume", str(tmp_path / "nowhere")]) == 2
    assert f"cannot resume: {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err


@pytest.mark.slow   # a child process
def test_a_kill_while_testing_an_early_stopped_run_then_resume_trains_no_further_epoch(tiny_data, tmp_path):
    """The stopping epoch's last.pth is written before the test: a resume from it tests, as the run would have."""
    # min_delta 100: epoch 1 improves on infinity, epoch 2 cannot improve, so stagnation (patience 1) stops there.
    argv = ["train", "--model", "mlp", "--dataset", "mnist", "--epochs", "6", "--batch-size", "32", "--patience", "1",
            "--min-delta", "100", "--no-overfit-stop", "--wandb", "disabled", "--data-dir", str(tiny_data),
            "--out", str(tmp_path)]
    assert main(argv + ["--name", "ref"]) == 0
    kill_in_test = "import reslab.run\nreslab.run.evaluate = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)"
    assert _run_killed(tiny_data, tmp_path, "run", kill_in_test, argv + ["--name", "run"]) == -signal.SIGKILL
    run_dir = tmp_path / "run"
    assert read_checkpoint(run_dir / "last.pth")["epoch"] == 2 and not (run_dir / "summary.json").exists()
    assert main(["resume", str(run_dir)]) == 0
    assert (_summary(run_dir)["epochs_run"], _summary(run_dir)["stopped_by"]) == (2, "stagnation")
    assert _metrics(run_dir) == _metrics(tmp_path / "ref")
    assert _summary(run_dir) == _summary(tmp_path / "ref")


@pytest.mark.slow   # a child process
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


@pytest.mark.slow   # a child process
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
    assert "no epoch finished" in out
    assert summary["best_val_loss"] is None   # not Infinity: every JSON file is standard JSON
    for path in (tmp_path / "run").glob("*.json*"):
        for text in path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]:
            json.loads(text, parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"not standard JSON: {name}")


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
    wandb = pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install -e '.[wandb]')")

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


# Stops early on the tiny data: once the val loss drops by less than 0.05, the next such epoch ends the run.
EARLY = ["--epochs", "50", "--patience", "1", "--min-delta", "0.05", "--wandb", "disabled"]


def _files(run_dir: Path) -> dict[str, bytes]:
    return {name: (run_dir / name).read_bytes()
            for name in ("config.yaml", "metrics.jsonl", "summary.json", "last.pth", "best_model.pth")}


def test_a_finished_run_stays_finished(tiny_data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--model", "mlp", "--dataset", "mnist", *EARLY, "--data-dir", str(tiny_data),
                 "--out", str(tmp_path), "--name", "run"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped_by"] == "stagnation" and summary["epochs_run"] < 50
    before = _files(run_dir)
    capsys.readouterr()
    assert main(["resume", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "is a finished run (stopped by stagnation" in out and "nothing to resume" in out
    assert _files(run_dir) == before


def test_a_study_rerun_reuses_an_early_stopped_run(tiny_data, tmp_path, capsys):
    argv = ["run", "ex1", *EARLY, "--data-dir", str(tiny_data), "--out", str(tmp_path)]
    run_dir = tmp_path / "ex1" / "mlp-seed0"
    assert main(argv) == 0
    assert json.loads((run_dir / "summary.json").read_text())["stopped_by"] == "stagnation"
    before = _files(run_dir)
    capsys.readouterr()
    assert main(argv) == 0
    assert f"reusing finished run {run_dir}" in capsys.readouterr().out
    assert _files(run_dir) == before


@pytest.fixture
def threads_restored():
    """Runs set torch's thread count in this process: give the next tests the one they had."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _threads(run_dir: Path) -> int:
    return yaml.safe_load((run_dir / "config.yaml").read_text())["threads"]


def test_a_cpu_run_records_its_thread_count(tiny_data, tmp_path, threads_restored):
    common = TRAIN + ["--epochs", "1", "--data-dir", str(tiny_data), "--out", str(tmp_path)]
    default = torch.get_num_threads()
    assert main(common + ["--name", "default"]) == 0
    assert _threads(tmp_path / "default") == default
    assert main(common + ["--name", "two", "--threads", "2"]) == 0
    assert _threads(tmp_path / "two") == 2


STUDY = ["run", "ex1", "--epochs", "6", "--batch-size", "32", "--no-stagnation-stop", "--no-overfit-stop",
         "--wandb", "disabled"]


@pytest.mark.slow   # a child process
def test_a_resume_uses_the_recorded_thread_count(tiny_data, tmp_path, monkeypatch, threads_restored):
    """A study run killed on 2 threads and rerun with --threads 1 resumes on 2, as recorded, and ends as the
    uninterrupted run did (the thread count changes a CPU run's sums)."""
    common = STUDY + ["--data-dir", str(tiny_data)]
    assert main(common + ["--threads", "2", "--out", str(tmp_path / "whole")]) == 0
    cut = tmp_path / "cut"
    argv = common + ["--threads", "2", "--out", str(cut)]
    assert _run_killed(tiny_data, cut, "", KILL_MID_EPOCH, argv) == -signal.SIGKILL
    run_dir = cut / "ex1" / "mlp-seed0"
    assert _threads(run_dir) == 2 and len(_metrics(run_dir)) == 2
    used = []
    original = reslab.train.train_epoch

    def train_epoch(*args, **kwargs):
        used.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(reslab.train, "train_epoch", train_epoch)
    torch.set_num_threads(1)
    assert main(common + ["--threads", "1", "--out", str(cut)]) == 0
    assert used == [2] * 4                                   # epochs 3..6, on the recorded 2 threads
    assert _metrics(run_dir) == _metrics(tmp_path / "whole" / "ex1" / "mlp-seed0")
    assert _threads(run_dir) == 2
