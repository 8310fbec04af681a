"""Check `adapt` on the other half of a visible site (issue 35's bar, on a site one can see):
the adapted file and its parent measured on half B by the one held-out measure, beside the
command's own out-of-fold estimate from half A; and, for the choice between a head refitted on
all images and an ensemble of the fold heads, both scored on B from the same features.

Usage: python results/adapt_site/check.py ADAPTED.pt SITE_B [--work WORK_DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pneumonia_cxr.data.site import list_site_images
from pneumonia_cxr.model.model_file import ModelBundle, load_model
from pneumonia_cxr.model.shipped import default_model_path
from pneumonia_cxr.site.held_out import held_out_figures
from pneumonia_cxr.site.probe import PROBE_RECIPES, _fit, extract_features, feature_network


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("adapted", type=Path)
    parser.add_argument("site_b", type=Path)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = args.work or args.adapted.with_name(args.adapted.stem + "_adapt")
    records = list_site_images(args.site_b)
    adapted = load_model(args.adapted)
    record = adapted.extra["adaptation"]
    parent = held_out_figures(default_model_path(), records, engine="torch")
    after = held_out_figures(args.adapted, records, engine="torch")
    estimate = record["out_of_fold_after"]
    out = {
        "site_b_images": len(records),
        "parent_on_b": parent.record(),
        "adapted_on_b": after.record(),
        "oof_estimate_from_a": estimate,
        "auc_gap": after.metrics.roc_auc.value - estimate["roc_auc"]["value"],
        "sensitivity_gap_to_target": after.metrics.sensitivity.value - record["min_sensitivity"],
    }
    # Refit on all of A (what adapt ships) against the mean of the five fold heads.
    from sklearn.metrics import roc_auc_score

    name = record["recipe"]
    network, preprocessing = feature_network(PROBE_RECIPES[name], load_model(default_model_path()))
    b_features = extract_features(
        ModelBundle(model=network, preprocessing=preprocessing),
        records,
        work / "check_b" / f"{name}.npy",
    )
    a_features = np.load(work / "features" / f"{name}.npy")
    a_records = list_site_images(args.site_b.parent / "A")
    labels_a = np.array([r.label for r in a_records])
    labels_b = np.array([r.label for r in records])
    from pneumonia_cxr.site.adapt import _fold_numbers, read_patients_csv

    folds = _fold_numbers(
        a_records, record["folds"], record["seed"], read_patients_csv(args.site_b.parent / "A")
    )
    fold_logits = [
        _fit(a_features[folds != k], labels_a[folds != k], record["c"]).decision_function(
            b_features
        )
        for k in range(record["folds"])
    ]
    refit = _fit(a_features, labels_a, record["c"]).decision_function(b_features)
    out["refit_vs_fold_ensemble_auc_on_b"] = {
        "refit_on_all": float(roc_auc_score(labels_b, refit)),
        "mean_of_fold_heads": float(roc_auc_score(labels_b, np.mean(fold_logits, axis=0))),
    }
    for recipe, figures in record["candidates"].items():
        out.setdefault("candidates_in_a", {})[recipe] = figures
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
