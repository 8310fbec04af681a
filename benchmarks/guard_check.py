"""The multi-layer applicability guard (issue 25) fitted on a model's own split, measured on the
official test split, the shared adult COVID-19 films and the 12 non-X-rays of ood_check.py.

Fits `training.guard_fit.fit_guard` on the model's patient-level split (made again from its
config, checked against its data fingerprint), writes the guarded float16 copy to --output, then
reports the share of each image set flagged (any reason) and the non-X-rays' reasons. Nothing is
chosen here: the layers, statistics and cut-off rule are `model/guard.py`'s.

Run: `.venv/bin/python benchmarks/guard_check.py [--model_path M] [--output /tmp/guarded.pt]`
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ood_check import non_xray_images

from pneumonia_cxr.data.discovery import list_images
from pneumonia_cxr.inference.predictor import Predictor
from pneumonia_cxr.model.model_file import load_model, save_model
from pneumonia_cxr.model.shipped import resolve_model_path
from pneumonia_cxr.predict import predict_paths
from pneumonia_cxr.training.guard_fit import fit_guard, model_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_path")
    parser.add_argument("--data", default="../shared/data/kermany_224")
    parser.add_argument("--external", default="../shared/data/external_adult_covid")
    parser.add_argument("--output", default="outputs/guarded_model.pt")
    args = parser.parse_args()
    bundle = load_model(resolve_model_path(args.model_path))
    split = model_split(bundle, args.data)
    guard = fit_guard(bundle, split.train, split.val, fitted_on="its own train/val split")
    print(f"guard layers {guard.layers}, cut-off {guard.cutoff:.2f} (q {guard.quantile})")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    save_model(bundle, args.output, half=bundle.stored_half)
    predictor = Predictor.open(args.output, engine="torch")
    external = sorted(
        p for p in Path(args.external).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )
    with tempfile.TemporaryDirectory() as scratch:
        sets = {
            "official test split": [r.path for r in list_images(args.data, ["test"])],
            "external adult COVID-19": external,
            "non-X-rays (ood_check)": non_xray_images(Path(scratch)),
        }
        for name, paths in sets.items():
            rows = [r for r in predict_paths(predictor, paths) if not r.error]
            flagged = [r for r in rows if r.out_of_distribution]
            print(f"{name}: {len(flagged)}/{len(rows)} flagged ({len(flagged) / len(rows):.1%})")
            if name.startswith("non-X-rays"):
                for row in rows:
                    print(f"  {Path(row.path).name}: {row.reason or 'not flagged'}")


if __name__ == "__main__":
    main()
