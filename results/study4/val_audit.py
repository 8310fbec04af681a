"""Study 4's validation figures (results/study4/PLAN.md): the shortcut audit of every model in
the pool on the patient-level validation split (785 images), through each float16 file.

The same views, fill and lung box as `pneumonia-cxr evaluate --audit` (`evaluation.audit`), at
each model's stored threshold, 1,000 bootstrap resamples (evaluate: 2,000), PyTorch engine (as
evaluate; the table script's whole-image AUC comes through the default engine); cached in
outputs/study4_eval/<id>/patient_val/audit.json. Whole-image validation AUCs come from
`results/study/study_tables.py --study 4`.
Run: `.venv/bin/python results/study4/val_audit.py`"""

from __future__ import annotations

import json
from pathlib import Path

from pneumonia_cxr.data.split import read_split_csv
from pneumonia_cxr.evaluation.audit import VIEWS, run_audit
from pneumonia_cxr.inference.predictor import Predictor
from pneumonia_cxr.storage import atomic_write_text

SPLIT = Path("outputs/study3/d0_lite0_s31/split.csv")
EVALS = Path("outputs/study4_eval")
BASELINE = ("d0_lite0_s31", Path("outputs/study3/d0_lite0_s31/final_fp16.pt"))


def pool() -> list[tuple[str, Path]]:
    """The baseline and every candidate whose float16 file exists."""
    folder = Path("outputs/study4")
    runs = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return [BASELINE] + [
        (r.name, r / "final_fp16.pt") for r in runs if (r / "final_fp16.pt").is_file()
    ]


def audit(name: str, model: Path) -> dict:
    target = EVALS / name / "patient_val" / "audit.json"
    if not target.is_file():
        predictor = Predictor.open(model, engine="torch", device="cpu")  # as evaluate
        result = run_audit(predictor, read_split_csv(SPLIT).val, n_resamples=1000, seed=0)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, json.dumps(result, indent=2) + "\n")
    return json.loads(target.read_text())


def _cell(entry: dict) -> str:
    return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def main() -> None:
    print("| model | " + " | ".join(f"{v} AUC" for v in VIEWS) + " | CAM frame share P / N |")
    print("| --- |" + " --- |" * (len(VIEWS) + 1))
    for name, model in pool():
        result = audit(name, model)
        energy = result.get("gradcam_frame_energy", {}).get("per_class", {})
        share = " / ".join(
            f"{energy[c]['mean']:.2f}" if c in energy else "n/a" for c in ("PNEUMONIA", "NORMAL")
        )
        views = " | ".join(_cell(result["views"][v]["roc_auc"]) for v in VIEWS)
        print(f"| {name} | {views} | {share} |")


if __name__ == "__main__":
    main()
