"""Runs side by side (`reslab run --jobs N`): same results as one by one, errors and interrupts handled."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reslab import study
from reslab.errors import ConfigError, ReslabError
from reslab.jobs import run_parallel

ROOT = Path(__file__).resolve().parents[1]
TINY = {"epochs": 3, "batch_size": 16, "wandb": "disabled"}


def _records(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the wall times, which differ between any two runs."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def test_jobs_give_the_same_runs_as_one_at_a_time(tmp_path, tiny_data, capfd):
    common = {**TINY, "data_dir": str(tiny_data)}
    alone = study.run_experiment("ex1.2", seeds=2, overrides={**common, "out": str(tmp_path / "alone")})
    side = study.run_experiment("ex1.2", seeds=2, overrides={**common, "out": str(tmp_path / "side")}, jobs=3)
    out = capfd.readouterr().out
    assert side["runs"] == alone["runs"] == ["mlp-seed0", "resmlp-seed0", "mlp-seed1", "resmlp-seed1"]
    for name in alone["runs"]:
        a, b = tmp_path / "alone" / "ex1.2" / name, tmp_path / "side" / "ex1.2" / name
        assert _records(a) == _records(b)
        summary_a, summary_b = (json.loads((d / "summary.json").read_text()) for d in (a, b))
        assert summary_a["test_accuracy"] == summary_b["test_accuracy"]
    assert "4 runs, 3 at a time" in out
    assert "[resmlp-seed1] " in out and "finished resmlp-seed1" in out
    # The analysis and the report cover every run either way.
    flows = json.loads((tmp_path / "side" / "ex1.2" / "gradient_flow.json").read_text())
    assert len(flows) == 2
    assert (tmp_path / "side" / "ex1.2" / "report.md").is_file()


@pytest.mark.parametrize("jobs", [0, -1, True, 1.5])
def test_bad_jobs_is_a_config_error(tmp_path, jobs):
    with pytest.raises(ConfigError, match=r"jobs must be an integer in \[1, 256\]"):
        study.run_experiment("ex1", overrides={"out": str(tmp_path)}, jobs=jobs)


def _echo(value):
    print(f"working on {value}")
    return value * 2


def _fail_on_two(value):
    if value == 2:
        raise ReslabError("two is not allowed")
    time.sleep(0.5)
    return value


def test_run_parallel_keeps_task_order_and_labels_output(capfd):
    assert run_parallel(_echo, [(f"t{i}", (i,)) for i in range(5)], jobs=2) == [0, 2, 4, 6, 8]
    out = capfd.readouterr().out
    assert "[t3] working on 3" in out


def test_the_first_error_stops_new_runs_and_is_raised(capfd):
    with pytest.raises(ReslabError, match="two is not allowed"):
        run_parallel(_fail_on_two, [(f"t{i}", (i,)) for i in (1, 2, 3, 4, 5, 6)], jobs=2)
    out = capfd.readouterr().out
    assert "finished t1" in out          # the run under way when t2 failed was let finish
    assert "started t6" not in out       # and nothing new started after the failure


def _epochs_logged(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.is_file() else 0


@pytest.mark.parametrize("sig, send", [(signal.SIGINT, os.killpg), (signal.SIGTERM, os.kill)],
                         ids=["ctrl-c to the group", "kill PID"])
def test_a_signal_stops_every_run_politely(tmp_path, tiny_data, sig, send):
    args = [sys.executable, "-m", "reslab", "run", "ex1", "--seeds", "2", "--jobs", "2", "--epochs", "10000",
            "--no-stagnation-stop", "--no-overfit-stop", "--batch-size", "8", "--wandb", "disabled",
            "--data-dir", str(tiny_data), "--out", str(tmp_path)]
    # A session of its own, so the signal reaches the whole group as a terminal's Ctrl-C does.
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    folders = [tmp_path / "ex1" / f"mlp-seed{seed}" for seed in (0, 1)]
    deadline = time.time() + 120
    # Both runs have finished an epoch (last.pth is there from the start, metrics.jsonl gets a line per epoch).
    while time.time() < deadline and not all(_epochs_logged(d) for d in folders):
        time.sleep(0.05)
    send(proc.pid, sig)   # as Ctrl-C in a terminal (or `timeout`: the group), or `kill PID` (the parent alone)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: stopping 2 run(s) after their batch" in out
    for run_dir in folders:   # each run kept its best weights and says how it ended
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["stopped_by"] == "interrupted" and summary["epochs_run"] >= 1
    assert not (tmp_path / "ex1" / "study.json").exists()   # the study does not claim to be done


def test_jobs_under_torchrun_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="torchrun"):
        study.run_experiment("ex1", overrides={"out": str(tmp_path)}, jobs=2)


def test_missing_data_is_found_before_any_process_starts(tmp_path, monkeypatch, capfd):
    """Runs side by side would each download the same files at once: the parent fetches them first."""
    monkeypatch.setenv("RESLAB_OFFLINE", "1")
    (tmp_path / "empty").mkdir()
    result = study.run_experiment("ex1", seeds=2, jobs=2,
                                  overrides={"data_dir": str(tmp_path / "empty"), "out": str(tmp_path / "runs")})
    assert result["status"] == "not run" and "downloads are off" in result["reason"]
    assert "started" not in capfd.readouterr().out
