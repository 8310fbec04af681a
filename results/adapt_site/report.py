"""The table of RESULTS.md from run.sh's outputs: python results/adapt_site/report.py [OUT]."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _interval(figure: dict, percent: bool) -> str:
    scale, unit, digits = (100, "%", 1) if percent else (1, "", 3)
    low, high = figure["ci_low"], figure["ci_high"]
    value = f"{scale * figure['value']:.{digits}f}{unit}"
    return f"{value} [{scale * low:.{digits}f}, {scale * high:.{digits}f}]"


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/adapt_site")
    print(
        "| site rendering | shipped model on B: AUC | adapt's out-of-fold AUC (A) | nested (A) "
        "| adapted on B: AUC | sensitivity on B (target 90%) | specificity on B | recipe chosen "
        "| refit vs fold-head mean on B | adapt wall time, exit |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind in ("degraded", "inverted", "zoomed"):
        check_path = out / f"{kind}.check.json"
        if not check_path.is_file():
            continue
        check = json.loads(check_path.read_text())
        timing = json.loads((out / f"{kind}.time").read_text())
        record = json.loads((out / f"{kind}_report" / "site_report.json").read_text())
        b, estimate = check["adapted_on_b"], check["oof_estimate_from_a"]
        versus = check["refit_vs_fold_ensemble_auc_on_b"]
        print(
            f"| {kind} | {_interval(check['parent_on_b']['roc_auc'], False)} "
            f"| {_interval(estimate['roc_auc'], False)} "
            f"| {record['candidates'][record['identity']['recipe']]['nested_oof_auc']:.3f} "
            f"| {_interval(b['roc_auc'], False)} | {_interval(b['sensitivity'], True)} "
            f"| {_interval(b['specificity'], True)} | {record['identity']['recipe']} "
            f"| {versus['refit_on_all']:.4f} vs {versus['mean_of_fold_heads']:.4f} "
            f"| {timing['seconds']} s, {timing['exit']} |"
        )
    print()
    print(
        "| site rendering | nested on A: sensitivity (threshold fitted inside each fold) "
        "| nested on A: specificity | verdict from | type: out-of-fold AUC on A |"
    )
    print("| --- | --- | --- | --- | --- |")
    for kind in ("degraded", "inverted", "zoomed"):
        path = out / f"{kind}_report" / "site_report.json"
        if not path.is_file():
            continue
        report = json.loads(path.read_text())
        nested, kind_type = report["nested_at_target"], report["type"]
        type_auc = (
            _interval(kind_type["out_of_fold"]["roc_auc"], False)
            if kind_type["available"]
            else "not available"
        )
        print(
            f"| {kind} | {_interval(nested['sensitivity'], True)} "
            f"| {_interval(nested['specificity'], True)} | {report['verdict_from']} | {type_auc} |"
        )
    print()
    print("| site rendering | recipe | C | cross-validated AUC (A) | nested out-of-fold AUC (A) |")
    print("| --- | --- | --- | --- | --- |")
    for kind in ("degraded", "inverted", "zoomed"):
        path = out / f"{kind}_report" / "site_report.json"
        if path.is_file():
            for name, figures in json.loads(path.read_text())["candidates"].items():
                print(
                    f"| {kind} | {name} | {figures['c']:g} | {figures['cv_auc']:.3f} "
                    f"| {figures['nested_oof_auc']:.3f} |"
                )


if __name__ == "__main__":
    main()
