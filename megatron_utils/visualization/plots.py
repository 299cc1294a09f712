"""Evaluation figures as PNG files. Uses matplotlib's object API (Figure + Agg canvas), never pyplot, so
it needs no display and leaves global state alone."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve


def plot_roc(scores: pd.DataFrame, path: str | os.PathLike) -> None:
    """ROC curves of all videos and of each manipulation method (its fakes against all reals)."""
    figure = Figure(figsize=(5, 5), dpi=100)
    axes = figure.add_subplot()
    labels = (scores["label"] == "fake").to_numpy(np.int64)
    groups = [("all", np.ones(len(scores), dtype=bool))]
    groups += [(method, (scores["method"] == method).to_numpy() | (labels == 0))
               for method in sorted(scores.loc[labels == 1, "method"].unique())]
    for name, chosen in groups:
        if len(np.unique(labels[chosen])) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels[chosen], scores["probability"].to_numpy()[chosen])
        auc = roc_auc_score(labels[chosen], scores["probability"].to_numpy()[chosen])
        axes.plot(fpr, tpr, linewidth=2.5 if name == "all" else 1.2, label=f"{name} (AUC {auc:.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel="false positive rate", ylabel="true positive rate", title="Video-level ROC",
             xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(loc="lower right", fontsize="small")
    figure.savefig(path, bbox_inches="tight")


def plot_confusion(labels: np.ndarray, predicted: np.ndarray, path: str | os.PathLike) -> None:
    matrix = confusion_matrix(labels, predicted.astype(np.int64), labels=[0, 1])
    figure = Figure(figsize=(4, 4), dpi=100)
    axes = figure.add_subplot()
    axes.imshow(matrix, cmap="Blues")
    for (row, column), count in np.ndenumerate(matrix):
        axes.text(column, row, str(count), ha="center", va="center",
                  color="white" if count > matrix.max() / 2 else "black")
    axes.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["real", "fake"], yticklabels=["real", "fake"],
             xlabel="predicted", ylabel="true", title="Confusion matrix (videos)")
    figure.savefig(path, bbox_inches="tight")


def plot_training_curves(history: pd.DataFrame, path: str | os.PathLike) -> None:
    """Losses and every validation AUC in a run's (or a fine-tuning run's) history.csv."""
    figure = Figure(figsize=(9, 3.5), dpi=100)
    loss_axes, auc_axes = figure.subplots(1, 2)
    for column, label in (("train_loss", "train"), ("val_loss", "validation")):
        if column in history:
            loss_axes.plot(history["epoch"], history[column], label=label)
    loss_axes.set(xlabel="epoch", ylabel="loss", title="Loss")
    loss_axes.legend()
    for column in (c for c in history.columns if c.startswith("val_") and c.endswith("auc")):
        auc_axes.plot(history["epoch"], history[column], marker="o", markersize=3,
                      label=column[len("val_"):-len("_auc")] or "video")
    auc_axes.set(xlabel="epoch", ylabel="AUC", title="Validation AUC")
    auc_axes.legend()
    figure.savefig(path, bbox_inches="tight")


def plot_robustness(table: pd.DataFrame, path: str | os.PathLike, kind: str = "corruption",
                    level: str = "severity", title: str = "Detection under real-world corruptions") -> None:
    """Video AUC against `level` (severity, eps), one line per `kind` (corruption, attack), from the clean
    score (the row whose `kind` is "none", at level 0)."""
    figure = Figure(figsize=(7, 4), dpi=100)
    axes = figure.add_subplot()
    clean = table[table[kind] == "none"]
    for name, rows in table[table[kind] != "none"].groupby(kind, sort=False):
        rows = pd.concat([clean, rows]).sort_values(level)
        axes.plot(rows[level], rows["auc"], marker="o", label=name)
    axes.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="chance")
    axes.set(xlabel=f"{level} (0: clean)", ylabel="video AUC", ylim=(0, 1.02), title=title)
    axes.legend(loc="lower left", fontsize="small", ncol=2)
    figure.savefig(path, bbox_inches="tight")


def plot_frame_attribution(frame_index: list[int], rgb: np.ndarray, depth: np.ndarray, deciding: list[int],
                           verdict: str, path: str | os.PathLike) -> None:
    """Each frame's push towards the verdict, depth stacked on RGB; the deciding frames are shaded."""
    figure = Figure(figsize=(8, 3.2), dpi=100)
    axes = figure.add_subplot()
    rgb, depth = np.asarray(rgb, float), np.asarray(depth, float)
    positions = np.arange(len(frame_index))
    for number, frame in enumerate(deciding):
        at = frame_index.index(frame)
        axes.axvspan(at - 0.5, at + 0.5, color="gold", alpha=0.35,
                     label=None if number else "deciding frames")
    axes.bar(positions, rgb, color="C0", label="rgb", width=0.8)
    axes.bar(positions, depth, bottom=np.where(depth >= 0, rgb.clip(0), rgb.clip(None, 0)), color="C1",
             label="depth", width=0.8)  # stacked where both push the same way
    axes.axhline(0, color="grey", linewidth=0.8)
    step = max(1, len(frame_index) // 12)
    axes.set_xticks(positions[::step], [str(f) for f in frame_index[::step]])
    axes.set(xlabel="frame", ylabel=f"push towards '{verdict}'",
             title="Which frames drove the verdict (Integrated Gradients)")
    axes.legend(loc="best", fontsize="small")
    figure.savefig(path, bbox_inches="tight")
