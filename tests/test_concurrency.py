"""One writer per folder: two real processes on one run or experiment folder, and `--jobs` children whose parent
dies."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# Runs long enough to overlap any other process: both early stops off, small batches, epochs without end.
ENDLESS = ["--epochs", "10000", "--no-stagnation-stop", "--no-overfit-stop", "--batch-size", "8", "--wandb", "disabled"]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX process control")]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    """`reslab ARGS` in a process of its own, its output in files (a pipe nobody reads would stall it)."""
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        return subprocess.Popen([sys.executable, "-m", "reslab", *args], cwd=ROOT, stdout=out, stderr=err)


def _epochs(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()] if path.is_file() else []


def _wait_for_epochs(run_dirs: list[Path], count: int, proc: subprocess.Popen) -> None:
    """Wait until every run folder's metrics.jsonl holds `count` epochs (the process must still be running)."""
    deadline = time.time() + 60
    while not all(len(_epochs(d)) >= count for d in run_dirs):
        assert proc.poll() is None, f"exited early with code {proc.returncode}"
        assert time.time() < deadline, "no epoch within 60 s"
        time.sleep(0.05)


def _refused(args: list[str], holder: subprocess.Popen) -> str:
    """Run `reslab ARGS` to its end while `holder` writes; assert one line, exit 2, naming the holder; return it."""
    # The holder has only to keep its folder meanwhile: on a busy machine the other process starts sooner.
    os.setpriority(os.PRIO_PROCESS, holder.pid, 10)
    proc = subprocess.run([sys.executable, "-m", "reslab", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert holder.poll() is None, "the first process ended before the second one was refused"
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("reslab: error: ") and "Traceback" not in err, err
    assert f"is in use by process {holder.pid};" in err
    return err


def _stop(proc: subprocess.Popen) -> None:
    """Ctrl-C: the run stops after its batch, tests its best weights and says it was interrupted (exit 130)."""
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130


def _one_clean_run(run_dir: Path) -> None:
    """metrics.jsonl holds epochs 1..N once, N the epochs of summary.json and of last.pth: one writer wrote it."""
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_run"] >= 1
    assert _epochs(run_dir) == list(range(1, summary["epochs_run"] + 1))
    for name in ("config.yaml", "best_model.pth", "last.pth"):
        assert (run_dir / name).is_file()


@pytest.mark.parametrize("together", [False, True], ids=["after-its-first-epoch", "started-together"])
def test_two_trainers_of_one_run_folder(tiny_data, tmp_path, together):
    args = ["train", "--model", "mlp", "--dataset", "mnist", *ENDLESS, "--data-dir", str(tiny_data),
            "--out", str(tmp_path / "runs"), "--name", "run"]
    run_dir = tmp_path / "runs" / "run"
    if together:   # both check the (absent) folder, load the data; the first to lock it trains
        procs = [_start(args, tmp_path / f"p{i}") for i in range(2)]
        deadline = time.time() + 120
        while all(p.poll() is None for p in procs) and time.time() < deadline:
            time.sleep(0.05)
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        try:
            assert loser.returncode == 2
            err = (tmp_path / f"p{procs.index(loser)}.err").read_text().strip()
            assert len(err.splitlines()) == 1 and f"run folder {run_dir} is in use by process {winner.pid};" in err
            _wait_for_epochs([run_dir], 1, winner)
        finally:
            _stop(winner)
    else:
        first = _start(args, tmp_path / "first")
        try:
            _wait_for_epochs([run_dir], 1, first)
            assert f"run folder {run_dir} is in use" in _refused(args, first)
        finally:
            _stop(first)
    _one_clean_run(run_dir)


def test_two_resumes_of_one_killed_run(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    first = _start(["train", "--model", "mlp", "--dataset", "mnist", *ENDLESS, "--data-dir", str(tiny_data),
                    "--out", str(tmp_path), "--name", "run"], tmp_path / "first")
    _wait_for_epochs([run_dir], 2, first)
    first.kill()   # the kernel drops its lock: no stale lock keeps the resume out
    first.wait()
    killed_at = len(_epochs(run_dir))
    resume = _start(["resume", str(run_dir)], tmp_path / "resume")
    try:
        _wait_for_epochs([run_dir], killed_at + 1, resume)
        _refused(["resume", str(run_dir)], resume)
    finally:
        _stop(resume)
    _one_clean_run(run_dir)


def test_two_studies_of_one_experiment_folder(tiny_data, tmp_path):
    args = ["run", "ex1", *ENDLESS, "--data-dir", str(tiny_data), "--out", str(tmp_path)]
    first = _start(args, tmp_path / "first")
    try:
        _wait_for_epochs([tmp_path / "ex1" / "mlp-seed0"], 1, first)
        assert f"experiment folder {tmp_path / 'ex1'} is in use" in _refused(args, first)
    finally:
        _stop(first)
    _one_clean_run(tmp_path / "ex1" / "mlp-seed0")
    assert not (tmp_path / "ex1" / "study.json").exists()   # interrupted: the study does not claim to be done


def test_overwrite_while_another_process_trains_there(tiny_data, tmp_path):
    args = ["train", "--model", "mlp", "--dataset", "mnist", *ENDLESS, "--data-dir", str(tiny_data),
            "--out", str(tmp_path), "--name", "run"]
    run_dir = tmp_path / "run"
    first = _start(args, tmp_path / "first")
    try:
        _wait_for_epochs([run_dir], 1, first)
        _refused(args + ["--overwrite"], first)
        before = len(_epochs(run_dir))
        _wait_for_epochs([run_dir], before + 1, first)   # the trainer goes on in its folder
    finally:
        _stop(first)
    _one_clean_run(run_dir)


def _children(pid: int) -> list[int]:
    """The run processes `reslab run --jobs` spawned (not multiprocessing's resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


EPOCHS = 30


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the children through /proc")
def test_jobs_children_stop_when_their_parent_dies(tiny_data, tmp_path):
    # 30 epochs of 270 single-image steps (0.25-0.4 s each here): the parent is killed once both runs have an
    # epoch, so the run that started first must not finish meanwhile (with 5 epochs, a start 1.2 s apart on a busy
    # CI machine let one end by max_epochs); short enough to finish on the rerun.
    args = ["run", "ex1", "--seeds", "2", "--jobs", "2", "--epochs", str(EPOCHS), "--batch-size", "1",
            "--no-stagnation-stop", "--no-overfit-stop", "--wandb", "disabled", "--data-dir", str(tiny_data),
            "--out", str(tmp_path)]
    folders = [tmp_path / "ex1" / f"mlp-seed{seed}" for seed in (0, 1)]
    parent = _start(args, tmp_path / "parent")
    children: list[int] = []
    try:
        _wait_for_epochs(folders, 1, parent)
        children = _children(parent.pid)
        assert len(children) == 2
        parent.kill()
        parent.wait()
        deadline = time.time() + 10
        while any(_alive(pid) for pid in children) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in children), "a child went on training after its parent died"
    finally:
        for pid in children:   # never leave one behind, whatever failed
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert "Traceback" not in (tmp_path / "parent.err").read_text()   # no result to send: no traceback either
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for run_dir in folders:   # each stopped politely: last.pth, the best weights tested, `interrupted`
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["stopped_by"] == "interrupted" and 1 <= summary["epochs_run"] < EPOCHS
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["threads"] == max(1, cores // 2)
    rerun = subprocess.run([sys.executable, "-m", "reslab", *args], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.count("resuming ") == 2
    assert json.loads((tmp_path / "ex1" / "study.json").read_text())["status"] == "done"
    for run_dir in folders:
        assert _epochs(run_dir) == list(range(1, EPOCHS + 1))
        assert json.loads((run_dir / "summary.json").read_text())["stopped_by"] == "max_epochs"
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["threads"] == max(1, cores // 2)
