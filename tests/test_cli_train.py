"""`reslab train` end to end on tiny data: the run folder, W&B offline files, config files, one-line errors."""
from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from reslab.cli import main

EPOCH_KEYS = {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"}
SUMMARY_KEYS = {"test_loss", "test_accuracy", "test_precision", "epochs_run", "best_epoch", "stopped_by",
                "train_seconds", "model", "dataset", "seed"}
CONFIG_KEYS = {"patience", "min_delta", "overfit_patience", "overfit_delta", "epochs", "data_official",
               "normalization"}


def _train(tiny_data: Path, out: Path, *flags: str) -> int:
    return main(["train", "--data-dir", str(tiny_data), "--out", str(out), "--device", "cpu", *flags])


def _one_line_error(capsys) -> str:
    """The captured stderr: exactly one line, no traceback; returns it."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("reslab: error: ")
    return lines[0]


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_the_run_folder(tiny_data, tmp_path, capsys):
    code = _train(tiny_data, tmp_path, "--wandb", "disabled", "--epochs", "3", "--patience", "4",
                  "--min-delta", "0.001", "--overfit-patience", "2", "--overfit-delta", "0.5", "--seed", "3")
    assert code == 0
    run_dir = tmp_path / "mlp-mnist-seed3"
    out = capsys.readouterr().out
    assert "epoch 1/3" in out and f"run folder: {run_dir}" in out
    assert "not the official release" in out

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert CONFIG_KEYS <= set(config)
    assert (config["patience"], config["min_delta"], config["overfit_patience"], config["overfit_delta"],
            config["epochs"]) == (4, 0.001, 2, 0.5, 3)
    assert config["data_official"] is False
    assert set(config["normalization"]) == {"mean", "std"}
    assert len(config["normalization"]["mean"]) == len(config["normalization"]["std"]) == 1
    assert 0 < config["normalization"]["mean"][0] < 1 and 0 < config["normalization"]["std"][0] < 1

    records = _records(run_dir)
    text = (run_dir / "summary.json").read_text()
    summary = json.loads(text)
    # Readable and small: the confusion matrix one row per line, the rest indented.
    rows = [json.dumps(row) for row in summary["test_confusion_matrix"]]
    assert [line.strip().rstrip(",") for line in text.splitlines() if line.strip().startswith("[")] == rows
    assert '\n  "seed": 3,\n' in text
    assert [r["epoch"] for r in records] == list(range(1, summary["epochs_run"] + 1))
    for record in records:
        assert EPOCH_KEYS <= set(record)
        assert all(math.isfinite(record[k]) for k in EPOCH_KEYS)
        assert 0 <= record["train_accuracy"] <= 1 and 0 <= record["val_accuracy"] <= 1
    assert (run_dir / "best_model.pth").stat().st_size > 0

    assert SUMMARY_KEYS <= set(summary)
    assert (summary["model"], summary["dataset"], summary["seed"]) == ("mlp", "mnist", 3)
    assert summary["stopped_by"] in ("max_epochs", "stagnation", "overfitting")
    assert 1 <= summary["best_epoch"] <= summary["epochs_run"] <= 3
    assert 0 <= summary["test_accuracy"] <= 1 and summary["test_loss"] > 0
    assert summary["best_val_loss"] == records[summary["best_epoch"] - 1]["val_loss"]
    assert not (run_dir / "wandb").exists()
    assert not list(run_dir.rglob("*wandb*"))


def test_model_flags_reach_the_model(tiny_data, tmp_path):
    assert _train(tiny_data, tmp_path, "--wandb", "disabled", "--epochs", "1", "--model", "rescnn", "--depth",
                  "1", "--width", "4", "--dropout", "0.1") == 0
    run_dir = tmp_path / "rescnn1-mnist-seed0"                   # the depth is in the default name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["model"] == "rescnn"
    assert summary["model_args"] == {"depth": 1, "width": 4, "max_width": 256, "downsamples": 2, "dropout": 0.1}
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model_args"] == {"depth": 1, "width": 4,
                                                                                      "dropout": 0.1}


# ---------------------------------------------------------------- W&B offline


def _wandb_records(path: Path) -> list:
    """The records of a .wandb file: a 7-byte header, then a LevelDB-style log of protobuf Records."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:                              # a block's tail too short for a header
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 2):                                       # full, first
            pending = payload
        elif kind in (3, 4):                                     # middle, last
            pending += payload
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _items(items) -> dict:
    """{key: value} of W&B items, whose key is in `key` or, split on '/', in `nested_key`."""
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}


def test_wandb_offline_run_holds_the_metrics_and_summary(tiny_data, tmp_path, capsys):
    pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install -e '.[wandb]')")
    assert _train(tiny_data, tmp_path, "--wandb", "offline", "--epochs", "2") == 0
    run_dir = tmp_path / "mlp-mnist-seed0"
    assert "wandb sync" in capsys.readouterr().out
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    files = list(offline[0].glob("run-*.wandb"))
    assert len(files) == 1 and files[0].stat().st_size > 0

    records = _records(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    try:
        parsed = _wandb_records(files[0])
    except ImportError:
        pytest.skip("wandb's protobuf records are not importable")
    # wandb's service process may flush the last records a moment after run.finish() returns.
    deadline = time.monotonic() + 30
    while "exit" not in [r.WhichOneof("record_type") for r in parsed] and time.monotonic() < deadline:
        time.sleep(0.05)
        parsed = _wandb_records(files[0])
    history = {}
    summary_items = {}
    config_items = {}
    for record in parsed:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history[record.history.step.num] = _items(record.history.item)
        elif kind == "summary":
            summary_items.update(_items(record.summary.update))
        elif kind == "run":
            config_items.update(_items(record.run.config.update))
    assert sorted(history) == [r["epoch"] for r in records] == [1, 2]
    for record in records:
        logged = history[record["epoch"]]
        for key in EPOCH_KEYS - {"epoch"}:
            assert logged[key] == pytest.approx(record[key], rel=1e-12), key
    for key in ("test_accuracy", "test_loss", "epochs_run", "best_epoch", "stopped_by", "model", "dataset"):
        assert summary_items[key] == summary[key], key
    # Older wandb versions wrap each config value as {"value": ...}.
    config_items = {k: v["value"] if isinstance(v, dict) and set(v) == {"value"} else v
                    for k, v in config_items.items()}
    assert config_items["patience"] == 5 and config_items["data_official"] is False


# ---------------------------------------------------------------- config files and flags


def test_config_file_with_flags_on_top(tiny_data, tmp_path):
    config_file = tmp_path / "exp.yaml"
    config_file.write_text(yaml.safe_dump({
        "model": "resmlp", "dataset": "mnist", "model_args": {"width": 16, "blocks": 1}, "epochs": 4,
        "lr": 0.002, "patience": 7, "overfit_delta": 0.3, "wandb": "disabled", "name": "from-file",
    }))
    assert main(["train", "--config", str(config_file), "--data-dir", str(tiny_data), "--out", str(tmp_path),
                 "--device", "cpu", "--epochs", "1", "--width", "8", "--patience", "2"]) == 0
    config = yaml.safe_load((tmp_path / "from-file" / "config.yaml").read_text())
    assert config["epochs"] == 1 and config["patience"] == 2                     # flags win
    assert config["lr"] == 0.002 and config["overfit_delta"] == 0.3               # the file's values stay
    assert config["model"] == "resmlp" and config["wandb"] == "disabled"
    assert config["model_args"] == {"width": 8, "blocks": 1}                     # merged, flag on top
    summary = json.loads((tmp_path / "from-file" / "summary.json").read_text())
    assert summary["epochs_run"] == 1 and summary["model_args"]["width"] == 8


def test_unknown_yaml_key_names_it_and_the_closest(tiny_data, tmp_path, capsys):
    config_file = tmp_path / "typo.yaml"
    config_file.write_text("epochs: 2\npatiense: 3\n")
    assert _train(tiny_data, tmp_path, "--config", str(config_file), "--wandb", "disabled") == 2
    line = _one_line_error(capsys)
    assert "'patiense'" in line and "'patience'" in line and str(config_file) in line
    assert not (tmp_path / "mlp-mnist-seed0").exists()


@pytest.mark.parametrize("flag, value, setting", [("--lr", "0", "lr"), ("--batch-size", "0", "batch_size"),
                                                   ("--val-fraction", "1.5", "val_fraction"),
                                                   ("--epochs", "0", "epochs"), ("--dropout", "1.5", "dropout")])
def test_bad_value_is_a_one_line_error(tiny_data, tmp_path, capsys, flag, value, setting):
    assert _train(tiny_data, tmp_path, "--wandb", "disabled", flag, value) == 2
    line = _one_line_error(capsys)
    assert setting in line and value in line
    assert not list(tmp_path.iterdir())                          # nothing was created


def test_dataset_name_of_the_wrong_type_in_yaml(tiny_data, tmp_path, capsys):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("dataset: 10\nwandb: disabled\n")
    assert _train(tiny_data, tmp_path / "runs", "--config", str(config_file)) == 2
    line = _one_line_error(capsys)
    assert "dataset must be a text, got 10" in line


@pytest.mark.parametrize("line", ["device: 5", "model_args: [1, 2]", "augment: maybe"])
def test_setting_of_the_wrong_type_in_yaml(tiny_data, tmp_path, capsys, line):
    config_file = tmp_path / "c.yaml"
    config_file.write_text(f"{line}\nwandb: disabled\nepochs: 1\n")
    assert _train_without_device(tiny_data, tmp_path / "runs", config_file) == 2
    assert line.split(":")[0] in _one_line_error(capsys)


def _train_without_device(tiny_data: Path, out: Path, config_file: Path) -> int:
    return main(["train", "--config", str(config_file), "--data-dir", str(tiny_data), "--out", str(out)])


def test_existing_run_folder_needs_overwrite(tiny_data, tmp_path, capsys):
    args = ("--wandb", "disabled", "--epochs", "1", "--name", "again")
    assert _train(tiny_data, tmp_path, *args) == 0
    first = (tmp_path / "again" / "summary.json").read_text()
    capsys.readouterr()
    assert _train(tiny_data, tmp_path, *args, "--seed", "1") == 2
    line = _one_line_error(capsys)
    assert str(tmp_path / "again") in line and "--overwrite" in line
    assert (tmp_path / "again" / "summary.json").read_text() == first          # untouched
    assert _train(tiny_data, tmp_path, *args, "--seed", "1", "--overwrite") == 0
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["seed"] == 1


# ---------------------------------------------------------------- help


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"]])
def test_help_exits_zero(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: reslab")
    if argv[0] == "train":
        for flag in ("--patience", "--min-delta", "--overfit-patience", "--overfit-delta", "--config", "--wandb"):
            assert flag in out


def test_python_dash_m_reslab_help():
    result = subprocess.run([sys.executable, "-m", "reslab", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage: reslab" in result.stdout and "train" in result.stdout


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: reslab" in capsys.readouterr().out


def test_unknown_flag_is_a_one_line_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--patiense", "3"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--patiense" in err
