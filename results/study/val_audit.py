"""The studies' validation shortcut audit (results/study4/PLAN.md, results/study5/PLAN.md): every
model in a study's pool on the patient-level validation split (785 images), through each float16
file.

The same views, fill and lung box as `pneumonia-cxr evaluate --audit` (`evaluation.audit`), at
each model's stored threshold, 1,000 bootstrap resamples (evaluate: 2,000), PyTorch engine (as
evaluate; the table script's whole-image AUC comes through the default engine); cached in
outputs/study<N>_eval/<id>/patient_val/audit.json. The pool (baselines and candidates) is the
table script's (`study_tables.STUDIES`); whole-image validation AUCs come from
`results/study/study_tables.py --study N`.
Run: `.venv/bin/python results/study/val_audit.py --study 4` (or `--study 5`)"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from study_tables import STUDIES, Study

from pneumonia_cxr.data.split import read_split_csv
from pneumonia_cxr.evaluation.audit import VIEWS, run_audit
from pneumonia_cxr.inference.predictor import Predictor
from pneumonia_cxr.storage import atomic_write_text

AUDITED = ("4", "5")  # the studies whose plans name this audit


def pool(study: Study) -> list[tuple[str, Path]]:
    """The baselines (a missing one is reported, not skipped) and every candidate whose
    float16 file exists."""
    runs = sorted(p for p in study.runs.iterdir() if p.is_dir()) if study.runs.is_dir() else []
    baselines = list(study.extra_models.items())
    return baselines + [
        (r.name, r / study.model_file) for r in runs if (r / study.model_file).is_file()
    ]


def audit(study: Study, name: str, model: Path) -> dict:
    target = study.evals / name / "patient_val" / "audit.json"
    if not target.is_file():
        predictor = Predictor.open(model, engine="torch", device="cpu")  # as evaluate
        val = read_split_csv(study.split_csv).val
        result = run_audit(predictor, val, n_resamples=1000, seed=0)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, json.dumps(result, indent=2) + "\n")
    return json.loads(target.read_text())


def _cell(entry: dict) -> str:
    return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--study", choices=AUDITED, default="4")
    study = STUDIES[parser.parse_args().study]
    print("| model | " + " | ".join(f"{v} AUC" for v in VIEWS) + " | CAM frame share P / N |")
    print("| --- |" + " --- |" * (len(VIEWS) + 1))
    for name, model in pool(study):
        if not model.is_file():
            print(f"| {name} | not found: {model} |")
            continue
        result = audit(study, name, model)
        energy = result.get("gradcam_frame_energy", {}).get("per_class", {})
        share = " / ".join(
            f"{energy[c]['mean']:.2f}" if c in energy else "n/a" for c in ("PNEUMONIA", "NORMAL")
        )
        views = " | ".join(_cell(result["views"][v]["roc_auc"]) for v in VIEWS)
        print(f"| {name} | {views} | {share} |")


if __name__ == "__main__":
    main()
