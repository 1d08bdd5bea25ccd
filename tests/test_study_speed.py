"""bench/study_speed.py --smoke: every part runs on generated data and prints every figure (never a timing check)."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "study_speed.py"
NUM = r"-?\d+\.\d+"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[str, dict]:
    """One smoke run: its stdout and its --json figures."""
    out = tmp_path_factory.mktemp("study-speed") / "figures.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--json", str(out)], capture_output=True,
                          text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def line(stdout: str, pattern: str) -> str:
    found = re.search(pattern, stdout, re.MULTILINE)
    assert found, f"no line matching {pattern!r} in:\n{stdout}"
    return found.group(0)


@pytest.mark.slow
def test_smoke_prints_the_machine_and_every_target_1_figure(smoke):
    stdout, figures = smoke
    line(stdout, r"^reslab study speed, \d{4}-\d\d-\d\d .*\d+ cores usable .*torch \d")
    line(stdout, r"^load average at start: ")
    line(stdout, rf"wall, ex1 \+ ex1\.2, --wandb disabled\s+{NUM} s \(1 pass\).*<= 30 s: (met|MISSED)$")
    line(stdout, rf"^\s+ex1 alone\s+{NUM} s\s+in-process {NUM} s")
    line(stdout, rf"^\s+ex1\.2 alone\s+{NUM} s\s+in-process {NUM} s")
    line(stdout, rf"wall, ex1 \+ ex1\.2, --wandb auto \(\w+\)\s+{NUM} s \(1 pass\)\s+{NUM} s with W&B disabled")
    line(stdout, rf"ex1 MLP test accuracy\s+{NUM}%\s+97\.63 ± 0\.22% earlier")
    line(stdout, rf"ex1\.2 MLP test accuracy\s+{NUM}%\s+ex1 MLP {NUM}% \(1/1 seeds identical")
    line(stdout, rf"ex1\.2 residual MLP test accuracy\s+{NUM}%\s+97\.84 ± 0\.19% earlier")
    line(stdout, r"epochs run \(ex1 MLP \| ex1\.2 MLP \| resMLP\)\s+2 \| 2 \| 2 ")
    line(stdout, r"^\s+command: python -m reslab run ex1 --seeds 1 .*--wandb disabled")
    for phase in ("interpreter start", r"imports \(reslab\.cli, reslab\.study\)", "first optimizer of a process",
                  r"interpreter exit \(teardown\)", r"data loading \(load_dataset mnist\)",
                  r"split \+ loaders \(make_loaders\)", r"training epochs \(train\+val\+checkpoints\)",
                  r"testing \(evaluate, test split\)", r"gradient flow at init \(ex1\.2\)",
                  r"report \+ figures \(write_report\)", r"other \(run folders, model builds, \.\.\.\)",
                  r"total \(the wall time of the pass\)",
                  r"W&B at its default \(--wandb auto\), extra"):
        line(stdout, rf"^\s+{phase}\s+{NUM}\s+-?\d+%")
    line(stdout, r"cross-check: study\.json wall_seconds")
    line(stdout, r"largest phase: ")
    study = figures["study"]
    assert len(study["passes"]) == 1 and study["wall_disabled_median"] > 0 and study["wall_wandb_auto"] > 0
    assert set(study["accuracy"]) == {"ex1 mlp", "ex1.2 mlp", "ex1.2 resmlp"}
    phases = study["breakdown"]["phases"]
    assert sum(p["seconds"] for p in phases) == pytest.approx(study["breakdown"]["total"])   # "other" closes it


@pytest.mark.slow
def test_smoke_prints_every_time_to_result_figure(smoke):
    stdout, figures = smoke
    row = rf"\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}\s+2\s+{NUM}\s+{NUM}%\s+max_epochs"
    line(stdout, r"^\s+\(a\) reslab train" + row + r" \(best epoch\)")
    for workers in (0, 2):
        line(stdout, rf"^\s+\(c\) plain loop, w={workers}" + row + r" \(best epoch\)")
    lightning = figures["ttr"]["lightning_version"]
    if lightning:
        line(stdout, rf"^\s+\(d\) Lightning {re.escape(lightning)}, w=0" + row + r" \(last epoch\)")
        line(stdout, rf"^\s+d/a \(Lightning\)\s+{NUM}x\s+{NUM}x\s+{NUM}x\s+>= 10x: (met|MISSED)")
    else:
        line(stdout, r"^\s+\(d\) Lightning: skipped: ")
    for label in (r"c/a \(plain loop, w=0\)", r"c/a \(plain loop, w=2\)", r"c/a \(best of w=0,2: w=\d\)"):
        line(stdout, rf"^\s+{label}\s+{NUM}x\s+{NUM}x\s+{NUM}x\s+>= 10x: (met|MISSED)")
    line(stdout, r"every pipeline ran the same epochs \(2\)")
    line(stdout, r"^\s+command \(a\): python -c '<code>' .* train --model mlp --dataset mnist .*--wandb disabled")
    pipelines = figures["ttr"]["pipelines"]
    assert {"a", "c-w0", "c-w2"} <= set(pipelines)
    assert all(p["epochs_run"] == [2] and p["wall_median"] > 0 for p in pipelines.values())


@pytest.mark.slow
def test_smoke_prints_both_seconds_per_epoch_figures(smoke):
    stdout, figures = smoke
    for title in (r"MNIST MLP 784-128-64-10, 270 images", r"CIFAR-10 rescnn depth 3 width 8, 270 images"):
        line(stdout, rf"^\s+{title}\s+{NUM} \[{NUM}-{NUM}\]\s+{NUM}\s+[\d,]+\s+.*on a GPU \(not judged here\)")
    line(stdout, r"^total \d+ s; load average at the end")
    assert set(figures["epoch"]) == {"mlp", "rescnn"}
    assert all(len(m["seconds_per_epoch"]) == 3 for m in figures["epoch"].values())
    assert figures["failures"] == {} and figures["smoke"] is True


def test_lightning_is_skipped_with_a_reason_when_its_python_is_missing(tmp_path):
    bench = _module("study_speed")
    args = bench.parse_args(["--lightning-python", str(tmp_path / "no-python")])
    assert args.lightning_python is None and "does not exist" in args.lightning_missing
    assert bench.parse_args(["--device", "cuda"]).parts == ["epoch"]        # as bench/gpu_lab.sh calls it
    assert bench.parse_args([]).parts == ["study", "ttr", "epoch"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--parts", "nope"])


def test_the_usual_pipelines_train_reslabs_mlp():
    from reslab.models import build_model
    usual = _module("usual_pipeline")
    ours = build_model("mlp", (1, 28, 28), 10)
    theirs = usual.make_mlp()
    assert [type(m) for m in ours.net] == [type(m) for m in theirs]
    assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]
    assert ours.net[5].p == theirs[5].p == 0.2
    x = torch.randint(0, 256, (28, 28), dtype=torch.uint8)
    # torchvision's ToTensor + Normalize, written out: (x / 255 - 0.1307) / 0.3081 in a (1, 28, 28) float tensor
    from PIL import Image
    y = usual.Transform()(Image.fromarray(x.numpy()))
    assert y.shape == (1, 28, 28) and y.dtype == torch.float32
    assert torch.allclose(y[0], (x.float() / 255 - 0.1307) / 0.3081, atol=1e-6)
