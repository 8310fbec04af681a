"""Which layers the applicability guard models (issue 25): candidate layer sets, compared on
images that are not the test split.

For each candidate (pre-stated below, contiguous EfficientNet-Lite blocks) the guard is fitted
as `training.guard_fit.fit_guard` fits it (densities on 1,500 training images, normalisation on
800 others, cut-off at the 97.5th percentile of the validation split) and its flag share is
measured on half of the shared adult COVID-19 films (even positions of the sorted list: the
choosing half), the other half (odd positions: the checking half) and the 12 non-X-rays of
ood_check.py. The rule: the highest flag share on the choosing half; ties go to fewer layers.
The test split is not read.

Run: `.venv/bin/python benchmarks/guard_layers.py [--model_path M]`
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from ood_check import non_xray_images

from pneumonia_cxr.inference.predictor import Predictor
from pneumonia_cxr.model.guard import (
    DEFAULT_GUARD_FIT_IMAGES,
    DEFAULT_GUARD_NORM_IMAGES,
    DEFAULT_GUARD_QUANTILE,
    LayerGuard,
)
from pneumonia_cxr.model.model_file import load_model
from pneumonia_cxr.model.shipped import resolve_model_path
from pneumonia_cxr.training.guard_fit import guard_parts, model_split, tap_vectors

CANDIDATES: dict[str, tuple[str, ...]] = {
    "blocks.2-4": ("blocks.2", "blocks.3", "blocks.4"),
    "blocks.1-5": ("blocks.1", "blocks.2", "blocks.3", "blocks.4", "blocks.5"),
    "blocks.1-6": tuple(f"blocks.{i}" for i in range(1, 7)),
    "blocks.0-6": tuple(f"blocks.{i}" for i in range(7)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_path")
    parser.add_argument("--data", default="../shared/data/kermany_224")
    parser.add_argument("--external", default="../shared/data/external_adult_covid")
    args = parser.parse_args()
    bundle = load_model(resolve_model_path(args.model_path))
    bundle.guard = None
    split = model_split(bundle, args.data)
    fit, norm = guard_parts(split.train, DEFAULT_GUARD_FIT_IMAGES, DEFAULT_GUARD_NORM_IMAGES)
    parts = {"fit": fit, "norm": norm, "val": [r.path for r in split.val]}
    external = sorted(
        p for p in Path(args.external).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )
    parts["adult choosing half"], parts["adult checking half"] = external[0::2], external[1::2]
    layers = tuple(f"blocks.{i}" for i in range(7))
    predictor = Predictor.from_bundle(bundle, None, source="guard layers")
    with tempfile.TemporaryDirectory() as scratch:
        parts["non-X-rays"] = non_xray_images(Path(scratch))
        taps = {name: tap_vectors(predictor, paths, layers) for name, paths in parts.items()}
    print(f"| layers | {' | '.join(n for n in parts if n not in ('fit', 'norm', 'val'))} |")
    best = None
    for name, chosen in CANDIDATES.items():
        index = [layers.index(layer) for layer in chosen]
        pick = {part: [taps[part][i] for i in index] for part in taps}
        guard = LayerGuard.fit(chosen, pick["fit"], pick["norm"], "candidate")
        with torch.inference_mode():
            score = {p: guard([torch.from_numpy(v) for v in pick[p]]).numpy() for p in pick}
        guard.set_cutoff(score["val"], DEFAULT_GUARD_QUANTILE)
        shares = {
            p: float(np.mean(s > guard.cutoff))
            for p, s in score.items()
            if p not in ("fit", "norm")
        }
        print(
            f"| {name} | " + " | ".join(f"{v:.1%}" for p, v in shares.items() if p != "val") + " |"
        )
        key = (shares["adult choosing half"], -len(chosen))
        if best is None or key > best[0]:
            best = (key, name)
    print(f"chosen by the rule: {best[1]}")


if __name__ == "__main__":
    main()
