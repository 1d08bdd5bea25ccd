"""evaluate(): loss, accuracy, weighted precision/recall/F1, per-class scores and the confusion matrix.

Every function takes any iterable of (x, y) batches: reslab's TensorLoader, a torch DataLoader, a list.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from .device import autocast_for, model_device

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def on_device(batches: Batches, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each (x, y) batch on `device` (a no-op for batches already there, as TensorLoader's are)."""
    for x, y in batches:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


@torch.inference_mode()
def outputs(model: nn.Module, batches: Batches, amp: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Predicted classes, true labels and the summed cross-entropy, all left on the model's device (no sync)."""
    model.eval()
    device = model_device(model)
    preds, labels = [], []
    loss_sum = torch.zeros((), device=device)
    for x, y in on_device(batches, device):
        with autocast_for(device, amp):
            logits = model(x).float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
        preds.append(logits.argmax(1))
        labels.append(y)
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    return torch.cat(preds) if preds else empty, torch.cat(labels) if labels else empty, loss_sum


def predict(model: nn.Module, batches: Batches, amp: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    """Predicted classes, true labels and the summed cross-entropy over the batches."""
    preds, labels, loss_sum = outputs(model, batches, amp)
    return preds.cpu().numpy(), labels.cpu().numpy(), float(loss_sum)


def loss_and_accuracy(model: nn.Module, batches: Batches, amp: bool = True,
                      distributed: Any = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over the batches (summed over ranks under torchrun); one host sync."""
    preds, labels, loss_sum = outputs(model, batches, amp)
    totals = torch.stack([loss_sum, (preds == labels).sum().to(loss_sum.dtype),
                          torch.tensor(float(len(labels)), device=loss_sum.device)])
    if distributed is not None:
        totals = distributed.all_reduce_sum(totals)
    loss_total, correct, count = totals.tolist()
    return loss_total / max(count, 1), correct / max(count, 1)


def evaluate(model: nn.Module, batches: Batches, num_classes: int | None = None, amp: bool = True) -> dict[str, Any]:
    """Average loss, accuracy, weighted precision/recall/F1, per-class precision/recall, confusion matrix."""
    y_pred, y_true, loss_sum = predict(model, batches, amp)
    return classification_metrics(y_true, y_pred, num_classes, loss=loss_sum / max(len(y_true), 1))


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None,
                           loss: float | None = None) -> dict[str, Any]:
    """The metrics of evaluate() from labels and predictions, as scikit-learn's with zero_division=0."""
    # From the confusion matrix by hand: the same numbers as sklearn.metrics (tests compare them), without the
    # 0.8 s that importing it (and scipy) adds to every training process.
    n = num_classes if num_classes is not None else int(max(y_true.max(initial=0), y_pred.max(initial=0))) + 1
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    inside = (y_true >= 0) & (y_true < n) & (y_pred >= 0) & (y_pred < n)
    matrix = np.bincount(n * y_true[inside] + y_pred[inside], minlength=n * n).reshape(n, n)
    hits = np.diag(matrix).astype(np.float64)
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    per_p = _ratio(hits, predicted)
    per_r = _ratio(hits, support)
    per_f1 = _ratio(2 * hits, support + predicted)     # 2PR / (P + R), and 0 where both are 0
    weights = support / support.sum() if support.sum() else np.zeros(n)
    metrics: dict[str, Any] = {
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "precision": float(weights @ per_p), "recall": float(weights @ per_r), "f1": float(weights @ per_f1),
        "per_class_precision": [float(v) for v in per_p], "per_class_recall": [float(v) for v in per_r],
        "confusion_matrix": matrix.tolist(),
    }
    if loss is not None:
        metrics = {"loss": float(loss), **metrics}
    return metrics


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator elementwise, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)
