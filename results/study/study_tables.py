"""Tabulate the study: every candidate's validation and test figures, from the files the
pre-registered commands wrote. Run: `.venv/bin/python results/study/study_tables.py` (study 1) or
`.venv/bin/python results/study/study_tables.py --study 2` (results/study2/PLAN.md) or `--study 3`
or `--study 4` or `--study 5`.

Validation = the patient-level validation subset of official train + val (the split.csv every
candidate of a study shares; studies 1-5 all use split seed 1), scored here through the
inference path at each model's stored threshold (cached in
outputs/study*_eval/<id>/patient_val/metrics.json); test = the
`pneumonia-cxr evaluate --split test` outputs."""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class Study:
    runs: Path  # run folders of the candidates
    evals: Path  # <name>/{patient_val,test}/ evaluation outputs
    model_file: str  # the file of each run that the study evaluates
    extra_models: dict[str, Path]  # ensembles, evaluated like candidates
    split_csv: Path = Path("outputs/study/c1_short_s1/split.csv")  # shared by every candidate


STUDIES = {
    "1": Study(
        Path("outputs/study"),
        Path("outputs/study_eval"),
        "final_pneumonia_model.pt",
        {"ensemble_c1_c5": Path("outputs/study_eval/ensemble_c1_c5.pt")},
    ),
    "2": Study(
        Path("outputs/study2"),
        Path("outputs/study2_eval"),
        "final_fp16.pt",
        {"ensemble_study2": Path("outputs/study2_eval/ensemble_study2.pt")},
    ),
    "3": Study(
        Path("outputs/study3"),
        Path("outputs/study3_eval"),
        "final_fp16.pt",
        {"teacher_study2": Path("outputs/teacher_study2_ensemble.pt")},  # run_study3.sh
        Path("outputs/study3/d0_lite0_s31/split.csv"),
    ),
    "4": Study(
        Path("outputs/study4"),
        Path("outputs/study4_eval"),
        "final_fp16.pt",
        {"d0_lite0_s31": Path("outputs/study3/d0_lite0_s31/final_fp16.pt")},  # the baseline
        Path("outputs/study3/d0_lite0_s31/split.csv"),
    ),
    "5": Study(
        Path("outputs/study5"),
        Path("outputs/study5_eval"),
        "final_fp16.pt",
        # the baseline B: study 3's rule left d0 shipped (late d2 not eligible, its RESULTS.md)
        {"d0_lite0_s31": Path("outputs/study3/d0_lite0_s31/final_fp16.pt")},
        Path("outputs/study3/d0_lite0_s31/split.csv"),
    ),
}


def _patient_val(study: Study, name: str, model_path: Path) -> None:
    """Metrics on the patient-level validation subset (the threshold was chosen there)."""
    target = study.evals / name / "patient_val" / "metrics.json"
    if target.is_file():
        return

    from pneumonia_cxr.data.split import read_split_csv
    from pneumonia_cxr.evaluation.metrics import evaluate_predictions
    from pneumonia_cxr.inference.predictor import Predictor

    val = read_split_csv(study.split_csv).val
    predictor = Predictor.open(model_path, device="cpu")
    result = predictor.score_records(val)
    decision = predictor.decision
    metrics = evaluate_predictions(
        result.labels,
        result.scores.probabilities,
        decision.threshold,
        decision.rule,
        1000,
        0,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(metrics, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--study", choices=sorted(STUDIES), default="1")
    study = STUDIES[parser.parse_args().study]
    runs = sorted(p for p in study.runs.iterdir() if p.is_dir())
    for run in runs:
        if (run / study.model_file).is_file():
            _patient_val(study, run.name, run / study.model_file)
    for name, path in study.extra_models.items():
        if path.is_file():
            _patient_val(study, name, path)
    header = (
        "| model | threshold | ROC AUC [95% CI] | accuracy % | sensitivity % | specificity % "
        "| precision % | F1 % | TP/FN/TN/FP |\n| --- |" + " --- |" * 8
    )
    training = [
        "| candidate | best val AUC (monitor) | epochs (stage 1 + 2) | wall time |",
        "| --- | --- | --- | --- |",
    ]
    for run in runs:
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
            f"{seconds / 60:.{1 if seconds < 600 else 0}f} min (epochs only) |"
        )
    print("\n".join(training) + "\n")
    titles = {
        "patient_val": "Patient-level validation subset (785 images; thresholds were chosen here)",
        "test": "Official test split (624 images)",
    }
    for split in ("patient_val", "test"):
        print(f"{titles[split]}\n\n{header}")
        for folder in sorted(p for p in study.evals.iterdir() if p.is_dir()):
            path = folder / split / "metrics.json"
            if path.is_file():
                print(_row(folder.name, json.loads(path.read_text())))
        print()


if __name__ == "__main__":
    main()
