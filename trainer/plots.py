"""Pictures of a training run: learning curves, first-layer weights, test confusion matrix."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from infer.atomic import atomic_path
from infer.contract import IMAGE_SIZE, LABELS
from infer.report import render_confusion


def _png_text(model_name: str | None, description: str) -> dict[str, str]:
    """PNG text chunks: which model the picture describes (its checkpoint's file name) and what it shows."""
    return {"Description": description, **({"Source": model_name} if model_name else {})}


def _save(fig, path: Path, model_name: str | None, description: str) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png", metadata=_png_text(model_name, description))


def plot_curves(history: list[dict], path: Path, model_name: str | None = None) -> None:
    """Loss and accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["loss"] for h in history], label="training loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.set_title("Loss")
    ax_acc.plot(epochs, [100 * h["train_accuracy"] for h in history], label="train (10k sample)")
    if history and history[0]["val_accuracy"] is not None:
        ax_acc.plot(epochs, [100 * h["val_accuracy"] for h in history], label="validation")
    # Zoom on where the run spends its time: the first few epochs' climb would squash the rest.
    later = [100 * h[k] for h in history[len(history) // 10 :] for k in ("train_accuracy", "val_accuracy")
             if h[k] is not None]
    if len(history) >= 10 and later:
        ax_acc.set_ylim(max(0.0, min(later) - 1), min(100.0, max(later) + 0.5))
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_title("Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if model_name:
        fig.suptitle(model_name, fontsize=10)
    fig.tight_layout()
    _save(fig, path, model_name, "training loss and accuracy per epoch")
    plt.close(fig)


def plot_first_layer(weights: np.ndarray, path: Path, max_units: int = 64, model_name: str | None = None) -> None:
    """Each first-layer unit's 784 input weights drawn as a 28x28 image (red +, blue -)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = weights[:max_units]  # [units, 784]
    cols = int(np.ceil(np.sqrt(len(units))))
    rows = int(np.ceil(len(units) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(units):
            w = units[i].reshape(IMAGE_SIZE, IMAGE_SIZE)
            lim = float(np.abs(w).max()) or 1.0
            ax.imshow(w, cmap="seismic", vmin=-lim, vmax=lim)
            ax.set_title(f"unit {i}", fontsize=8)
    prefix = f"{model_name}: what" if model_name else "What"
    fig.suptitle(f"{prefix} the first hidden layer learned (input weights; red +, blue -)", fontsize=9)
    fig.tight_layout()
    _save(fig, path, model_name, "first-layer input weights of each hidden unit, as 28x28 images")
    plt.close(fig)


def plot_confusion(confusion: list[list[int]], path: Path, title: str, model_name: str | None = None) -> None:
    """The test set's confusion matrix (rows: true digit, columns: predicted)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in _png_text(model_name, "test-set confusion matrix (rows true, columns predicted)").items():
        info.add_text(key, value)
    with atomic_path(path) as tmp:
        render_confusion(np.asarray(confusion), LABELS, title).save(tmp, format="PNG", pnginfo=info)
