"""Originals vs their 224-px copies: do they get the same label, and where does a gap come from?

The shared data holds 23 full-resolution originals (`kermany_fullres_sample/`) whose 224-px JPEG
q75 copies sit in `kermany_224/`. For each pair this prints P(PNEUMONIA) of:

- copy      the 224-px copy, as evaluated (the metrics' input);
- original  the original through the one loader (JPEG draft decoding, then antialiased resize);
- full      the original decoded at full size, then the same resize (draft decoding's share);
- remade    the original resized to 224 with PIL bilinear and re-encoded as JPEG q75, as the
            copies were made (the copies' resampling and compression share);
- pil       the same PIL resize without the JPEG step (the resampling filter's share);
- ours_q75  the loader's own 224-px image re-encoded as JPEG q75 (the compression's share).

Then label agreement and mean/max |dp| of each variant against the copy.
Run: `.venv/bin/python benchmarks/resolution_agreement.py [--model_path M]`
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pneumonia_cxr.data.loader import load_xray
from pneumonia_cxr.inference.predictor import Predictor
from pneumonia_cxr.model.shipped import resolve_model_path


def _pil_resized(original: Path) -> Image.Image:
    with Image.open(original) as image:
        return image.convert("RGB").resize((224, 224), Image.BILINEAR)


def _jpeg_q75(image: Image.Image) -> torch.Tensor:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=75)
    gray = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"))
    return torch.from_numpy(gray.copy())[None]


def _gray(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("L")).copy())[None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_path", type=Path, help="default: the shipped model")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    args = parser.parse_args()
    predictor = Predictor.open(resolve_model_path(args.model_path), device="cpu")
    size = predictor.image_size
    with open(args.data / "kermany_fullres_sample" / "MANIFEST.tsv", newline="") as handle:
        entries = list(csv.DictReader(handle, delimiter="\t"))
    variants: dict[str, list[torch.Tensor]] = {
        name: [] for name in ("copy", "original", "full", "remade", "pil", "ours_q75")
    }
    names = []
    for entry in entries:
        original = args.data / "kermany_fullres_sample" / entry["split"] / entry["class"]
        original = original / entry["filename"]
        copy = args.data / "kermany_224" / entry["split"] / entry["class"] / entry["filename"]
        names.append(entry["filename"])
        variants["copy"].append(load_xray(copy, min_side=size))
        variants["original"].append(load_xray(original, min_side=size))
        variants["full"].append(load_xray(original))
        variants["remade"].append(_jpeg_q75(_pil_resized(original)))
        variants["pil"].append(_gray(_pil_resized(original)))
        ours = torch.from_numpy(load_xray(original, min_side=size))
        ours = (
            torch.nn.functional.interpolate(
                ours[None].float(), size=(size, size), mode="bilinear", antialias=True
            )[0]
            .round()
            .clamp(0, 255)
            .to(torch.uint8)
        )
        variants["ours_q75"].append(_jpeg_q75(Image.fromarray(ours[0].numpy()).convert("RGB")))
    scores = {
        name: predictor.scores(np.stack([predictor.transform(np.asarray(g)) for g in grays]))
        for name, grays in variants.items()
    }
    probs = {name: s.probabilities for name, s in scores.items()}
    labels = {name: s.decisions for name, s in scores.items()}
    print("| file | " + " | ".join(variants) + " |")
    print("| --- |" + " --- |" * len(variants))
    for i, name in enumerate(names):
        print(f"| {name} | " + " | ".join(f"{probs[v][i]:.3f}" for v in variants) + " |")
    print()
    for name in ("original", "full", "remade", "pil", "ours_q75"):
        dp = np.abs(probs[name] - probs["copy"])
        agree = int(np.sum(labels[name] == labels["copy"]))
        print(
            f"{name:9s} vs copy: labels agree {agree}/{len(names)}, "
            f"mean |dp| {dp.mean():.4f}, max |dp| {dp.max():.4f}"
        )


if __name__ == "__main__":
    main()
