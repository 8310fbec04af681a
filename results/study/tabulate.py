"""Tabulate the study: every candidate's validation and test figures, from the files the
pre-registered commands wrote. Run: `.venv/bin/python results/study/tabulate.py`."""

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


def main() -> None:
    header = (
        "| model | threshold | ROC AUC [95% CI] | accuracy % | sensitivity % | specificity % "
        "| precision % | F1 % | TP/FN/TN/FP |\n| --- |" + " --- |" * 8
    )
    training = [
        "| candidate | best val AUC (monitor) | epochs (stage 1 + 2) | wall time |",
        "| --- | --- | --- | --- |",
    ]
    for run in sorted(RUNS.iterdir()):
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
    for split in ("val", "test"):
        print(f"{split} split\n\n{header}")
        for folder in sorted(EVALS.iterdir()):
            path = folder / split / "metrics.json"
            if path.is_file():
                print(_row(folder.name, json.loads(path.read_text())))
        print()


if __name__ == "__main__":
    main()
