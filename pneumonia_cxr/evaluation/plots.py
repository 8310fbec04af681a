"""Evaluation figures as PNG files.

Figures are built on `matplotlib.figure.Figure` directly, never through pyplot: no global figure
registry, no backend switch, nothing left open when a plot fails half-way, safe in a headless job
and in a notebook alike.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from pneumonia_cxr import CLASS_NAMES
from pneumonia_cxr.evaluation.calibration import (
    check_binary_inputs,
    expected_calibration_error,
    reliability_curve,
)
from pneumonia_cxr.evaluation.metrics import threshold_metrics
from pneumonia_cxr.storage import atomic_write

DPI = 120
CLASS_COLORS: dict[str, str] = {CLASS_NAMES[0]: "tab:blue", CLASS_NAMES[1]: "tab:red"}


def _save(figure: Figure, path: str | Path) -> Path:
    """Write the figure as PNG (creating the folder) and release its artists."""
    try:  # whole or not at all: a killed evaluation leaves no half-written figure
        return atomic_write(
            path, lambda handle: figure.savefig(handle, dpi=DPI, bbox_inches="tight", format="png")
        )
    finally:
        figure.clear()


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}%"


def plot_confusion_matrix(
    counts: dict[str, int], path: str | Path, title: str = "Confusion matrix"
) -> Path:
    """2x2 matrix of counts with row percentages (share of each true class), NORMAL first."""
    missing = {"tp", "fp", "tn", "fn"} - set(counts)
    if missing:
        raise ValueError(f"counts lacks {sorted(missing)}; expected keys tp, fp, tn, fn")
    matrix = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]], dtype=float)
    row_totals = matrix.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        row_share = np.where(row_totals > 0, matrix / row_totals, np.nan)

    figure = Figure(figsize=(4.8, 4.2))
    axes = figure.subplots()
    image = axes.imshow(np.nan_to_num(row_share), cmap="Blues", vmin=0.0, vmax=1.0)
    for row in range(2):
        for column in range(2):
            share = row_share[row, column]
            color = "white" if share > 0.6 else "black"
            text = f"{int(matrix[row, column])}\n({_percent(share)})"
            axes.text(column, row, text, ha="center", va="center", color=color, fontsize=12)
    axes.set_xticks([0, 1], labels=list(CLASS_NAMES))
    axes.set_yticks([0, 1], labels=list(CLASS_NAMES))
    axes.set_xlabel("Predicted label")
    axes.set_ylabel("True label")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="Share of true class")
    return _save(figure, path)


def _operating_point_text(threshold: float, metrics: dict[str, float]) -> str:
    return (
        f"threshold {threshold:.3f}\nsens {_percent(metrics['sensitivity'])}\n"
        f"spec {_percent(metrics['specificity'])}"
    )


def plot_roc(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    threshold: float,
    path: str | Path,
    title: str = "ROC curve",
) -> Path:
    """ROC curve with AUC, chance diagonal and the operating point of the stored threshold."""
    labels, probs = check_binary_inputs(y_true, y_prob, require_both_classes=True)
    fpr, tpr, _ = roc_curve(labels, probs)
    point = threshold_metrics(labels, probs, threshold)
    x, y = 1.0 - point["specificity"], point["sensitivity"]

    figure = Figure(figsize=(5.2, 5.0))
    axes = figure.subplots()
    axes.plot(
        fpr, tpr, color="tab:blue", lw=2, label=f"ROC (AUC = {roc_auc_score(labels, probs):.3f})"
    )
    axes.plot([0, 1], [0, 1], color="gray", ls="--", lw=1, label="Chance")
    axes.plot(x, y, "o", color="tab:red", ms=8, label=f"Operating point (t = {threshold:.3f})")
    axes.annotate(
        _operating_point_text(threshold, point),
        xy=(x, y),
        xytext=(0.45, 0.25),
        textcoords="axes fraction",
        arrowprops={"arrowstyle": "->", "color": "tab:red"},
        bbox={"boxstyle": "round", "fc": "white", "ec": "tab:red"},
    )
    axes.set_xlim(-0.01, 1.01)
    axes.set_ylim(-0.01, 1.01)
    axes.set_xlabel("False positive rate (1 - specificity)")
    axes.set_ylabel("True positive rate (sensitivity)")
    axes.set_title(title)
    axes.legend(loc="lower right")
    axes.grid(alpha=0.3)
    return _save(figure, path)


def plot_pr(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    threshold: float,
    path: str | Path,
    title: str = "Precision-recall curve",
) -> Path:
    """Precision-recall curve with AP, the prevalence baseline and the operating point."""
    labels, probs = check_binary_inputs(y_true, y_prob, require_both_classes=True)
    precision, recall, _ = precision_recall_curve(labels, probs)
    point = threshold_metrics(labels, probs, threshold)
    prevalence = float(labels.mean())

    figure = Figure(figsize=(5.2, 5.0))
    axes = figure.subplots()
    ap = average_precision_score(labels, probs)
    axes.step(recall, precision, where="post", color="tab:blue", lw=2, label=f"PR (AP = {ap:.3f})")
    axes.axhline(prevalence, color="gray", ls="--", lw=1, label=f"Prevalence = {prevalence:.3f}")
    if not math.isnan(point["precision"]):
        axes.plot(
            point["sensitivity"],
            point["precision"],
            "o",
            color="tab:red",
            ms=8,
            label=(
                f"Operating point (t = {threshold:.3f}): recall {_percent(point['sensitivity'])}, "
                f"precision {_percent(point['precision'])}"
            ),
        )
    axes.set_xlim(-0.01, 1.01)
    axes.set_ylim(0.0, 1.02)
    axes.set_xlabel("Recall (sensitivity)")
    axes.set_ylabel("Precision (PPV)")
    axes.set_title(title)
    axes.legend(loc="lower left", fontsize=8)
    axes.grid(alpha=0.3)
    return _save(figure, path)


def _draw_reliability(
    curve_axes: Axes,
    count_axes: Axes,
    labels: np.ndarray,
    probs: np.ndarray,
    name: str,
    style: dict,
) -> None:
    curve = reliability_curve(labels, probs)
    ece = expected_calibration_error(labels, probs)
    filled = curve["counts"] > 0
    curve_axes.plot(
        curve["mean_predicted"][filled],
        curve["fraction_positive"][filled],
        marker="o",
        label=f"{name} (ECE = {ece:.3f})",
        **style,
    )
    edges = curve["bin_edges"]
    count_axes.stairs(curve["counts"], edges, label=name, lw=1.5, **style)


def plot_reliability(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    path: str | Path,
    y_prob_uncalibrated: ArrayLike | None = None,
    title: str = "Reliability diagram",
) -> Path:
    """Reliability diagram (observed vs predicted) with ECE, and the bin counts underneath.

    With `y_prob_uncalibrated`, both curves are drawn: before and after calibration.
    """
    labels, probs = check_binary_inputs(y_true, y_prob)
    figure = Figure(figsize=(5.2, 6.4))
    curve_axes, count_axes = figure.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    curve_axes.plot([0, 1], [0, 1], color="gray", ls="--", lw=1, label="Perfectly calibrated")
    if y_prob_uncalibrated is not None:
        _, raw = check_binary_inputs(labels, y_prob_uncalibrated)
        _draw_reliability(
            curve_axes, count_axes, labels, raw, "Before calibration", {"color": "tab:orange"}
        )
        name = "After calibration"
    else:
        name = "Model"
    _draw_reliability(curve_axes, count_axes, labels, probs, name, {"color": "tab:blue"})
    curve_axes.set_xlim(0.0, 1.0)
    curve_axes.set_ylim(-0.01, 1.01)
    curve_axes.set_ylabel(f"Observed fraction {CLASS_NAMES[1]}")
    curve_axes.set_title(title)
    curve_axes.legend(loc="upper left", fontsize=8)
    curve_axes.grid(alpha=0.3)
    count_axes.set_xlabel(f"Mean predicted probability of {CLASS_NAMES[1]}")
    count_axes.set_ylabel("Images per bin")
    count_axes.grid(alpha=0.3)
    return _save(figure, path)


def plot_score_histograms(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    threshold: float,
    path: str | Path,
    title: str = "Predicted probability by true class",
) -> Path:
    """Histogram of the predicted probability per true class, with the threshold line."""
    labels, probs = check_binary_inputs(y_true, y_prob)
    bins = np.linspace(0.0, 1.0, 26)
    figure = Figure(figsize=(6.0, 4.0))
    axes = figure.subplots()
    for index, name in enumerate(CLASS_NAMES):
        scores = probs[labels == index]
        axes.hist(
            scores,
            bins=bins,
            alpha=0.55,
            color=CLASS_COLORS[name],
            label=f"{name} (n = {scores.size})",
        )
    axes.axvline(threshold, color="black", ls="--", lw=1.5, label=f"Threshold = {threshold:.3f}")
    axes.set_xlim(0.0, 1.0)
    axes.set_xlabel(f"Predicted probability of {CLASS_NAMES[1]}")
    axes.set_ylabel("Images")
    axes.set_title(title)
    axes.legend()
    return _save(figure, path)


def _to_float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _read_epoch_table(csv_path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """Read a per-epoch metrics CSV into (stage per epoch, column -> values per epoch).

    Rows are grouped by (stage, epoch) in file order, taking the mean of the non-empty values,
    which merges loggers (e.g. Lightning's CSVLogger) that write train and val to separate rows.
    Without an epoch column each row is one epoch.
    """
    try:
        with csv_path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{csv_path}: metrics CSV not found; pass the per-epoch file written by training"
        ) from None
    if not rows:
        raise ValueError(f"{csv_path}: metrics CSV has no rows; did training log any epoch?")
    columns = [name for name in rows[0] if name not in ("epoch", "stage", "step")]
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for index, row in enumerate(rows):
        epoch = row.get("epoch")
        key = (row.get("stage") or "", epoch if epoch not in (None, "") else f"row{index}")
        groups.setdefault(key, []).append(row)
    stages = [stage for stage, _ in groups]
    table = {}
    for name in columns:
        values = []
        for members in groups.values():
            numbers = [_to_float(member.get(name)) for member in members]
            finite = [number for number in numbers if math.isfinite(number)]
            values.append(float(np.mean(finite)) if finite else math.nan)
        table[name] = np.array(values)
    return stages, table


def _plot_series(axes: Axes, x: np.ndarray, table: dict[str, np.ndarray], names: list[str]) -> None:
    """Plot each named column, skipping NaNs so lines stay connected; say so when none exists."""
    drawn = False
    for name in names:
        values = table[name]
        keep = np.isfinite(values)
        if keep.any():
            axes.plot(x[keep], values[keep], marker="o", ms=3, label=name)
            drawn = True
    if drawn:
        axes.legend(fontsize=8)
    else:
        axes.text(0.5, 0.5, "no values logged", ha="center", va="center", transform=axes.transAxes)


def plot_learning_curves(
    metrics_csv_path: str | Path, path: str | Path, title: str = "Learning curves"
) -> Path:
    """Loss and AUC per epoch from the training CSV, with the stage boundary marked.

    Columns whose name contains "loss" go to the loss panel and those containing "auc" to the AUC
    panel (per-step "_step" columns are skipped); missing columns and NaNs are tolerated. When the
    epoch counter restarts in stage 2, epochs are numbered consecutively across stages.
    """
    csv_path = Path(metrics_csv_path)
    stages, table = _read_epoch_table(csv_path)
    x = np.arange(1, len(stages) + 1, dtype=float)
    wanted = [name for name in table if not name.endswith("_step")]
    loss_names = [name for name in wanted if "loss" in name.lower()]
    auc_names = [name for name in wanted if "auc" in name.lower()]

    figure = Figure(figsize=(10.0, 4.0))
    loss_axes, auc_axes = figure.subplots(1, 2)
    _plot_series(loss_axes, x, table, loss_names)
    _plot_series(auc_axes, x, table, auc_names)
    boundaries = [i for i in range(1, len(stages)) if stages[i] != stages[i - 1]]
    for axes, label in ((loss_axes, "Loss"), (auc_axes, "ROC AUC")):
        for boundary in boundaries:
            axes.axvline(x[boundary] - 0.5, color="gray", ls=":", lw=1.5)
            axes.text(
                x[boundary] - 0.45,
                0.98,
                f"stage {stages[boundary]}",
                transform=axes.get_xaxis_transform(),
                va="top",
                fontsize=8,
                color="gray",
            )
        axes.set_xlabel("Epoch (consecutive over stages)")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
    loss_axes.set_title("Loss")
    auc_axes.set_title("Validation ROC AUC")
    figure.suptitle(title)
    return _save(figure, path)


def plot_audit(whole_auc: dict, views: dict[str, dict], path: str | Path) -> Path:
    """ROC AUC with its CI: the whole image, then each edited view of the shortcut audit."""
    names = ["whole image", *(name.replace("_", " ") for name in views)]
    entries = [whole_auc, *(view["roc_auc"] for view in views.values())]
    values = np.array([entry["value"] for entry in entries])
    low = values - np.array([entry.get("ci_low", entry["value"]) for entry in entries])
    high = np.array([entry.get("ci_high", entry["value"]) for entry in entries]) - values
    figure = Figure(figsize=(6.0, 3.0))
    axes = figure.add_subplot()
    axes.barh(names[::-1], values[::-1], xerr=[low[::-1], high[::-1]], color="#4c78a8")
    axes.axvline(0.5, color="grey", linestyle=":", linewidth=1)
    axes.set_xlim(0.4, 1.0)
    axes.set_xlabel("ROC AUC (95% CI)")
    axes.set_title("What the model sees: shortcut audit")
    for y, value in enumerate(values[::-1]):
        axes.text(0.41, y, f"{value:.3f}", va="center", fontsize=8, color="white")
    return _save(figure, path)
