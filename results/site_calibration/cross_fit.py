"""The Kermany test split as a new site, 2-fold cross-fitting by patient (issue 17).

Calibrate the shipped model on fold A (`site.calibrate.calibrate_model`, what
`pneumonia-cxr calibrate` runs), measure it on fold B (other patients), then swap; report both
folds and the two held-out folds pooled: target sensitivity vs achieved, specificity before
(the shipped threshold) and after. A separate experiment: it never chooses the shipped model,
and the README's headline stays the uncalibrated evaluation.

Run: `.venv/bin/python results/site_calibration/cross_fit.py` (writes RESULTS.md and
cross_fit.json beside this file; the calibrated files go to outputs/site_calibration/).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pneumonia_cxr.data.site import list_site_images, site_folds
from pneumonia_cxr.evaluation.metrics import wilson_interval
from pneumonia_cxr.model.shipped import resolve_model_path
from pneumonia_cxr.site.calibrate import calibrate_model
from pneumonia_cxr.site.held_out import held_out_figures

HERE = Path(__file__).resolve().parent


def _rates(labels: np.ndarray, decisions: np.ndarray) -> dict[str, object]:
    hits, n_pos = int(decisions[labels == 1].sum()), int((labels == 1).sum())
    passes, n_neg = int((decisions[labels == 0] == 0).sum()), int((labels == 0).sum())
    return {
        "n": len(labels),
        "sensitivity": hits / n_pos,
        "sensitivity_ci": wilson_interval(hits, n_pos),
        "specificity": passes / n_neg,
        "specificity_ci": wilson_interval(passes, n_neg),
    }


def _pct(entry: dict, name: str) -> str:
    low, high = entry[f"{name}_ci"]
    return f"{100 * entry[name]:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/kermany_224"))
    parser.add_argument("--model_path", type=Path, help="default: the shipped model")
    parser.add_argument("--min_sensitivity", type=float, default=0.95)
    parser.add_argument("--rule", default="max_specificity_at_sensitivity")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = resolve_model_path(args.model_path)
    records = list_site_images(args.data, "test")
    folds = site_folds(records, 2, args.seed)
    out = Path("outputs/site_calibration")
    rows, pooled = [], {"before": ([], []), "after": ([], [])}
    for held in (0, 1):
        fit = folds[1 - held]
        result = calibrate_model(
            model,
            fit,
            out / f"calibrated_on_fold{1 - held}.pt",
            rule=args.rule,
            min_sensitivity=args.min_sensitivity,
            device="cpu",
        )
        before = held_out_figures(model, folds[held], device="cpu")
        after = held_out_figures(out / f"calibrated_on_fold{1 - held}.pt", folds[held])
        for name, figures in (("before", before), ("after", after)):
            pooled[name][0].extend(figures.labels)
            pooled[name][1].extend(figures.decisions)
        rows.append(
            {
                "fitted_on": f"fold {1 - held} ({len(fit)} images)",
                "held_out": f"fold {held} ({len(folds[held])} images)",
                "threshold": result.point.threshold,
                "temperature": result.point.temperature,
                "before": _rates(np.array(before["labels"]), np.array(before["decisions"])),
                "after": _rates(np.array(after["labels"]), np.array(after["decisions"])),
            }
        )
    total = {
        name: _rates(np.array(labels), np.array(decisions))
        for name, (labels, decisions) in pooled.items()
    }
    lines = [
        "| held out | fitted on | threshold | sensitivity before | sensitivity after "
        f"(target {args.min_sensitivity:.2f}) | specificity before | specificity after |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['held_out']} | {row['fitted_on']} | {row['threshold']:.4f} | "
            f"{_pct(row['before'], 'sensitivity')} | {_pct(row['after'], 'sensitivity')} | "
            f"{_pct(row['before'], 'specificity')} | {_pct(row['after'], 'specificity')} |"
        )
    lines.append(
        f"| both folds pooled | | | {_pct(total['before'], 'sensitivity')} | "
        f"{_pct(total['after'], 'sensitivity')} | {_pct(total['before'], 'specificity')} | "
        f"{_pct(total['after'], 'specificity')} |"
    )
    table = "\n".join(lines)
    print(f"model: {model}\nrule {args.rule}, target sensitivity {args.min_sensitivity}\n{table}")
    (HERE / "cross_fit.json").write_text(
        json.dumps({"model": str(model.name), "rows": rows, "pooled": total}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
