"""The study's figures as PNG files (matplotlib, Agg backend): one colour per model, titled and labelled."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")   # files only: no display needed, same output everywhere
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

Histories = dict[str, list[list[dict]]]   # model label -> one list of epoch records per seed


def model_colors(labels: list[str]) -> dict[str, tuple]:
    """A fixed colour for each model label, in the given order."""
    palette = matplotlib.colormaps["tab10"].colors  # type: ignore[attr-defined]  # a ListedColormap
    return {label: palette[i % len(palette)] for i, label in enumerate(labels)}


def _spread(values: list[float]) -> float:
    """Sample std over seeds (as the report's tables), 0 for a single seed."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _save(fig, path: Path) -> Path:
    for ax in fig.axes:
        if ax.get_xlabel() == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def loss_curves(histories: Histories, key: str, title: str, path: Path) -> Path:
    """One line per model and seed of `key` (train_loss or val_loss) against the epoch."""
    colors = model_colors(list(histories))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, runs in histories.items():
        for i, records in enumerate(runs):
            ax.plot([r["epoch"] for r in records], [r[key] for r in records], color=colors[label],
                    alpha=1.0 if i == 0 else 0.45, lw=1.6, label=label if i == 0 else None)
    ax.set(title=title, xlabel="epoch", ylabel=key.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend(title="model (lighter: other seeds)" if any(len(r) > 1 for r in histories.values()) else "model")
    return _save(fig, path)


def learning_curves(histories: Histories, title: str, path: Path) -> Path:
    """Train (dashed) and validation (solid) accuracy per epoch, one panel per model, seed 0."""
    colors = model_colors(list(histories))
    n = len(histories)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, (label, runs) in zip(axes.flat, histories.items()):
        records = runs[0]
        epochs = [r["epoch"] for r in records]
        ax.plot(epochs, [100 * r["train_accuracy"] for r in records], "--", color=colors[label], label="train")
        ax.plot(epochs, [100 * r["val_accuracy"] for r in records], "-", color=colors[label], label="validation")
        ax.set(title=label, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%)")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return _save(fig, path)


def grad_norm_bars(norms: dict[str, dict[str, list[float]]], title: str, path: Path) -> Path:
    """Grouped bars: layer on the x axis, one bar per model (mean over seeds, error bar = sample std)."""
    colors = model_colors(list(norms))
    layers = sorted({layer for per_layer in norms.values() for layer in per_layer}, key=lambda s: int(s[2:]))
    width = 0.8 / len(norms)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(layers)), 4))
    x = np.arange(len(layers))
    for i, (label, per_layer) in enumerate(norms.items()):
        means = [float(np.mean(per_layer[layer])) if layer in per_layer else np.nan for layer in layers]
        stds = [_spread(per_layer[layer]) if layer in per_layer else 0.0 for layer in layers]
        ax.bar(x + (i - (len(norms) - 1) / 2) * width, means, width, yerr=stds, capsize=3, color=colors[label],
               label=label)
    ax.set_xticks(x, layers)
    ax.set(title=title, xlabel="layer (fc1 = first)", ylabel="gradient L2 norm")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="model")
    return _save(fig, path)


def grad_norm_epochs(norms: dict[str, dict[str, list[float]]], title: str, path: Path) -> Path:
    """Per-epoch mean gradient norm, one panel per layer, one line per model (seed 0)."""
    colors = model_colors(list(norms))
    layers = sorted({layer for per_layer in norms.values() for layer in per_layer}, key=lambda s: int(s[2:]))
    cols = min(len(layers), 3)
    rows = -(-len(layers) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False, layout="constrained")
    for ax, layer in zip(axes.flat, layers):
        for label, per_layer in norms.items():
            if per_layer.get(layer):
                values = per_layer[layer]
                ax.plot(range(1, len(values) + 1), values, "-o", ms=3, color=colors[label], label=label)
        ax.set(title=layer, xlabel="epoch", ylabel="gradient L2 norm")
        ax.grid(alpha=0.3)
        ax.legend()
    for ax in list(axes.flat)[len(layers):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return _save(fig, path)


def transfer_bars(accuracies: dict[str, list[float]], reference: dict[str, float], title: str, path: Path) -> Path:
    """Test accuracy of each transfer method (mean over seeds, error bar = std), reference values as markers."""
    colors = model_colors(list(accuracies))
    methods = list(accuracies)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    x = np.arange(len(methods))
    bars = ax.bar(x, [np.mean(accuracies[m]) for m in methods], yerr=[_spread(accuracies[m]) for m in methods],
                  capsize=4, color=[colors[m] for m in methods])
    ax.bar_label(bars, fmt="%.1f", label_type="center", color="white")
    ref = [(i, reference[m]) for i, m in enumerate(methods) if m in reference]
    if ref:
        ax.scatter([i for i, _ in ref], [v for _, v in ref], marker="_", s=900, color="black", zorder=3,
                   label="reference lab")
        ax.legend()
    ax.set_xticks(x, methods)
    ax.set(title=title, xlabel="method", ylabel="test accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def accuracy_vs_depth(accuracies: dict[str, dict[int, list[float]]], reference: dict[str, dict[int, float]],
                      title: str, path: Path) -> Path:
    """Test accuracy against depth, one line per model family (mean over seeds, error bar = std)."""
    colors = model_colors(list(accuracies))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for model, by_depth in accuracies.items():
        depths = sorted(by_depth)
        ax.errorbar(depths, [np.mean(by_depth[d]) for d in depths], yerr=[_spread(by_depth[d]) for d in depths],
                    fmt="-o", capsize=3, color=colors[model], label=model)
        ref = reference.get(model, {})
        if ref:
            ax.plot(sorted(ref), [ref[d] for d in sorted(ref)], ":x", color=colors[model], label=f"{model} (reference)")
    all_depths = sorted({d for by_depth in accuracies.values() for d in by_depth})
    ax.set_xticks(all_depths)
    ax.set(title=title, xlabel="depth", ylabel="test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)
