"""The study layer: experiment files, runs of every exercise on tiny data, seeds, profiles, the lab."""
from __future__ import annotations

import json
import re
import shutil
import urllib.error
from pathlib import Path

import pytest
import yaml
from fakedata import write_cifar10, write_idx_dataset

from reslab import experiments, study
from reslab.cli import main
from reslab.errors import ConfigError, ReslabError

SHIPPED = ["ex1", "ex1.2", "ex1.3", "ex1.3-deep", "ex2.1", "ex2.1-fashion"]
# Tiny runs: one epoch, narrow CNNs, no W&B.
TINY = {"epochs": 1, "wandb": "disabled", "model_args": {"width": 8}}


def core_files(run_dir: Path) -> set[str]:
    return {p.name for p in run_dir.iterdir()} & {"config.yaml", "metrics.jsonl", "best_model.pth", "last.pth",
                                                  "summary.json"}


def test_list_experiments_names_every_shipped_file_with_its_description():
    listed = dict(experiments.list_experiments())
    assert list(listed) == SHIPPED
    assert all(listed.values())


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("profile", ["full", "quick"])
def test_every_shipped_experiment_loads_and_validates(name, profile):
    experiment = experiments.load_experiment(name, profile)
    assert experiment["name"] == name and experiment["profile"] == profile
    if experiment["kind"] == "train":
        assert experiments.train_configs(experiment, 0, {}, Path("out"))


def test_ex1_3_lists_plain_and_residual_cnn_and_the_no_skip_twin_at_three_depths():
    experiment = experiments.load_experiment("ex1.3")
    pairs = experiments.train_configs(experiment, 0, {}, Path("out"))
    assert [label for label, _ in pairs] == ["cnn2", "cnn3", "cnn6", "rescnn2", "rescnn3", "rescnn6",
                                              "noskipcnn2", "noskipcnn3", "noskipcnn6"]
    configs = dict(pairs)
    for depth in (2, 3, 6):   # the twin differs from the residual net in its model name alone
        res, twin = configs[f"rescnn{depth}"], configs[f"noskipcnn{depth}"]
        assert twin.replace(model="rescnn", name=res.name, wandb_job_type=res.wandb_job_type) == res
    assert experiment["compare"] == [["rescnn", "noskipcnn"], ["rescnn", "cnn"]]
    assert {label: ref["test_accuracy"] for label, ref in experiment["reference"].items()} == {
        "cnn2": 67.89, "cnn3": 74.14, "cnn6": 81.11, "rescnn2": 76.91, "rescnn3": 80.48, "rescnn6": 83.67}


def test_profile_model_args_apply_to_every_model_that_takes_them(tmp_path):
    experiment = {"name": "x", "train": {"dataset": "mnist", "model_args": {"width": 8, "hidden": [16]}},
                  "models": [{"model": "mlp", "model_args": {"hidden": [32, 32]}},
                             {"model": "rescnn", "model_args": {"width": 64}, "depths": [2]}]}
    configs = dict(experiments.train_configs(experiment, 0, {}, tmp_path))
    assert configs["mlp"].model_args == {"hidden": [16]}                 # mlp takes hidden, not width
    assert configs["rescnn2"].model_args == {"width": 8, "depth": 2}    # over the model's own width


def test_compare_must_name_the_experiment_s_models(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("models: [{model: mlp}, {model: resmlp}]\ncompare: [[resmlp, cnn]]\n")
    with pytest.raises(ConfigError, match="compare names 'cnn', which is not one of the experiment's models"):
        experiments.load_experiment(path)
    path.write_text("models: [{model: mlp}]\ncompare: [mlp]\n")
    with pytest.raises(ConfigError, match=r"compare must be a list of \[A, B\] model pairs"):
        experiments.load_experiment(path)


def test_quick_profile_shrinks_what_the_file_says():
    full = dict(experiments.train_configs(experiments.load_experiment("ex1.3", "full"), 0, {}, Path("o")))["rescnn6"]
    quick = dict(experiments.train_configs(experiments.load_experiment("ex1.3", "quick"), 0, {}, Path("o")))["rescnn6"]
    assert (full.epochs, full.train_subset) == (30, None)
    assert (quick.epochs, quick.train_subset, quick.val_fraction) == (5, 5000, 0.02)
    assert quick.model_args == {"width": 16, "dropout": 0.2, "max_width": 64, "depth": 6}
    assert full.model_args == {"width": 128, "dropout": 0.2, "depth": 6}


def test_configs_carry_seed_folder_and_wandb_group(tmp_path):
    configs = experiments.train_configs(experiments.load_experiment("ex1.2"), 2, {"lr": 0.01}, tmp_path / "ex1.2")
    mlp, resmlp = (config for _, config in configs)
    assert (mlp.seed, mlp.lr, mlp.run_dir) == (2, 0.01, tmp_path / "ex1.2" / "mlp-seed2")
    assert (resmlp.wandb_group, resmlp.wandb_job_type) == ("ex1.2", "resmlp")


def test_unknown_key_names_the_closest_one(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("description: x\ntrain: {dataset: mnist}\nmodles:\n  - model: mlp\n")
    with pytest.raises(ConfigError, match="unknown setting 'modles'; did you mean 'models'"):
        experiments.load_experiment(str(path))


@pytest.mark.parametrize("text, message", [
    ("models:\n  - model: mlp\n    model_args: {hiden: [3]}\n", "did you mean 'hidden'"),
    ("train: {epochz: 3}\nmodels:\n  - model: mlp\n", "did you mean 'epochs'"),
    ("models:\n  - model: mlp\nprofiles:\n  quick: {train: {epochs: 0}}\n", "epochs must be an integer >= 1"),
    ("models:\n  - model: mlp\nprofiles:\n  fast: {}\n", "unknown profile 'fast'"),
    ("models:\n  - model: mlp\n    depths: [2]\n", "has no depth"),
    ("models:\n  - model: resnet\n", "unknown model 'resnet'"),
    ("models:\n  - model: [mlp]\n", r"unknown model \['mlp'\]"),
    ("models:\n  - model: mlp\n    model_args: {1: 2}\n", "model 'mlp' takes no argument 1"),
    ("models:\n  - model: cnn\n    depths: [2, 0]\n", "depths must be a list of positive integers"),
    ("models:\n  - model: mlp\n    model_args: {dropout: 1.5}\n",
     r"mine.yaml: mlp: dropout must be a number in \[0, 1\)"),
    ("train: {dataset: imagenet}\nmodels:\n  - model: mlp\n", "unknown dataset 'imagenet'"),
    ("kind: transfer\nsource: {experiment: ex1, checkpoint: a.pth}\n", "exactly one of"),
    ("kind: transfer\nsource: {experiment: ex1.3, model: rescnn, depth: 4}\n", "not 4"),
    ("kind: transfer\nsource: {checkpoint: a.pth}\ntransfer: {knn: 5}\n", "did you mean 'knn_k'"),
    ("kind: transfer\nsource: {checkpoint: a.pth}\ntransfer: 5\n", "transfer must be a mapping"),
    ("models:\n  - model: mlp\nanalysis: gradient_flow\n", "analysis must be a list"),
])
def test_bad_experiment_files_are_one_line_config_errors(tmp_path, text, message):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        experiments.load_experiment(str(path))
    assert "\n" not in str(info.value)


def test_unknown_experiment_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="unknown experiment 'ex3'.*ex1"):
        experiments.experiment_path("ex3")


def test_cli_flags_that_make_no_sense_for_an_experiment_are_refused(tmp_path, tiny_data):
    with pytest.raises(ConfigError, match="--seeds"):
        study.run_experiment("ex1", overrides={"seed": 3, "out": str(tmp_path)})


def test_run_ex1_with_seeds_writes_one_folder_per_seed(tmp_path, tiny_data):
    result = study.run_experiment("ex1", seeds=2, overrides={**TINY, "data_dir": str(tiny_data), "out": str(tmp_path)})
    folder = tmp_path / "ex1"
    assert result["status"] == "done" and result["runs"] == ["mlp-seed0", "mlp-seed1"]
    for seed in (0, 1):
        run_dir = folder / f"mlp-seed{seed}"
        assert core_files(run_dir) == {"config.yaml", "metrics.jsonl", "best_model.pth", "last.pth", "summary.json"}
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert (config["seed"], config["wandb_group"], config["wandb_job_type"]) == (seed, "ex1", "mlp")
        assert config["model_args"] == {"hidden": [128, 64], "dropout": 0.2}
    status = json.loads((folder / "study.json").read_text())
    assert (status["seeds"], status["profile"], status["status"]) == (2, "full", "done")
    assert "± " in (folder / "report.md").read_text()


def test_a_finished_run_is_reused_and_different_settings_are_refused(tmp_path, tiny_data):
    overrides = {**TINY, "data_dir": str(tiny_data), "out": str(tmp_path)}
    study.run_experiment("ex1", overrides=overrides)
    best = tmp_path / "ex1" / "mlp-seed0" / "best_model.pth"
    before = best.stat().st_mtime_ns
    study.run_experiment("ex1", overrides=overrides)
    assert best.stat().st_mtime_ns == before
    with pytest.raises(ReslabError, match="epochs=1, this one wants 2; use --overwrite"):
        study.run_experiment("ex1", overrides={**overrides, "epochs": 2})
    study.run_experiment("ex1", overrides={**overrides, "epochs": 2}, overwrite=True)
    assert json.loads((best.parent / "summary.json").read_text())["epochs_run"] == 2


def test_run_ex1_2_computes_gradient_flow_at_init_and_per_epoch(tmp_path, tiny_data):
    study.run_experiment("ex1.2", overrides={**TINY, "data_dir": str(tiny_data), "out": str(tmp_path)})
    flows = json.loads((tmp_path / "ex1.2" / "gradient_flow.json").read_text())
    models = flows[0]["models"]
    assert list(models["mlp"]["norms"]) == ["fc1", "fc2", "fc3"]
    assert list(models["resmlp"]["norms"]) == ["fc1", "fc2", "fc3", "fc4", "fc5", "fc6"]
    assert models["resmlp"]["layers"]["fc1"] == "fc_in.weight"
    assert all(v > 0 for m in models.values() for v in m["norms"].values())
    record = json.loads((tmp_path / "ex1.2" / "resmlp-seed0" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["grad_2.0_norm/fc_in.weight"] > 0


def test_ex1_2_copies_ex1_s_finished_mlp_runs_and_trains_the_rest(tmp_path, tiny_data, capsys):
    overrides = {**TINY, "data_dir": str(tiny_data), "out": str(tmp_path)}
    study.run_experiment("ex1", overrides=overrides)
    capsys.readouterr()
    study.run_experiment("ex1.2", overrides=overrides)
    out = capsys.readouterr().out
    original, copy = tmp_path / "ex1" / "mlp-seed0", tmp_path / "ex1.2" / "mlp-seed0"
    assert f"copying finished run {original} (same settings) to {copy}" in out
    assert "copying" not in out.split("resmlp seed 0")[1]            # the residual MLP is trained
    for name in ("summary.json", "metrics.jsonl", "best_model.pth"):
        assert (copy / name).read_bytes() == (original / name).read_bytes()
    config = yaml.safe_load((copy / "config.yaml").read_text())
    assert (config["out"], config["wandb_group"], config["copied_from"]) == (str(tmp_path / "ex1.2"), "ex1.2",
                                                                             str(original))
    assert "mlp-seed0 from " in (tmp_path / "ex1.2" / "report.md").read_text()
    # A damaged run of another experiment is no twin, and no reason to refuse this one: it is trained.
    shutil.copytree(tmp_path / "ex1", tmp_path / "damaged" / "ex1")
    (tmp_path / "damaged" / "ex1" / "mlp-seed0" / "summary.json").write_text("{")
    study.run_experiment("ex1.2", overrides={**overrides, "out": str(tmp_path / "damaged")})
    assert "copying" not in capsys.readouterr().out
    assert json.loads((tmp_path / "damaged" / "ex1.2" / "mlp-seed0" / "summary.json").read_text())["epochs_run"] == 1
    # Other settings than the twin's: trained, not copied.
    study.run_experiment("ex1.2", overrides={**overrides, "out": str(tmp_path / "other"), "lr": 0.01})
    study.run_experiment("ex1", overrides={**overrides, "out": str(tmp_path / "other")})
    assert "copying" not in capsys.readouterr().out


def test_a_user_file_runs_under_its_own_name(tmp_path, tiny_data):
    path = tmp_path / "my-study.yaml"
    path.write_text("description: two MLP widths\ntrain: {dataset: fashionmnist}\nmodels:\n"
                    "  - model: mlp\n    model_args: {hidden: [16]}\n  - model: resmlp\n    model_args: {width: 16}\n")
    result = study.run_experiment(str(path), overrides={"epochs": 1, "wandb": "disabled", "data_dir": str(tiny_data),
                                                        "out": str(tmp_path)})
    assert result["runs"] == ["mlp-seed0", "resmlp-seed0"]
    summary = json.loads((tmp_path / "my-study" / "resmlp-seed0" / "summary.json").read_text())
    assert (summary["dataset"], summary["model_args"]["width"]) == ("fashionmnist", 16)


def test_only_trains_the_models_named_in_that_order_and_reports_the_other_finished_runs(tmp_path, tiny_data, capsys):
    path = tmp_path / "widths.yaml"
    path.write_text("description: three MLP widths\ntrain: {dataset: fashionmnist}\nmodels:\n"
                    "  - model: mlp\n    model_args: {hidden: [16]}\n  - model: resmlp\n    model_args: {width: 16}\n")
    overrides = {"epochs": 1, "wandb": "disabled", "data_dir": str(tiny_data), "out": str(tmp_path)}
    folder = tmp_path / "widths"
    result = study.run_experiment(str(path), seeds=2, overrides=overrides, only=["resmlp"])
    assert result["runs"] == ["resmlp-seed0", "resmlp-seed1"] and not (folder / "mlp-seed0").exists()
    assert json.loads((folder / "study.json").read_text())["only"] == ["resmlp"]
    capsys.readouterr()
    # Seed-major, and within a seed in the order given; the finished resmlp runs are reused and reported.
    result = study.run_experiment(str(path), seeds=2, overrides=overrides, only=["mlp"])
    out = capsys.readouterr().out
    assert out.index("mlp seed 0") < out.index("mlp seed 1") and "resmlp seed" not in out
    assert result["runs"] == ["mlp-seed0", "resmlp-seed0", "mlp-seed1", "resmlp-seed1"]
    assert "resmlp" in (folder / "report.md").read_text()
    (folder / "mlp-seed1" / "summary.json").write_text("{")   # damaged: left out of a report it is not trained for
    result = study.run_experiment(str(path), seeds=2, overrides=overrides, only=["resmlp"])
    assert result["runs"] == ["mlp-seed0", "resmlp-seed0", "resmlp-seed1"]
    with pytest.raises(ConfigError, match="--only: widths has no model cnn2; it has: mlp, resmlp"):
        study.run_experiment(str(path), overrides=overrides, only=["cnn2"])
    with pytest.raises(ConfigError, match="--only chooses models of a training experiment; ex2.1 is a transfer"):
        study.run_experiment("ex2.1", overrides=overrides, only=["finetune"])
    assert main(["run", str(path), "--only", "resmlp,mlp", "--epochs", "1", "--wandb", "disabled",
                 "--data-dir", str(tiny_data), "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert out.index("resmlp seed 0") < out.index("-- widths: mlp seed 0")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """`reslab lab` on tiny data that lacks CIFAR-100, with downloads failing as they do offline."""
    root = tmp_path_factory.mktemp("lab")
    data = root / "data"
    write_idx_dataset(data, "MNIST/raw")
    write_cifar10(data)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("reslab.download.urllib.request.urlopen", offline)
        result = study.run_lab(overrides={**TINY, "train_subset": 100, "data_dir": str(data),
                                          "out": str(root / "runs")})
    return result, root / "runs" / "lab"


def test_lab_runs_the_exercises_in_order_and_reports_a_missing_dataset(lab):
    result, folder = lab
    assert [r["experiment"] for r in result["results"]] == ["ex1", "ex1.2", "ex1.3", "ex2.1"]
    assert [r["status"] for r in result["results"]] == ["done", "done", "done", "not run"]
    assert "cifar100" in result["results"][3]["reason"] and "no network in tests" in result["results"][3]["reason"]
    assert sorted(p.name for p in (folder / "ex1.3").glob("*-seed0")) == [
        "cnn2-seed0", "cnn3-seed0", "cnn6-seed0", "noskipcnn2-seed0", "noskipcnn3-seed0", "noskipcnn6-seed0",
        "rescnn2-seed0", "rescnn3-seed0", "rescnn6-seed0"]
    assert all(core_files(p) for p in (folder / "ex1.3").glob("*-seed0"))
    report = (folder / "report.md").read_text()
    assert "**Not run**: cifar100" in report
    for name in ("## ex1:", "## ex1.2:", "## ex1.3:", "## ex2.1:"):
        assert name in report
    assert "ex1.3/figures/accuracy_vs_depth.png" in report


@pytest.mark.parametrize("statuses, code", [(["done", "done"], 0), (["done", "not run"], 1)])
def test_reslab_lab_exits_1_when_an_exercise_was_not_run(monkeypatch, statuses, code):
    monkeypatch.setattr(study, "run_lab", lambda **kwargs: {"results": [{"status": s} for s in statuses]})
    assert main(["lab", "--profile", "quick"]) == code


@pytest.mark.filterwarnings("ignore:The number of unique classes")   # tiny CIFAR-100: one image per class
def test_ex2_1_reuses_the_lab_s_ex1_3_network(lab, tiny_data):
    _, folder = lab
    source = folder / "ex1.3" / "rescnn6-seed0" / "best_model.pth"
    before = source.stat().st_mtime_ns
    result = study.run_experiment("ex2.1", overrides={**TINY, "train_subset": 100, "val_fraction": 0.2,
                                                      "data_dir": str(tiny_data)}, folder=folder / "ex2.1")
    assert result["status"] == "done"
    assert source.stat().st_mtime_ns == before
    summary = json.loads((folder / "ex2.1" / "finetune-seed0" / "summary.json").read_text())
    assert summary["source_checkpoint"] == str(source)
    # The lab's finding, said in one line with the measured numbers (tiny data: either way).
    assert re.search(r"\*\*Finding\*\*: fine-tuning \d+\.\d\d% against the better frozen-feature probe \((svm|knn) "
                     r"\d+\.\d\d%\): [+-]\d+\.\d\d points", (folder / "ex2.1" / "report.md").read_text())


def test_cli_list_run_and_report(tmp_path, tiny_data, capsys):
    assert main(["list"]) == 0
    assert "ex2.1-fashion" in capsys.readouterr().out
    assert main(["run", "nope"]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err
    assert main(["run", "ex1", "--epochs", "1", "--wandb", "disabled", "--data-dir", str(tiny_data),
                 "--out", str(tmp_path)]) == 0
    assert main(["report", str(tmp_path / "ex1")]) == 0
    assert capsys.readouterr().out.strip().endswith("report.md")
    assert main(["run", "ex1", "--seeds", "0", "--out", str(tmp_path)]) == 2
