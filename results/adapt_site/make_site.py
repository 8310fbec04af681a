"""A site one can see, for choosing and checking `adapt`'s recipes (issue 35): the shipped
model's own patient-level VALIDATION images (never the test split, never trained on), rendered
as another hospital's films would differ, written as a flat NORMAL/PNEUMONIA site folder with a
patients.csv, split by patient into halves A (adapt on it) and B (check on it).

Two renderings (deterministic):
- `inverted`: shown as MONOCHROME1 (bones dark), softer (Gaussian blur 1.2 px), a 10% zoom
  and gamma 0.7 -- the shipped model reads this as something else;
- `zoomed`: a 25% tighter field of view, stronger contrast (gamma 1.6), a burned-in black
  border 8 px wide -- a milder shift;
- `degraded`: the lungs only (a 45% tighter field of view), 28 px of detail (down- and
  upsampled), seeded Gaussian noise (sigma 18 grey levels), inverted -- the classes stay
  learnable but little of what the shipped model relies on survives.

Usage: python results/adapt_site/make_site.py OUT_DIR [--data ../shared/data/kermany_224]
Images are written under OUT_DIR (outputs/, gitignored): never committed.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from PIL import Image, ImageFilter, ImageOps

from pneumonia_cxr.data.patients import patient_id
from pneumonia_cxr.data.site import site_folds
from pneumonia_cxr.model.model_file import load_model
from pneumonia_cxr.model.shipped import default_model_path
from pneumonia_cxr.training.guard_fit import model_split


def _zoom(image: Image.Image, fraction: float) -> Image.Image:
    width, height = image.size
    dx, dy = int(width * fraction / 2), int(height * fraction / 2)
    return image.crop((dx, dy, width - dx, height - dy)).resize((width, height), Image.BICUBIC)


def _gamma(image: Image.Image, gamma: float) -> Image.Image:
    return image.point(lambda v: round(255 * (v / 255) ** gamma))


def render(image: Image.Image, kind: str) -> Image.Image:
    gray = image.convert("L")
    if kind == "inverted":
        out = _gamma(_zoom(gray, 0.10), 0.7).filter(ImageFilter.GaussianBlur(1.2))
        return ImageOps.invert(out)
    if kind == "zoomed":
        out = _gamma(_zoom(gray, 0.25), 1.6)
        return ImageOps.expand(ImageOps.crop(out, 8), 8, fill=0)
    if kind == "degraded":
        import numpy as np

        small = _zoom(gray, 0.45).resize((28, 28), Image.BILINEAR).resize(gray.size, Image.BICUBIC)
        seed = sum(gray.tobytes()[:4096]) % (2**32)
        noisy = np.asarray(small, dtype=np.float32) + np.random.default_rng(seed).normal(
            0, 18, (gray.size[1], gray.size[0])
        )
        return ImageOps.invert(Image.fromarray(noisy.clip(0, 255).astype(np.uint8)))
    raise ValueError(kind)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", default="../shared/data/kermany_224")
    parser.add_argument("--kinds", default="inverted,zoomed,degraded")
    args = parser.parse_args()
    split = model_split(load_model(default_model_path()), args.data)
    val = list(split.val)
    halves = site_folds(val, 2, seed=35)
    for kind in args.kinds.split(","):
        for half_name, half in zip("AB", halves, strict=True):
            root = args.out / kind / half_name
            rows = []
            for record in half:
                target = root / record.class_name / (record.path.stem + ".png")
                target.parent.mkdir(parents=True, exist_ok=True)
                render(Image.open(record.path), kind).save(target)
                rows.append((target.name, patient_id(record.path.name)))
            with open(root / "patients.csv", "w", newline="") as handle:
                csv.writer(handle).writerows([("file", "patient"), *rows])
            counts = {c: sum(r.class_name == c for r in half) for c in ("NORMAL", "PNEUMONIA")}
            print(kind, half_name, len(half), counts, len({p for _, p in rows}), "patients")


if __name__ == "__main__":
    main()
