"""The public API as the README shows it: your own model on your own data, with a DataLoader or reslab's loader."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import reslab

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> tuple[str, str]:
    """The README's own-model example and the lines that swap reslab's loader in."""
    text = README.read_text()
    blocks = re.findall(r"<!-- own-model example[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert len(blocks) == 2, "the README's two own-model blocks are missing"
    return blocks[0], blocks[1]


def _run(code: str, capsys) -> tuple[dict, str]:
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    return namespace, capsys.readouterr().out


def test_readme_example_with_a_dataloader(capsys):
    example, _ = _blocks()
    assert len(example.strip().splitlines()) < 10 + 3          # under ten lines of code, plus its three imports
    namespace, out = _run(example, capsys)
    history = namespace["history"]
    assert history.best_epoch >= 1 and len(history.epochs) >= history.best_epoch
    assert history.stopped_by in ("stagnation", "overfitting", "max_epochs")
    accuracy = float(out.split()[-1])
    assert accuracy > 0.8                                       # learned (chance is 1/3)
    assert out.split()[0] == str(history.stopped_by)


def test_readme_example_with_reslab_s_loader(capsys):
    example, swap = _blocks()
    lines = example.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("history = "))
    # The example with its loaders built by the swap block instead, right before training.
    code = "\n".join(lines[:at] + swap.splitlines() + lines[at:])
    namespace, out = _run(code, capsys)
    assert isinstance(namespace["train"], reslab.TensorLoader)
    assert float(out.split()[-1]) > 0.8


def test_public_names_are_exported():
    for name in ("TrainConfig", "train_model", "evaluate", "TensorLoader", "make_loaders", "load_dataset",
                 "build_model", "register_model", "run_training", "load_checkpoint", "EarlyStopping", "StopReason",
                 "History", "__version__"):
        assert hasattr(reslab, name), name
    assert set(reslab.__all__) <= set(dir(reslab))


@pytest.mark.parametrize("field", ["patience", "overfit_ratio", "epochs"])
def test_train_model_options_are_keyword_only(field):
    import inspect
    params = inspect.signature(reslab.train_model).parameters
    assert list(params)[:4] == ["model", "train", "val", "config"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in list(params.values())[4:])
    assert field in inspect.signature(reslab.TrainConfig).parameters
