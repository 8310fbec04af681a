"""The evaluate job: a model file + a dataset split -> metrics, plots, Grad-CAM grid, HTML report.

Everything the model needs comes from its own file: the transforms are rebuilt from its stored
preprocessing, probabilities use its stored temperature and decisions its stored threshold,
which was chosen on the patient-level validation split during training. Evaluation never
changes any of them; it only measures.

Outputs in the output folder (default `<model file folder>/eval_<split>`): metrics.json,
metrics.md, predictions.csv, confusion_matrix.png, roc.png, pr.png, reliability.png,
score_histograms.png, learning_curves.png (when the run's metrics.csv sits next to the model
file), gradcam_batch.png, explain_check.json and report.html.

A model file is refused (`ModelFileError`) before any image is read when its preprocessing
cannot match the data: see `pneumonia_cxr.predict.check_model_contract` for the exact rules.
"""

from __future__ import annotations

import csv
import html
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from pneumonia_cxr import CLASS_NAMES, __version__
from pneumonia_cxr.data.dataset import XrayDataset, collate_skipping_bad
from pneumonia_cxr.data.discovery import DATA_ENV_VAR, ImageRecord, list_images, resolve_dataset
from pneumonia_cxr.data.fingerprint import records_fingerprint
from pneumonia_cxr.data.loader import load_xray
from pneumonia_cxr.data.transforms import build_transforms
from pneumonia_cxr.errors import EvaluationInputError
from pneumonia_cxr.evaluation import plots
from pneumonia_cxr.evaluation.calibration import expected_calibration_error
from pneumonia_cxr.evaluation.metrics import ECE_BINS, evaluate_predictions
from pneumonia_cxr.evaluation.report import metrics_markdown, write_html_report
from pneumonia_cxr.explain.check import EXPLAIN_CHECK_FILE, run_explain_check, write_explain_check
from pneumonia_cxr.explain.gradcam import cam_class, compute_cams
from pneumonia_cxr.explain.overlay import CamExample, pick_examples, save_gradcam_grid
from pneumonia_cxr.model.model_file import ModelBundle, load_model
from pneumonia_cxr.predict import check_model_contract
from pneumonia_cxr.training.run import METRICS_FILE, SPLIT_FILE, predict_logits

log = logging.getLogger(__name__)

METRICS_JSON, METRICS_MD, PREDICTIONS_CSV = "metrics.json", "metrics.md", "predictions.csv"
REPORT_HTML, GRADCAM_GRID = "report.html", "gradcam_batch.png"
PLOT_FILES: dict[str, str] = {
    "Confusion matrix at the stored threshold": "confusion_matrix.png",
    "ROC curve": "roc.png",
    "Precision-recall curve": "pr.png",
    "Reliability diagram": "reliability.png",
    "Score histograms": "score_histograms.png",
    "Learning curves (training run)": "learning_curves.png",
    "Grad-CAM: true/false positives/negatives": GRADCAM_GRID,
}
GRADCAM_PER_GROUP = 2
EXPLAIN_IMAGES_IN_EVALUATE = 8
"""Images per sanity check inside `evaluate`: a cheap figure; `explain-check` runs more."""


@dataclass
class EvaluationResult:
    """Where an evaluation wrote its files, and its metrics.json body."""

    output_dir: Path
    metrics: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def report(self) -> Path:
        return self.files["report"]

    @property
    def gradcam_grid(self) -> Path | None:
        return self.files.get("gradcam")


def dataset_for_model(dataset_path: str | Path | None, bundle: ModelBundle) -> Path:
    """The dataset to evaluate on: --dataset_path, then $PNEUMONIA_CXR_DATA, then the dataset
    the model was trained on (when it is still on disk), then the cache or a download.

    The model's own dataset comes after the environment variable so that CI and users keep one
    switch, and before the download so a model trained on the synthetic demo set is evaluated
    on that set's test split without extra flags.
    """
    if dataset_path is None and not os.environ.get(DATA_ENV_VAR):
        trained_on = (bundle.config.get("data") or {}).get("dataset_path")
        if trained_on and Path(trained_on).is_dir():
            return resolve_dataset(trained_on)
    return resolve_dataset(dataset_path)


def _loader(records: list[ImageRecord], bundle: ModelBundle, batch_size: int, workers: int):
    dataset = XrayDataset(
        [r.path for r in records],
        [r.label for r in records],
        build_transforms(bundle.preprocessing),
        min_side=bundle.preprocessing.image_size,
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_skipping_bad,
    )


def _predict(
    bundle: ModelBundle, records: list[ImageRecord], batch_size: int, workers: int
) -> tuple[np.ndarray, np.ndarray, list[ImageRecord], list[ImageRecord]]:
    """Logits, labels, evaluated records (file order) and skipped (unreadable) records."""
    model = bundle.model.cpu().to(memory_format=torch.channels_last)
    logits, labels, skipped = predict_logits(model, _loader(records, bundle, batch_size, workers))
    skipped_set = set(skipped)
    kept = [r for i, r in enumerate(records) if i not in skipped_set]
    return logits, labels, kept, [records[i] for i in sorted(skipped_set)]


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


def _metrics(
    bundle: ModelBundle, logits: np.ndarray, labels: np.ndarray, n_resamples: int, seed: int
) -> tuple[dict[str, Any], np.ndarray]:
    """evaluate_predictions at the stored threshold; its ValueErrors become one clear error."""
    if labels.size == 0:
        raise EvaluationInputError("no image of the split could be read: nothing to evaluate")
    probs = bundle.probabilities(torch.from_numpy(logits)).numpy().astype(np.float64)
    try:
        metrics = evaluate_predictions(
            labels, probs, bundle.threshold, bundle.threshold_rule, n_resamples, seed
        )
    except ValueError as error:
        raise EvaluationInputError(str(error)) from error
    return metrics, probs


def _write_plots(
    out: Path,
    metrics: dict[str, Any],
    labels: np.ndarray,
    probs: np.ndarray,
    raw_probs: np.ndarray | None,
    threshold: float,
    run_metrics_csv: Path,
) -> dict[str, Path]:
    written = {
        "confusion_matrix.png": plots.plot_confusion_matrix(
            metrics["at_threshold"]["confusion"],
            out / "confusion_matrix.png",
            title=f"Confusion matrix at threshold {threshold:.3f}",
        ),
        "roc.png": plots.plot_roc(labels, probs, threshold, out / "roc.png"),
        "pr.png": plots.plot_pr(labels, probs, threshold, out / "pr.png"),
        "reliability.png": plots.plot_reliability(
            labels, probs, out / "reliability.png", y_prob_uncalibrated=raw_probs
        ),
        "score_histograms.png": plots.plot_score_histograms(
            labels, probs, threshold, out / "score_histograms.png"
        ),
    }
    if run_metrics_csv.is_file():
        try:
            written["learning_curves.png"] = plots.plot_learning_curves(
                run_metrics_csv, out / "learning_curves.png"
            )
        except ValueError as error:  # an empty CSV of a run stopped before its first epoch
            log.warning("no learning curves: %s", error)
    return written


def _gradcam_grid(
    bundle: ModelBundle,
    records: list[ImageRecord],
    labels: np.ndarray,
    probs: np.ndarray,
    path: Path,
    method: str,
    seed: int,
) -> Path:
    """TP/FP/TN/FN examples, maps on the model input, overlays on the original loaded image."""
    picked = pick_examples(labels, probs, bundle.threshold, per_group=GRADCAM_PER_GROUP, seed=seed)
    indices = [i for group in ("TP", "FP", "TN", "FN") for i in picked[group]]
    transform = build_transforms(bundle.preprocessing)
    originals = [load_xray(records[i].path) for i in indices]
    # Same layout as the model (channels_last since _predict): mixed layouts are ~3x slower.
    inputs = torch.stack([transform(gray) for gray in originals])
    inputs = inputs.contiguous(memory_format=torch.channels_last)
    model = bundle.model
    cams = compute_cams(model, model.cam_target_layer, inputs, method=method)
    examples = [
        CamExample(
            image=gray.numpy(),
            cam=cam,
            label=int(labels[i]),
            probability=float(probs[i]),
            threshold=bundle.threshold,
            title=records[i].path.name,
        )
        for i, gray, cam in zip(indices, originals, cams, strict=True)
    ]
    return save_gradcam_grid(
        examples, path, ncols=4, title=f"{method} of the PNEUMONIA logit (most confident per group)"
    )


def _write_predictions(
    path: Path, records: list[ImageRecord], probs: np.ndarray, threshold: float
) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "label", "probability", "predicted"])
        for record, probability in zip(records, probs, strict=True):
            predicted = CLASS_NAMES[int(probability >= threshold)]
            writer.writerow([record.path, record.class_name, f"{probability:.6f}", predicted])
    return path


def _class_counts(records: list[ImageRecord]) -> dict[str, int]:
    return {name: sum(1 for r in records if r.label == i) for i, name in enumerate(CLASS_NAMES)}


def _data_counts(
    split: str, records: list[ImageRecord], skipped: list[ImageRecord], run_dir: Path
) -> dict[str, dict[str, int]]:
    """Images per class: the run's train/val subsets (from its split.csv) and this split."""
    counts: dict[str, dict[str, int]] = {}
    split_csv = run_dir / SPLIT_FILE
    if split_csv.is_file():
        from pneumonia_cxr.data.split import read_split_csv

        try:
            patient_split = read_split_csv(split_csv)
            counts["train (patient-level subset)"] = _class_counts(patient_split.train)
            counts["validation (patient-level subset)"] = _class_counts(patient_split.val)
        except (ValueError, KeyError) as error:
            log.warning("cannot read %s for the report: %s", split_csv, error)
    counts[f"{split} (evaluated)"] = {**_class_counts(records), "unreadable, skipped": len(skipped)}
    return counts


def _protocol(bundle: ModelBundle, split: str, metrics: dict[str, Any]) -> dict[str, str]:
    data = bundle.config.get("data") or {}
    train = bundle.config.get("train") or {}
    rule = bundle.threshold_rule
    if rule == "max_specificity_at_sensitivity":
        min_sens = bundle.extra.get("min_sensitivity", train.get("min_sensitivity"))
        rule = f"{rule} (highest specificity with sensitivity >= {min_sens})"
    val_fraction = data.get("val_fraction")
    share = f"{val_fraction:.0%} of each class" if isinstance(val_fraction, float) else "a share"
    protocol = {
        "Validation split": (
            f"patient-level: {share} of the official train + val images, whole patients only, "
            f"seed {train.get('seed', '?')}; no child appears in both training and validation."
        ),
        "Model selection": (
            f"best checkpoint by {train.get('monitor', 'val_auc')} on the validation split "
            "(early stopping on the same figure)."
        ),
        "Threshold": (
            f"{bundle.threshold:.4f}, rule {rule}, chosen on the validation split at the end "
            "of training and stored in the model file; this evaluation does not change it."
        ),
        "Calibration": (
            f"temperature {bundle.temperature:.4f} fitted on the validation split"
            if bundle.temperature != 1.0
            else "none (temperature 1)"
        ),
        "Test split": (
            "the official test split, untouched until this evaluation: no checkpoint, "
            "threshold or calibration choice used it."
            if split == "test"
            else f"WARNING: this evaluates the {split!r} split, which training used; its "
            "numbers are optimistic and are not a test result."
        ),
        "Statistics": (
            f"{metrics['bootstrap']['confidence']:.0%} stratified percentile bootstrap, "
            f"{metrics['bootstrap']['n_resamples']} resamples, seed {metrics['bootstrap']['seed']}."
        ),
        "Fingerprints": (
            f"model {metrics['model_fingerprint']}, evaluated data {metrics['data_fingerprint']}, "
            f"training data {bundle.data_fingerprint or 'unknown'}."
        ),
    }
    return protocol


def _flat_warning(n_flat: int, n: int) -> str:
    """Say when flat maps (no peak, no rank order) make a figure uninformative."""
    if not n_flat:
        return ""
    return (
        f" {n_flat} of {n} pairs had a flat map, counted as 0: the figure rests on "
        f"{n - n_flat} image(s)."
    )


def _explain_section(result: dict[str, Any]) -> str:
    """HTML of the two sanity figures (escaped; no external resources)."""
    rand = result.get("randomization") or {}
    rows = []
    spearman = rand.get("mean_spearman")
    if spearman is not None:
        rows.append(
            (
                "Randomization test: mean Spearman correlation, original vs randomized maps",
                f"{spearman:.3f} over {rand.get('n_images')} PNEUMONIA images "
                f"({len(rand.get('randomized_layers', []))} modules re-initialized: the head and "
                f"the top {rand.get('top_backbone_layers')} backbone layers). Lower is better: "
                "near 1 means the maps do not depend on the learned weights."
                + _flat_warning(rand.get("n_constant", 0), rand.get("n_images", 0)),
            )
        )
    game = result.get("pointing_game")
    if game and game.get("accuracy") is not None:
        rows.append(
            (
                "Pointing game: map peak inside the opacity box",
                f"{game['hits']}/{game['n']} = {game['accuracy']:.1%} of PNEUMONIA images "
                f"(a random peak: {game['chance']:.1%}; flat maps: {game['n_flat']}).",
            )
        )
    elif result.get("pointing_game_note"):
        rows.append(("Pointing game", f"not run: {result['pointing_game_note']}."))
    body = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(text)}</td></tr>" for name, text in rows
    )
    method = html.escape(str(result.get("method", "")))
    return (
        f"<p>Sanity checks of the {method} heatmaps (Adebayo et al. 2018; Zhang et al. 2016) "
        f"on the {html.escape(str(result.get('split', '')))} split.</p>"
        f"<table><tbody>{body}</tbody></table>"
    )


def _explain(
    bundle: ModelBundle,
    root: Path,
    split: str,
    records: list[ImageRecord],
    method: str,
    seed: int,
    n_images: int,
) -> dict[str, Any] | None:
    if n_images < 1:
        return None
    return run_explain_check(
        bundle, root, split=split, n_images=n_images, method=method, seed=seed, records=records
    )


def _write_texts(out: Path, metrics: dict[str, Any], model_name: str) -> dict[str, Path]:
    """metrics.json (strict JSON: undefined values are null) and the Markdown tables."""
    json_path, md_path = out / METRICS_JSON, out / METRICS_MD
    json_path.write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    title = f"# Evaluation of {model_name} on the {metrics['split']} split\n\n"
    md_path.write_text(title + metrics_markdown(metrics), encoding="utf-8")
    return {"metrics": json_path, "markdown": md_path}


def _write_report(
    out: Path,
    metrics: dict[str, Any],
    files: dict[str, Path],
    bundle: ModelBundle,
    explain: dict[str, Any] | None,
    data_counts: dict[str, dict[str, int]],
) -> Path:
    """The self-contained HTML report, with every figure written so far, in PLOT_FILES order."""
    by_name = {path.name: path for path in files.values()}
    plots_in_order = {
        caption: by_name[name] for caption, name in PLOT_FILES.items() if name in by_name
    }
    split = metrics["split"]
    return write_html_report(
        out / REPORT_HTML,
        title=f"Pneumonia classifier: evaluation on the {split} split",
        metrics=metrics,
        plots=plots_in_order,
        data_counts=data_counts,
        protocol=_protocol(bundle, split, metrics),
        extra_sections=(
            {"Explanation sanity checks": _explain_section(explain)} if explain else None
        ),
    )


def evaluate_model(
    model_path: str | Path,
    dataset_path: str | Path | None = None,
    *,
    split: str = "test",
    output_dir: str | Path | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    n_resamples: int = 2000,
    seed: int = 0,
    gradcam_method: str = "gradcam",
    explain_images: int = EXPLAIN_IMAGES_IN_EVALUATE,
) -> EvaluationResult:
    """Evaluate a model file on one split of a dataset and write every output file.

    Args:
        model_path: A final_pneumonia_model.pt.
        dataset_path: Dataset folder; default see `dataset_for_model`.
        split: "test" for a result; "train"/"val" are allowed and flagged in the report.
        output_dir: Default `<model file folder>/eval_<split>`.
        batch_size, num_workers: Inference batches and decoding processes.
        n_resamples, seed: Bootstrap of the confidence intervals.
        gradcam_method: CAM method of the grid and the sanity checks.
        explain_images: Images per sanity check (0 skips the checks).

    Raises:
        ModelFileError: unreadable model file, or preprocessing that does not match the data
            (see `check_model_contract`).
        EvaluationInputError: the readable images cannot give the statistics (one class absent).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    cam_class(gradcam_method)  # an unknown method fails now, not after the inference
    model_path = Path(model_path)
    bundle = load_model(model_path)
    check_model_contract(bundle, model_path)
    root = dataset_for_model(dataset_path, bundle)
    records = list_images(root, [split])
    out = Path(output_dir) if output_dir is not None else model_path.parent / f"eval_{split}"
    out.mkdir(parents=True, exist_ok=True)

    logits, labels, evaluated, skipped = _predict(bundle, records, batch_size, num_workers)
    metrics, probs = _metrics(bundle, logits, labels, n_resamples, seed)
    metrics.update(
        model_fingerprint=bundle.fingerprint(),
        data_fingerprint=records_fingerprint(evaluated, split),
        split=split,
        dataset=str(root),
        model_path=str(model_path),
        temperature=float(bundle.temperature),
        skipped_files=len(skipped),
        skipped_paths=[str(r.path) for r in skipped],
        gradcam_method=gradcam_method,
        package_version=__version__,
    )
    raw_probs = None
    if bundle.temperature != 1.0:
        raw_probs = _sigmoid(logits.astype(np.float64))
        metrics["calibration"] = {
            "ece_before": expected_calibration_error(labels, raw_probs, n_bins=ECE_BINS),
            "ece_after": metrics["ece"],
        }

    files: dict[str, Path] = {}
    files.update(
        _write_plots(
            out,
            metrics,
            labels,
            probs,
            raw_probs,
            bundle.threshold,
            model_path.parent / METRICS_FILE,
        )
    )
    files["gradcam"] = _gradcam_grid(
        bundle, evaluated, labels, probs, out / GRADCAM_GRID, gradcam_method, seed
    )
    files["predictions"] = _write_predictions(
        out / PREDICTIONS_CSV, evaluated, probs, bundle.threshold
    )
    explain = _explain(bundle, root, split, evaluated, gradcam_method, seed, explain_images)
    if explain is not None:
        files["explain_check"] = write_explain_check(explain, out)
        metrics["explain_check"] = {
            "file": EXPLAIN_CHECK_FILE,
            "mean_spearman": (explain["randomization"] or {}).get("mean_spearman"),
            "pointing_game_accuracy": (explain["pointing_game"] or {}).get("accuracy"),
        }

    files.update(_write_texts(out, metrics, model_path.name))
    files["report"] = _write_report(
        out,
        metrics,
        files,
        bundle,
        explain,
        _data_counts(split, evaluated, skipped, model_path.parent),
    )
    return EvaluationResult(output_dir=out, metrics=metrics, files=files)


def headline(metrics: dict[str, Any]) -> str:
    """One terminal line: AUC, sensitivity and specificity at the stored threshold, with CIs."""

    def fmt(entry: dict[str, Any], percent: bool) -> str:
        value, low, high = entry.get("value"), entry.get("ci_low"), entry.get("ci_high")
        if value is None:
            return "n/a"
        scale, unit = (100.0, "%") if percent else (1.0, "")
        digits = 1 if percent else 3
        text = f"{scale * value:.{digits}f}{unit}"
        if low is not None and high is not None:
            text += f" [{scale * low:.{digits}f}, {scale * high:.{digits}f}]"
        return text

    at = metrics["at_threshold"]
    confidence = metrics.get("bootstrap", {}).get("confidence", 0.95)
    return (
        f"n={metrics['n']}  ROC AUC {fmt(metrics['roc_auc'], False)}  "
        f"at threshold {metrics['threshold']:.3f}: sensitivity {fmt(at['sensitivity'], True)}, "
        f"specificity {fmt(at['specificity'], True)}  ({confidence:.0%} CI)"
    )
