"""Transfer: the feature hook, the fresh head, the input-shape check, and both transfer exercises on tiny data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reslab import study, transfer
from reslab.config import TrainConfig
from reslab.datasets import load_dataset
from reslab.errors import ConfigError, ReslabError
from reslab.loader import TensorLoader
from reslab.models import build_model

TINY = {"epochs": 2, "wandb": "disabled", "train_subset": 100}


def loader_of(n: int, shape: tuple[int, ...]) -> TensorLoader:
    images = np.random.default_rng(0).integers(0, 256, size=(n, *shape), dtype=np.uint8)
    labels = np.arange(n) % 10
    return TensorLoader(images, labels, 16, mean=[0.5] * shape[0], std=[0.25] * shape[0])


@pytest.mark.parametrize("name, args, width", [("rescnn", {"depth": 2, "width": 8}, 16),
                                                ("cnn", {"depth": 2, "width": 4}, 128),
                                                ("mlp", {}, 64), ("resmlp", {"width": 20}, 20)])
def test_hook_extracts_classifier_inputs_without_touching_the_weights(name, args, width):
    torch.manual_seed(0)
    model = transfer.freeze(build_model(name, (3, 32, 32), 10, **args))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = loader_of(40, (3, 32, 32))
    features, labels = transfer.extract_features(model, loader)
    assert features.shape == (40, width) and features.dtype == np.float32
    assert np.array_equal(labels, np.arange(40) % 10)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model._forward_hooks and not model.get_submodule(transfer.classifier_name(model))._forward_hooks
    # The features are what the classifier sees: applying it to them gives the model's outputs.
    x, _ = next(iter(loader))
    classifier = model.get_submodule(transfer.classifier_name(model))
    with torch.no_grad():
        assert torch.allclose(classifier(torch.from_numpy(features[:16])), model(x), atol=1e-5)


def test_rescnn_features_are_the_pooled_output():
    torch.manual_seed(0)
    model = transfer.freeze(build_model("rescnn", (1, 28, 28), 10, depth=3, width=8))
    loader = loader_of(20, (1, 28, 28))
    features, _ = transfer.extract_features(model, loader)
    x, _ = next(iter(loader))
    with torch.no_grad():
        pooled = model.pool(model.blocks(model.stem(x)))
    assert features.shape == (20, model.num_features)
    assert torch.allclose(torch.from_numpy(features[:16]), pooled, atol=1e-6)


def test_new_head_is_fresh_and_the_source_stays_as_it_was():
    torch.manual_seed(0)
    source = transfer.freeze(build_model("rescnn", (3, 32, 32), 10, depth=2, width=8))
    before = {k: v.clone() for k, v in source.state_dict().items()}
    model = transfer.with_new_head(source, 100)
    assert (model.fc.in_features, model.fc.out_features) == (source.fc.in_features, 100)
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in source.state_dict().items())
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(before[k], v) for k, v in body.items())


def test_transfer_settings_are_validated():
    with pytest.raises(ConfigError, match="did you mean 'svm_c'"):
        transfer.TransferSettings.from_dict({"svm_C": 2.0})
    with pytest.raises(ConfigError, match="knn_k must be an integer >= 1"):
        transfer.TransferSettings.from_dict({"knn_k": 0})
    with pytest.raises(ConfigError, match="methods must be"):
        transfer.TransferSettings.from_dict({"methods": ["svm", "finetun"]})


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    """ex2.1-fashion on tiny MNIST -> Fashion-MNIST files, two epochs everywhere."""
    from fakedata import write_idx_dataset
    data = tmp_path_factory.mktemp("fashion-data")
    write_idx_dataset(data, "MNIST/raw")
    write_idx_dataset(data, "FashionMNIST/raw", seed=10)
    out = tmp_path_factory.mktemp("fashion-runs")
    result = study.run_experiment("ex2.1-fashion", overrides={**TINY, "data_dir": str(data), "out": str(out)})
    return result, out / "ex2.1-fashion", data


def test_ex2_1_fashion_trains_its_source_then_runs_every_method(fashion):
    result, folder, _ = fashion
    assert result["status"] == "done"
    assert result["runs"] == ["svm-seed0", "knn-seed0", "logreg-seed0", "finetune-seed0", "staged-seed0"]
    source = json.loads((folder / "source-rescnn3-seed0" / "summary.json").read_text())
    assert (source["dataset"], source["model_args"]["width"]) == ("mnist", 16)
    for method in ("svm", "knn", "logreg"):
        summary = json.loads((folder / f"{method}-seed0" / "summary.json").read_text())
        assert (summary["dataset"], summary["source_dataset"], summary["num_features"]) == ("fashionmnist", "mnist", 64)
        assert summary["source_test_accuracy"] == source["test_accuracy"]
        assert 0.0 <= summary["test_accuracy"] <= 1.0
    for method in ("finetune", "staged"):
        assert {"config.yaml", "metrics.jsonl", "best_model.pth", "last.pth", "summary.json"} <= {
            p.name for p in (folder / f"{method}-seed0").iterdir()}


def test_staged_trains_the_head_alone_first_and_numbers_epochs_on(fashion):
    _, folder, _ = fashion
    records = [json.loads(line) for line in (folder / "staged-seed0" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["phase"]) for r in records] == [(1, "head"), (2, "all")]
    assert json.loads((folder / "staged-seed0" / "summary.json").read_text())["head_epochs"] == 1


def test_fine_tuned_checkpoint_loads_with_the_target_classes(fashion):
    from reslab.checkpoint import load_checkpoint
    _, folder, _ = fashion
    model, ckpt = load_checkpoint(folder / "finetune-seed0" / "best_model.pth")
    assert (ckpt["dataset"], ckpt["num_classes"], model.fc.out_features) == ("fashionmnist", 10, 10)


def test_a_checkpoint_of_another_input_shape_is_a_one_line_error(fashion, tiny_data, tmp_path):
    _, folder, _ = fashion
    checkpoint = folder / "source-rescnn3-seed0" / "best_model.pth"
    data = load_dataset("cifar100", tiny_data)
    config = TrainConfig(dataset="cifar100", data_dir=str(tiny_data), wandb="disabled")
    with pytest.raises(ReslabError, match=r"takes 1x28x28 inputs \(mnist\) but cifar100 images are 3x32x32") as info:
        transfer.run_transfer(checkpoint, data, config, transfer.TransferSettings(), tmp_path, ["svm"])
    assert "\n" not in str(info.value)
    assert not any(tmp_path.iterdir())


def test_a_user_transfer_file_can_name_any_checkpoint(fashion, tmp_path):
    _, folder, data = fashion
    checkpoint = folder / "source-rescnn3-seed0" / "best_model.pth"
    path = tmp_path / "mine.yaml"
    path.write_text(f"kind: transfer\nsource: {{checkpoint: {checkpoint}}}\ntrain: {{dataset: fashionmnist}}\n"
                    "transfer: {methods: [knn, finetune], knn_k: 3}\n")
    result = study.run_experiment(str(path), overrides={**TINY, "epochs": 1, "data_dir": str(data),
                                                        "out": str(tmp_path)})
    assert result["runs"] == ["knn-seed0", "finetune-seed0"]
    assert "| knn (k nearest neighbours" in Path(result["report"]).read_text()


def _without_timings(run_dir: Path) -> tuple[list[dict], dict]:
    """A run folder's metrics and summary, less what depends on the clock."""
    metrics = [{k: v for k, v in json.loads(line).items() if k != "seconds"}
               for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = {k: v for k, v in json.loads((run_dir / "summary.json").read_text()).items() if k != "train_seconds"}
    return metrics, summary


@pytest.mark.parametrize("method, stop_in", [("finetune", 2), ("staged", 1), ("staged", 3)],
                         ids=["finetune-epoch2", "staged-head-phase", "staged-second-phase"])
def test_an_interrupted_fine_tuning_continues_when_its_experiment_runs_again(fashion, tmp_path, monkeypatch, capsys,
                                                                             method, stop_in):
    """Ctrl-C in a fine-tuning epoch, then the same command: it resumes there (in its phase) and ends exactly as
    an uninterrupted fine-tuning; `reslab resume` of the folder points at the experiment."""
    import os
    import signal

    import reslab.loader
    from reslab.cli import main
    _, folder, data = fashion
    path = tmp_path / "mine.yaml"
    path.write_text(f"kind: transfer\nsource: {{checkpoint: {folder / 'source-rescnn3-seed0' / 'best_model.pth'}}}\n"
                    f"train: {{dataset: fashionmnist}}\ntransfer: {{methods: [{method}], head_epochs: 1}}\n")
    argv = ["run", str(path), "--epochs", "3", "--wandb", "disabled", "--train-subset", "100", "--data-dir", str(data)]
    assert main(argv + ["--out", str(tmp_path / "uninterrupted")]) == 0
    original, epochs = reslab.loader.TensorLoader.__iter__, []

    def iterate(self):
        if self.shuffle:
            epochs.append(1)
        for batch in original(self):
            if self.shuffle and len(epochs) == stop_in:   # Ctrl-C in that training epoch (its one batch)
                os.kill(os.getpid(), signal.SIGINT)
            yield batch

    monkeypatch.setattr(reslab.loader.TensorLoader, "__iter__", iterate)
    runs = tmp_path / "runs"
    capsys.readouterr()
    assert main(argv + ["--out", str(runs)]) == 130
    assert "stopped: interrupted; running its experiment again (same --out) continues it" in capsys.readouterr().out
    run_dir = runs / "mine" / f"{method}-seed0"
    assert main(["resume", str(run_dir)]) == 2
    assert (f"cannot resume: {run_dir} is a transfer run ({method}); run its experiment again (`reslab run NAME`, "
            "same --out), which continues it") in capsys.readouterr().err
    monkeypatch.undo()
    assert main(argv + ["--out", str(runs)]) == 0
    assert f"resuming {run_dir}" in capsys.readouterr().out
    assert _without_timings(run_dir) == _without_timings(tmp_path / "uninterrupted" / "mine" / f"{method}-seed0")


def test_a_cut_short_fine_tuning_is_checked_and_replaced_by_overwrite(fashion, tmp_path, capsys):
    from reslab.cli import main
    _, folder, data = fashion
    path = tmp_path / "mine.yaml"
    path.write_text(f"kind: transfer\nsource: {{checkpoint: {folder / 'source-rescnn3-seed0' / 'best_model.pth'}}}\n"
                    "train: {dataset: fashionmnist}\ntransfer: {methods: [finetune]}\n")
    argv = ["run", str(path), "--wandb", "disabled", "--train-subset", "100", "--data-dir", str(data),
            "--out", str(tmp_path / "runs")]
    assert main(argv + ["--epochs", "2"]) == 0
    run_dir = tmp_path / "runs" / "mine" / "finetune-seed0"
    (run_dir / "summary.json").unlink()   # as if killed before its test
    assert main(argv + ["--epochs", "3"]) == 2
    assert (f"{run_dir} holds a run with epochs=2, this one wants 3; use --overwrite"
            in capsys.readouterr().err)
    state = torch.load(run_dir / "last.pth", weights_only=True)
    for damaged in ({"phases_done": [{"epochs": "?"}]},                               # edited by hand
                    {"phases_done": [{"epochs": "ab", "stopped_by": "max_epochs"}]},
                    {"history": [{"loss": 1.0}]}):
        torch.save({**state, **damaged}, run_dir / "last.pth")
        assert main(argv + ["--epochs", "2"]) == 2
        err = capsys.readouterr().err
        assert f"{run_dir / 'last.pth'}: its epoch records (history, phases_done) are damaged" in err
    assert main(argv + ["--epochs", "3", "--overwrite"]) == 0
    assert "resuming" not in capsys.readouterr().out
    assert json.loads((run_dir / "summary.json").read_text())["epochs_run"] == 3


@pytest.mark.filterwarnings("ignore:The number of unique classes")   # tiny CIFAR-100: one image per class
def test_ex2_1_trains_the_ex1_3_network_when_it_is_absent(tiny_data, tmp_path):
    result = study.run_experiment("ex2.1", overrides={"epochs": 1, "wandb": "disabled", "data_dir": str(tiny_data),
                                                      "out": str(tmp_path), "val_fraction": 0.2, "train_subset": 100,
                                                      "model_args": {"width": 8}})
    assert result["status"] == "done"
    assert [p.name for p in (tmp_path / "ex1.3").iterdir()] == ["rescnn6-seed0"]   # only the source, nothing else
    summary = json.loads((tmp_path / "ex2.1" / "finetune-seed0" / "summary.json").read_text())
    assert (summary["source_dataset"], summary["dataset"], summary["model_args"]["depth"]) == ("cifar10", "cifar100", 6)


def test_the_svm_probe_is_scikit_learn_s_linear_svm_fitted_class_by_class_on_every_core():
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 600)
    x = np.maximum(rng.normal(size=(10, 16))[y] + rng.normal(size=(600, 16)), 0).astype(np.float32)
    probe = transfer.make_probes(transfer.TransferSettings(svm_c=0.5))["svm"].fit(x, y)
    alone = make_pipeline(StandardScaler(), LinearSVC(C=0.5)).fit(x, y)
    assert (probe.predict(x) == alone.predict(x)).all()
    coef = np.vstack([binary.coef_ for binary in probe[-1].estimators_])
    assert np.abs(coef - alone[-1].coef_).max() < 1e-6
