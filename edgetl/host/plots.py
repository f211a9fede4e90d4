"""PNG figures of a run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgetl.metrics import positive_index, roc_curve


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves(history: list[dict[str, Any]], strategy: str, path: Path) -> Path | None:
    """Loss (train/val) and validation accuracy/balanced accuracy per epoch of the main strategy."""
    rows = [r for r in history if r.get("strategy") == strategy]
    if not rows:
        return None
    plt = _plt()
    epochs = [r.get("epoch") for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))

    def line(ax: Any, key: str, label: str) -> None:  # a strategy may log only some columns
        ys = [r.get(key) for r in rows]
        if any(y is not None for y in ys):
            ax.plot(epochs, [float("nan") if y is None else y for y in ys], label=label)

    line(a, "train_loss", "train loss")
    line(a, "val_loss", "val loss")
    a.set_xlabel("epoch")
    a.set_ylabel("cross-entropy")
    a.legend()
    line(b, "val_accuracy", "val accuracy")
    line(b, "val_balanced_accuracy", "val balanced accuracy")
    best = [r["epoch"] for r in rows if r.get("best")]
    if best:
        b.axvline(best[-1], color="grey", linestyle=":", label=f"best (epoch {best[-1]})")
    changes = [r["epoch"] for i, r in enumerate(rows)
               if i and r.get("unfrozen_groups") != rows[i - 1].get("unfrozen_groups")]
    for e in changes:
        b.axvline(e - 0.5, color="tab:red", alpha=0.3)
    b.set_xlabel("epoch")
    b.set_ylim(0, 1.02)
    b.legend(loc="lower right")
    fig.suptitle(f"{strategy}: training curves" + (" (red: a layer group unfrozen)" if changes else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion(doc: dict[str, Any], title: str, path: Path) -> Path:
    """Row-normalised confusion matrix with counts."""
    plt = _plt()
    cm = np.asarray(doc["confusion_matrix"], dtype=float)
    labels = doc["labels"]
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2.5, 1.1 * len(labels) + 2))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{int(cm[i, j])}\n{norm[i, j]:.0%}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.6 else "black", fontsize=9)
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def per_class(doc: dict[str, Any], title: str, path: Path) -> Path:
    """Precision and recall per class as grouped bars."""
    plt = _plt()
    labels = doc["labels"]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(1.3 * len(labels) + 3, 3.5))
    ax.bar(x - 0.2, [doc["per_class"][c]["precision"] for c in labels], 0.4, label="precision")
    ax.bar(x + 0.2, [doc["per_class"][c]["recall"] for c in labels], 0.4, label="recall")
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def roc(y: np.ndarray, probs: np.ndarray, doc: dict[str, Any], positive: str | None, title: str,
        path: Path) -> Path | None:
    """ROC of the positive class (binary tasks only), with the operating point marked."""
    labels = doc["labels"]
    if len(labels) != 2:
        return None
    pos = positive_index(labels, positive)
    pos = 1 if pos is None else pos
    fpr, tpr = roc_curve(np.asarray(y) == pos, probs[:, pos])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot(fpr, tpr, label=f"AUC {doc['roc_auc']:.3f}" if doc["roc_auc"] is not None else None)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    if doc.get("recall_at_threshold") is not None:
        ax.plot([doc["false_reject_rate"]], [doc["recall_at_threshold"]], "o", color="tab:red",
                label="operating point")
    ax.set_xlabel(f"false reject rate (not {labels[pos]} flagged)")
    ax.set_ylabel(f"recall of {labels[pos]}")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
