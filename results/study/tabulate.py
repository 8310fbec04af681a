"""Tabulate the study: every candidate's validation and test figures, from the files the
pre-registered commands wrote. Run: `.venv/bin/python results/study/tabulate.py`.

Validation = the patient-level validation subset of official train + val (split.csv of c1,
shared by every candidate), scored here through the inference path at each model's stored
threshold (cached in outputs/study_eval/<id>/patient_val/metrics.json); test = the
`pneumonia-cxr evaluate --split test` outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

RUNS, EVALS = Path("outputs/study"), Path("outputs/study_eval")
RATES = ("accuracy", "sensitivity", "specificity", "precision", "f1")


def _ci(entry: dict, percent: bool) -> str:
    scale, digits = (100, 1) if percent else (1, 4)
    value = entry.get("value")
    if value is None:
        return "n/a"
    low, high = entry.get("ci_low"), entry.get("ci_high")
    text = f"{scale * value:.{digits}f}"
    return text + (f" [{scale * low:.{digits}f}, {scale * high:.{digits}f}]" if low else "")


def _row(name: str, metrics: dict) -> str:
    at = metrics["at_threshold"]
    cells = [_ci(metrics["roc_auc"], False), *(_ci(at[r], True) for r in RATES)]
    confusion = at["confusion"]
    counts = f"{confusion['tp']}/{confusion['fn']}/{confusion['tn']}/{confusion['fp']}"
    return f"| {name} | {metrics['threshold']:.4f} | " + " | ".join(cells) + f" | {counts} |"


MODELS = {
    "ensemble_c1_c5": Path("pneumonia_cxr/weights/pneumonia_cxr_effnet_lite0_ensemble.pt"),
}


def _patient_val(name: str, model_path: Path) -> None:
    """Metrics on the patient-level validation subset (the threshold was chosen there)."""
    target = EVALS / name / "patient_val" / "metrics.json"
    if target.is_file():
        return

    from pneumonia_cxr.data.split import read_split_csv
    from pneumonia_cxr.evaluation.metrics import evaluate_predictions
    from pneumonia_cxr.inference.predictor import Predictor

    val = read_split_csv(RUNS / "c1_short_s1" / "split.csv").val
    predictor = Predictor.open(model_path, device="cpu")
    result = predictor.score_records(val)
    engine = predictor.engine
    metrics = evaluate_predictions(
        result.labels,
        result.scores.probabilities,
        engine.threshold,
        engine.threshold_rule,
        1000,
        0,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(metrics, indent=2) + "\n")


def main() -> None:
    for run in sorted(p for p in RUNS.iterdir() if p.is_dir()):
        if (run / "final_pneumonia_model.pt").is_file():
            _patient_val(run.name, run / "final_pneumonia_model.pt")
    for name, path in MODELS.items():
        _patient_val(name, path)
    header = (
        "| model | threshold | ROC AUC [95% CI] | accuracy % | sensitivity % | specificity % "
        "| precision % | F1 % | TP/FN/TN/FP |\n| --- |" + " --- |" * 8
    )
    training = [
        "| candidate | best val AUC (monitor) | epochs (stage 1 + 2) | wall time |",
        "| --- | --- | --- | --- |",
    ]
    for run in sorted(p for p in RUNS.iterdir() if p.is_dir()):
        summary_path = run / "run_summary.json"
        if not summary_path.is_file():
            training.append(f"| {run.name} | not finished | | |")
            continue
        with (run / "metrics.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        best = max(float(r["val_auc"]) for r in rows)
        seconds = sum(float(r["seconds"]) for r in rows)
        stages = [sum(r["stage"] == s for r in rows) for s in ("1", "2")]
        training.append(
            f"| {run.name} | {best:.4f} | {stages[0]} + {stages[1]} | "
            f"{seconds / 60:.0f} min (epochs only) |"
        )
    print("\n".join(training) + "\n")
    titles = {
        "patient_val": "Patient-level validation subset (784 images; thresholds were chosen here)",
        "test": "Official test split (624 images)",
    }
    for split in ("patient_val", "test"):
        print(f"{titles[split]}\n\n{header}")
        for folder in sorted(EVALS.iterdir()):
            path = folder / split / "metrics.json"
            if path.is_file():
                print(_row(folder.name, json.loads(path.read_text())))
        print()


if __name__ == "__main__":
    main()
