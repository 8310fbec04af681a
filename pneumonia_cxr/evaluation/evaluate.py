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
cannot match the data: see `pneumonia_cxr.inference.contract` for the exact rules.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia_cxr import CLASS_NAMES, TYPE_NAMES, __version__
from pneumonia_cxr.data.discovery import ImageRecord, list_images, resolve_dataset_for_model
from pneumonia_cxr.data.fingerprint import records_fingerprint
from pneumonia_cxr.data.pneumonia_types import read_labels_csv, type_labels
from pneumonia_cxr.data.site import is_flat_site, list_site_images
from pneumonia_cxr.errors import EvaluationInputError
from pneumonia_cxr.evaluation import plots
from pneumonia_cxr.evaluation.audit import run_audit
from pneumonia_cxr.evaluation.calibration import expected_calibration_error
from pneumonia_cxr.evaluation.metrics import (
    ECE_BINS,
    BinaryMetrics,
    Estimate,
    evaluate_predictions,
    subgroup_sensitivity,
)
from pneumonia_cxr.evaluation.report import (
    audit_section_html,
    explain_section_html,
    metrics_markdown,
    protocol_text,
    write_html_report,
)
from pneumonia_cxr.evaluation.type_metrics import type_metrics
from pneumonia_cxr.explain import EXPLAIN_IMAGES_IN_EVALUATE
from pneumonia_cxr.explain.check import EXPLAIN_CHECK_FILE, run_explain_check, write_explain_check
from pneumonia_cxr.explain.gradcam import cam_class, predictor_cams
from pneumonia_cxr.explain.overlay import CamExample, pick_examples, save_gradcam_grid
from pneumonia_cxr.inference.predictor import Predictor, Scores
from pneumonia_cxr.model.decision import probability
from pneumonia_cxr.model.model_file import ModelBundle
from pneumonia_cxr.model.outputs import TYPE, column_formats, format_value, table_columns
from pneumonia_cxr.model.shipped import is_shipped_model, resolve_model_path
from pneumonia_cxr.run_folder import METRICS_FILE, SPLIT_FILE
from pneumonia_cxr.storage import atomic_write_text

log = logging.getLogger(__name__)

METRICS_JSON, METRICS_MD, PREDICTIONS_CSV = "metrics.json", "metrics.md", "predictions.csv"
REPORT_HTML, GRADCAM_GRID = "report.html", "gradcam_batch.png"
AUDIT_FIGURE = "shortcut_audit.png"
TYPE_ROC = "roc_type.png"
"""Written only for a model with a pneumonia type head."""
PLOT_FILES: dict[str, str] = {
    "Confusion matrix at the stored threshold": "confusion_matrix.png",
    "ROC curve": "roc.png",
    "ROC curve of the pneumonia type (VIRAL vs BACTERIAL, true pneumonia images)": TYPE_ROC,
    "Precision-recall curve": "pr.png",
    "Reliability diagram": "reliability.png",
    "Score histograms": "score_histograms.png",
    "Learning curves (training run)": "learning_curves.png",
    "Grad-CAM: true/false positives/negatives": GRADCAM_GRID,
}
GRADCAM_PER_GROUP = 2


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

    @property
    def summary(self) -> EvaluationSummary:
        """The headline figures as typed records (the `metrics` dict is metrics.json's body)."""
        kind = self.metrics.get("pneumonia_type")
        audit = self.metrics.get("audit")
        frame = ((audit or {}).get("views") or {}).get("frame_only")
        return EvaluationSummary(
            pneumonia=BinaryMetrics.from_dict(self.metrics),
            pneumonia_type=(
                BinaryMetrics.from_dict(kind["viral_vs_bacterial"])
                if kind and kind.get("viral_vs_bacterial")
                else None  # no type head, or the images do not carry both types
            ),
            type_right_among_true_positives=(
                Estimate.from_dict(kind["accuracy_among_true_positives"])
                if kind and kind.get("accuracy_among_true_positives")
                else None
            ),
            n_flagged=(self.metrics.get("ood") or {}).get("n_flagged"),
            frame_only_auc=Estimate.from_dict(frame["roc_auc"]) if frame else None,
        )


@dataclass(frozen=True)
class EvaluationSummary:
    """What an evaluation found, typed: the pneumonia question, the type question (VIRAL is
    the positive class; None for a model without a type head), the applicability flags and
    the shortcut audit's frame-only AUC (None without `audit`)."""

    pneumonia: BinaryMetrics
    pneumonia_type: BinaryMetrics | None
    type_right_among_true_positives: Estimate | None
    n_flagged: int | None
    frame_only_auc: Estimate | None


def _predict(
    predictor: Predictor, records: list[ImageRecord], batch_size: int, workers: int
) -> tuple[Scores, np.ndarray, list[ImageRecord], list[ImageRecord]]:
    """Scores and labels of the readable records (file order), and the unreadable records."""
    result = predictor.score_records(records, batch_size=batch_size, num_workers=workers)
    for index, message in sorted(result.errors.items()):
        warnings.warn(f"skipping unreadable image {records[index].path}: {message}", stacklevel=2)
    return result.scores, result.labels, result.kept, [records[i] for i in sorted(result.errors)]


def _metrics(
    bundle: ModelBundle, probs: np.ndarray, labels: np.ndarray, n_resamples: int, seed: int
) -> dict[str, Any]:
    """evaluate_predictions at the stored threshold; its ValueErrors become one clear error."""
    if labels.size == 0:
        raise EvaluationInputError("no image of the split could be read: nothing to evaluate")
    try:
        return evaluate_predictions(
            labels, probs, bundle.threshold, bundle.threshold_rule, n_resamples, seed
        )
    except ValueError as error:
        raise EvaluationInputError(str(error)) from error


def _ood_summary(bundle: ModelBundle, scores: Scores) -> dict[str, Any] | None:
    """How many evaluated images the model calls out of distribution (None without stats)."""
    if bundle.ood is None:
        return None
    flagged = int(scores.ood_flags.sum())
    return {
        "cutoff": bundle.ood.cutoff,
        "cutoff_quantile_of_validation": bundle.ood.quantile,
        "n_flagged": flagged,
        "share_flagged": flagged / max(len(scores.ood_flags), 1),
        "median_score": float(np.median(scores.ood_scores)) if len(scores.ood_scores) else None,
    }


def _reason_counts(predictor: Predictor, scores: Scores) -> dict[str, int]:
    """How many evaluated images each applicability reason flags (an image may have several).
    Labelled split files carry no DICOM header or colour facts, so these are the feature checks;
    the counts name the check, not the score that tripped it."""
    counts: dict[str, int] = {}
    for position in range(len(scores.probabilities)):
        for refusal in predictor.refusals(scores, position, None):
            keys = [refusal.words]
            if refusal.kind == "features":
                keys = [
                    f"{refusal.words} ({name})"
                    for name in ("guard score", "OOD score")
                    if name in refusal.detail
                ]
            for key in keys:
                counts[key] = counts.get(key, 0) + 1
    return counts


def _write_plots(
    out: Path,
    metrics: dict[str, Any],
    labels: np.ndarray,
    probs: np.ndarray,
    raw_probs: np.ndarray | None,
    threshold: float,
    run_metrics_csv: Path,
    types: list[int] | None = None,
    type_probabilities: np.ndarray | None = None,
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
    vs = metrics.get("pneumonia_type", {}).get("viral_vs_bacterial")
    if vs is not None and types is not None and type_probabilities is not None:
        known = (labels == 1) & (np.asarray(types) >= 0)
        written[TYPE_ROC] = plots.plot_roc(
            np.asarray(types)[known],
            type_probabilities[known],
            metrics["pneumonia_type"]["threshold"],
            out / TYPE_ROC,
            title="ROC of the type: VIRAL vs BACTERIAL",
        )
    if run_metrics_csv.is_file():
        try:
            written["learning_curves.png"] = plots.plot_learning_curves(
                run_metrics_csv, out / "learning_curves.png"
            )
        except ValueError as error:  # an empty CSV of a run stopped before its first epoch
            log.warning("no learning curves: %s", error)
    return written


def _gradcam_grid(
    predictor: Predictor,
    records: list[ImageRecord],
    labels: np.ndarray,
    probs: np.ndarray,
    path: Path,
    method: str,
    seed: int,
) -> Path:
    """TP/FP/TN/FN examples, maps on the model input, overlays on the original loaded image."""
    bundle = predictor.bundle
    picked = pick_examples(labels, probs, bundle.threshold, per_group=GRADCAM_PER_GROUP, seed=seed)
    indices = [i for group in ("TP", "FP", "TN", "FN") for i in picked[group]]
    loaded = [predictor.load_input(records[i].path, keep_original=True) for i in indices]
    originals = [gray for _, gray in loaded]
    cams = predictor_cams(predictor, np.stack([image for image, _ in loaded]), method=method)
    examples = [
        CamExample(
            image=gray,
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
    path: Path,
    records: list[ImageRecord],
    scores: Scores,
    predictor: Predictor,
    types: list[int] | None = None,
) -> Path:
    """One row per evaluated image: its true class (and type), the class the metrics count it
    as (every image, not assessed ones included: the figures are the network's), then the
    columns `predict` writes for it (`model.outputs`: no label where not assessed); the feature
    checks only, as the split's files are read without their colour and DICOM-header facts."""
    outputs = predictor.outputs
    columns = table_columns(outputs)[1:-1]  # less path and error: every row here was read
    formats = column_formats(outputs)
    typed = types is not None
    truth = ["true_class", *(["true_type"] if typed else []), "counted_as"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", *truth, *columns])
    results = predictor.results(scores)
    for position, (record, result) in enumerate(zip(records, results, strict=True)):
        counted = predictor.label(int(scores.decisions[position]))
        kind = [TYPE_NAMES[types[position]] if types[position] >= 0 else ""] if typed else []
        values = result.values(outputs)
        cells = [format_value(c, values.get(c), formats) for c in columns]
        writer.writerow([record.path, record.class_name, *kind, counted, *cells])
    return atomic_write_text(path, buffer.getvalue())


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
    atomic_write_text(json_path, json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    title = f"# Evaluation of {model_name} on the {metrics['split']} split\n\n"
    atomic_write_text(md_path, title + metrics_markdown(metrics))
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
    sections = {}
    if explain:
        sections["Explanation sanity checks"] = explain_section_html(explain)
    if "audit" in metrics:
        sections["Shortcut audit"] = audit_section_html(metrics["audit"], files.get("audit"))
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
        protocol=protocol_text(bundle, split, metrics),
        extra_sections=sections or None,
    )


def evaluate_model(
    model_path: str | Path | None = None,
    dataset_path: str | Path | None = None,
    *,
    split: str = "test",
    device: str | None = None,
    output_dir: str | Path | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    n_resamples: int = 2000,
    seed: int = 0,
    gradcam_method: str = "gradcam",
    explain_images: int = EXPLAIN_IMAGES_IN_EVALUATE,
    audit: bool = False,
) -> EvaluationResult:
    """Evaluate a model file on one split of a dataset and write every output file.

    Args:
        model_path: A final_pneumonia_model.pt; default the model shipped with the package.
        dataset_path: Dataset folder; default see `resolve_dataset_for_model`.
        device: Where the model runs; default `resolve_device` (the GPU when there is one).
        split: "test" for a result; "train"/"val" are allowed and flagged in the report.
        output_dir: Default `<model file folder>/eval_<split>`.
        batch_size, num_workers: Inference batches and decoding processes.
        n_resamples, seed: Bootstrap of the confidence intervals.
        gradcam_method: CAM method of the grid and the sanity checks.
        explain_images: Images per sanity check (0 skips the checks).
        audit: Add the shortcut audit (`evaluation.audit`): frame-only, lung-region-only and
            frame-neutralised views, Grad-CAM energy in the frame.

    Raises:
        ModelFileError: unreadable model file, or preprocessing that does not match the data
            (see `inference.contract.check_model_contract`).
        EvaluationInputError: the readable images cannot give the statistics (one class absent).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    cam_class(gradcam_method)  # an unknown method fails now, not after the inference
    model_path = resolve_model_path(model_path)
    run_dir = model_path.resolve().parent  # outputs/final_pneumonia_model.pt links into a run
    predictor = Predictor.open(model_path, engine="torch", device=device)
    bundle = predictor.bundle
    if dataset_path is not None and is_flat_site(dataset_path):
        root, records = Path(dataset_path), list_site_images(dataset_path)  # a site's own folder
    else:
        root = resolve_dataset_for_model(dataset_path, bundle.config)
        records = list_images(root, [split])
    out = Path(output_dir) if output_dir is not None else _default_output_dir(model_path, split)
    out.mkdir(parents=True, exist_ok=True)

    scores, labels, evaluated, skipped = _predict(predictor, records, batch_size, num_workers)
    probs = scores.probabilities
    metrics = _metrics(bundle, probs, labels, n_resamples, seed)
    subgroups = subgroup_sensitivity(evaluated, labels, scores.decisions)
    if subgroups:
        metrics["subgroups"] = subgroups
    ood = _ood_summary(bundle, scores)
    if ood is not None:
        metrics["ood"] = ood
    reasons = _reason_counts(predictor, scores)
    if reasons:
        metrics["flagged_by_reason"] = reasons
    types = None
    if scores.answers.get(TYPE.name) is not None and bundle.type_decision is not None:
        types = type_labels(evaluated, read_labels_csv(root))
        metrics["pneumonia_type"] = type_metrics(
            labels,
            types,
            scores.decisions,
            scores.answers.get(TYPE.name),
            bundle.type_decision,
            n_resamples,
            seed,
        )
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
        model_calibration=bundle.extra.get("calibration"),
    )
    raw_probs = None
    if bundle.temperature != 1.0:
        raw_probs = probability(scores.logits)
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
            run_dir / METRICS_FILE,
            types,
            scores.answers.get(TYPE.name),
        )
    )
    files["gradcam"] = _gradcam_grid(
        predictor, evaluated, labels, probs, out / GRADCAM_GRID, gradcam_method, seed
    )
    if audit:
        metrics["audit"] = run_audit(
            predictor, evaluated, batch_size=batch_size, n_resamples=n_resamples, seed=seed
        )
        files["audit"] = plots.plot_audit(
            metrics["roc_auc"], metrics["audit"]["views"], out / AUDIT_FIGURE
        )
    files["predictions"] = _write_predictions(
        out / PREDICTIONS_CSV, evaluated, scores, predictor, types
    )
    explain = _explain(bundle, root, split, evaluated, gradcam_method, seed, explain_images)
    if explain is not None:
        files["explain_check"] = write_explain_check(explain, out)
        metrics["explain_check"] = {
            "file": EXPLAIN_CHECK_FILE,
            "mean_spearman": (explain["randomization"] or {}).get("mean_spearman"),
            "pointing_game_accuracy": (explain["pointing_game"] or {}).get("accuracy"),
            "pointing_game_accuracy_fine": (
                (explain["pointing_game"] or {}).get("fine_layer") or {}
            ).get("accuracy"),
        }

    files.update(_write_texts(out, metrics, model_path.name))
    files["report"] = _write_report(
        out,
        metrics,
        files,
        bundle,
        explain,
        _data_counts(split, evaluated, skipped, run_dir),
    )
    return EvaluationResult(output_dir=out, metrics=metrics, files=files)


def _default_output_dir(model_path: Path, split: str) -> Path:
    """Beside the model file; for the shipped model (inside the package) under ./outputs."""
    if is_shipped_model(model_path):
        return Path("outputs") / f"shipped_model_eval_{split}"
    return model_path.resolve().parent / f"eval_{split}"
