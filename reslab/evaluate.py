"""evaluate(): loss, accuracy, weighted precision/recall/F1, per-class scores and the confusion matrix."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from torch import nn

from .loader import TensorLoader
from .train import autocast_for


@torch.inference_mode()
def predict(model: nn.Module, loader: TensorLoader, amp: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    """Predicted classes, true labels and the summed cross-entropy over a loader."""
    model.eval()
    preds, labels = [], []
    loss_sum = torch.zeros((), device=loader.device)
    for x, y in loader:
        with autocast_for(loader.device, amp):
            logits = model(x).float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
        preds.append(logits.argmax(1))
        labels.append(y)
    return torch.cat(preds).cpu().numpy(), torch.cat(labels).cpu().numpy(), float(loss_sum)


def evaluate(model: nn.Module, loader: TensorLoader, num_classes: int | None = None, amp: bool = True) -> dict[str, Any]:
    """Average loss, accuracy, weighted precision/recall/F1, per-class precision/recall, confusion matrix."""
    y_pred, y_true, loss_sum = predict(model, loader, amp)
    return classification_metrics(y_true, y_pred, num_classes, loss=loss_sum / max(len(y_true), 1))


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None,
                           loss: float | None = None) -> dict[str, Any]:
    """The metrics of evaluate() from labels and predictions (scikit-learn, zero_division=0)."""
    labels = np.arange(num_classes if num_classes is not None else int(max(y_true.max(), y_pred.max())) + 1)
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="weighted",
                                                               zero_division=0)
    per_p, per_r, _, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None,
                                                         zero_division=0)
    metrics: dict[str, Any] = {
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "precision": float(precision), "recall": float(recall), "f1": float(f1),
        "per_class_precision": [float(v) for v in per_p], "per_class_recall": [float(v) for v in per_r],
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    if loss is not None:
        metrics = {"loss": float(loss), **metrics}
    return metrics
