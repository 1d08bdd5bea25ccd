"""evaluate() and classification_metrics against scikit-learn and torch on the same predictions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score
from torch import nn

from reslab.evaluate import classification_metrics, evaluate, predict
from reslab.loader import TensorLoader


def _sklearn(y_true, y_pred, labels):
    kw = dict(labels=labels, zero_division=0)
    return {
        "accuracy": accuracy_score(y_true, y_pred),
        "precision": precision_score(y_true, y_pred, average="weighted", **kw),
        "recall": recall_score(y_true, y_pred, average="weighted", **kw),
        "f1": f1_score(y_true, y_pred, average="weighted", **kw),
        "per_class_precision": precision_score(y_true, y_pred, average=None, **kw).tolist(),
        "per_class_recall": recall_score(y_true, y_pred, average=None, **kw).tolist(),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def _assert_matches(metrics, expected):
    for key in ("accuracy", "precision", "recall", "f1"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-12), key
        assert isinstance(metrics[key], float)
    assert metrics["per_class_precision"] == pytest.approx(expected["per_class_precision"], abs=1e-12)
    assert metrics["per_class_recall"] == pytest.approx(expected["per_class_recall"], abs=1e-12)
    assert metrics["confusion_matrix"] == expected["confusion_matrix"]


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 5, 200))
    metrics = classification_metrics(y_true, y_pred, num_classes=5)
    _assert_matches(metrics, _sklearn(y_true, y_pred, list(range(5))))
    assert "loss" not in metrics
    assert 0.6 < metrics["accuracy"] < 0.8


def test_class_absent_from_predictions():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 4, 100)
    y_pred = np.where(y_true == 3, 0, y_true)              # class 3 is never predicted
    y_pred[:10] = (y_pred[:10] + 1) % 3
    metrics = classification_metrics(y_true, y_pred, num_classes=4)
    expected = _sklearn(y_true, y_pred, [0, 1, 2, 3])
    _assert_matches(metrics, expected)
    assert metrics["per_class_precision"][3] == 0.0 and metrics["per_class_recall"][3] == 0.0
    assert [row[3] for row in metrics["confusion_matrix"]] == [0, 0, 0, 0]


def test_class_absent_from_labels_and_predictions():
    rng = np.random.default_rng(2)
    y_true = rng.integers(0, 3, 60)
    y_pred = np.where(rng.random(60) < 0.7, y_true, rng.integers(0, 3, 60))
    metrics = classification_metrics(y_true, y_pred, num_classes=6)   # classes 3..5 never occur
    _assert_matches(metrics, _sklearn(y_true, y_pred, list(range(6))))
    assert np.array(metrics["confusion_matrix"]).shape == (6, 6)
    assert np.array(metrics["confusion_matrix"])[3:].sum() == 0
    # Weighted averages give absent classes weight 0: the same numbers as over the classes present.
    present = _sklearn(y_true, y_pred, [0, 1, 2])
    assert metrics["precision"] == pytest.approx(present["precision"])


def test_class_count_inferred_from_the_data():
    y_true = np.array([0, 1, 2, 2])
    y_pred = np.array([0, 4, 2, 1])
    metrics = classification_metrics(y_true, y_pred)
    assert np.array(metrics["confusion_matrix"]).shape == (5, 5)
    _assert_matches(metrics, _sklearn(y_true, y_pred, list(range(5))))


def test_perfect_and_empty_predictions():
    y = np.array([0, 1, 1, 2])
    perfect = classification_metrics(y, y, num_classes=3)
    assert perfect["accuracy"] == perfect["precision"] == perfect["recall"] == perfect["f1"] == 1.0
    assert perfect["confusion_matrix"] == [[1, 0, 0], [0, 2, 0], [0, 0, 1]]
    wrong = classification_metrics(y, (y + 1) % 3, num_classes=3)
    assert wrong["accuracy"] == wrong["precision"] == wrong["recall"] == 0.0


class _Fixed(nn.Module):
    """A linear classifier with fixed weights, so its predictions are known in advance."""

    def __init__(self, in_features: int, classes: int, seed: int = 0):
        super().__init__()
        self.fc = nn.Linear(in_features, classes)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=g))
            self.fc.bias.copy_(torch.randn(self.fc.bias.shape, generator=g))
        self.dropout = nn.Dropout(0.5)    # evaluate() must switch it off

    def forward(self, x):
        return self.fc(self.dropout(x.flatten(1)))


def _loader(n: int, batch_size: int, classes: int = 4, seed: int = 0) -> TensorLoader:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 2, 3, 3), dtype=np.uint8)
    labels = rng.integers(0, classes, n)
    labels[labels == classes - 1] = 0                           # one class never occurs in the labels
    return TensorLoader(images, labels, batch_size, mean=[0.5, 0.4], std=[0.3, 0.2])


def test_evaluate_matches_torch_and_sklearn():
    model = _Fixed(18, 4)
    model.train()
    loader = _loader(50, 16)                                    # 16, 16, 16, 2: unequal batches
    x = torch.cat([x for x, _ in loader])
    y = torch.cat([y for _, y in loader])
    with torch.no_grad():
        logits = model.eval()(x)
    model.train()
    expected_loss = nn.functional.cross_entropy(logits, y).item()   # mean over samples, not over batches
    y_pred = logits.argmax(1).numpy()

    metrics = evaluate(model, loader, num_classes=4)

    assert not model.training
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-5)
    _assert_matches(metrics, _sklearn(y.numpy(), y_pred, [0, 1, 2, 3]))
    batch_means = [nn.functional.cross_entropy(model.eval()(xb), yb).item() for xb, yb in loader]
    assert metrics["loss"] != pytest.approx(np.mean(batch_means), rel=1e-4)   # the last batch is small


def test_evaluate_does_not_depend_on_batch_size():
    model = _Fixed(18, 4, seed=3)
    a = evaluate(model, _loader(37, 5), num_classes=4)
    b = evaluate(model, _loader(37, 64), num_classes=4)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    assert a["confusion_matrix"] == b["confusion_matrix"] and a["accuracy"] == b["accuracy"]


def test_predict_returns_predictions_labels_and_summed_loss():
    model = _Fixed(18, 4, seed=5)
    loader = _loader(20, 6)
    y_pred, y_true, loss_sum = predict(model, loader)
    x = torch.cat([x for x, _ in loader])
    y = torch.cat([y for _, y in loader])
    logits = model.eval()(x).detach()
    assert np.array_equal(y_true, y.numpy()) and np.array_equal(y_pred, logits.argmax(1).numpy())
    assert loss_sum == pytest.approx(nn.functional.cross_entropy(logits, y, reduction="sum").item(), rel=1e-5)
