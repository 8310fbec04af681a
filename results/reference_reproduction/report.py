"""The reproduction's table (issue 37) from the run folders `run.sh` wrote: each run's test
figures with their 95% bootstrap intervals beside the published reference and the shipped
model, the shortcut audit, the guard's flag shares and the wall time per stage.

Run from the project root: `.venv/bin/python results/reference_reproduction/report.py`
(copies each evaluated run's metrics.json here and prints the Markdown table).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

HERE = Path(__file__).parent
RUNS = Path("outputs/reference_reproduction")
PUBLISHED = {
    "accuracy": 0.8830,
    "sensitivity": 0.9359,
    "specificity": 0.7949,
    "precision": 0.8838,
    "f1": 0.9091,
    "roc_auc": 0.9396,
}
SHIPPED = Path("results/kermany_test/metrics.json")
NAMES = {"run1_reference": "run 1: the reference as written", "run2_protocol": "run 2: protocol"}


def _figure(metrics: dict, name: str) -> dict:
    return metrics["roc_auc"] if name == "roc_auc" else metrics["at_threshold"][name]


def _cell(value: dict) -> str:
    return f"{value['value']:.4f} [{value['ci_low']:.4f}, {value['ci_high']:.4f}]"


def _inside(published: float, value: dict) -> str:
    return "yes" if value["ci_low"] <= published <= value["ci_high"] else "no"


def _flagged(table: Path) -> str:
    if not table.is_file():
        return "not measured"
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    refused = sum(row["state"] == "not assessed" for row in rows)
    return f"{refused} of {len(rows)}"


def _stage_minutes(run: Path) -> str:
    with (run / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    total = {stage: 0.0 for stage in ("1", "2")}
    epochs = {stage: 0 for stage in ("1", "2")}
    for row in rows:
        total[row["stage"]] += float(row["seconds"])
        epochs[row["stage"]] += 1
    return "; ".join(f"stage {s}: {epochs[s]} epochs, {total[s] / 60:.0f} min" for s in ("1", "2"))


def main() -> None:
    evaluated = {}
    for run in sorted(RUNS.glob("run*")):
        metrics = run / "eval_test" / "metrics.json"
        if metrics.is_file():
            evaluated[run.name] = (run, json.loads(metrics.read_text()))
            shutil.copy(metrics, HERE / f"{run.name}_test_metrics.json")
    lines = ["| figure | published | " + " | ".join(NAMES.get(n, n) for n in evaluated)]
    lines[0] += " | shipped (study 6's t2) |"
    lines.append("| --- " * (3 + len(evaluated)) + "|")
    shipped = json.loads(SHIPPED.read_text())
    for name, published in PUBLISHED.items():
        cells = [f"{published:.4f}"]
        for _, metrics in evaluated.values():
            value = _figure(metrics, name)
            cells.append(f"{_cell(value)} (published inside: {_inside(published, value)})")
        cells.append(_cell(_figure(shipped, name)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for label, key in (("frame-only AUC", "frame_only"), ("lung-box AUC", "lung_region_only")):
        cells = ["-"]
        for _, metrics in evaluated.values():
            cells.append(_cell(metrics["audit"]["views"][key]["roc_auc"]))
        cells.append(_cell(shipped["audit"]["views"][key]["roc_auc"]))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    cells = ["-"]
    for run, metrics in evaluated.values():
        flags = metrics.get("flagged_by_reason") or {}
        test = f"test {sum(flags.values())} flags ({flags})"
        cells.append(f"{test}; adult films {_flagged(run / 'external_adult_covid.csv')}")
    cells.append("test 8 of 624; adult films 119 of 124")
    lines.append("| guard | " + " | ".join(cells) + " |")
    cells = ["-"] + [_stage_minutes(run) for run, _ in evaluated.values()] + ["-"]
    lines.append("| wall time | " + " | ".join(cells) + " |")
    thresholds = ["-"] + [
        f"{m['threshold']:.4f} ({m['threshold_rule']})" for _, m in evaluated.values()
    ]
    lines.append("| threshold | " + " | ".join([*thresholds, f"{shipped['threshold']:.4f}"]) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
