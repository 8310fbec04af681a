"""Does the out-of-distribution guard flag images that are not chest X-rays, and few X-rays?

Non-X-ray images, all offline: photos (scikit-image's astronaut, coffee, chelsea, camera,
rocket; matplotlib's grace_hopper), a scanned page and a text image (scikit-image), a drawing
(matplotlib's logo, and shapes drawn here), uniform noise and a flat gray image. X-rays: the
official test split. Prints each non-X-ray's probability, score and flag, and the shares flagged.

Run: `.venv/bin/python benchmarks/ood_check.py [--model_path M] [--data ../shared/data/kermany_224]`
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw

from pneumonia_cxr.data.discovery import list_images
from pneumonia_cxr.inference.predictor import Predictor
from pneumonia_cxr.model.shipped import resolve_model_path
from pneumonia_cxr.predict import predict_paths


def non_xray_images(folder: Path) -> list[Path]:
    import skimage.data

    images: dict[str, np.ndarray] = {
        f"photo_{name}": getattr(skimage.data, name)()
        for name in ("astronaut", "coffee", "chelsea", "camera", "rocket")
    }
    images["scanned_page"] = skimage.data.page()
    images["text"] = skimage.data.text()
    sample = Path(matplotlib.get_data_path()) / "sample_data"
    images["photo_grace_hopper"] = np.asarray(Image.open(sample / "grace_hopper.jpg"))
    images["drawing_logo"] = np.asarray(Image.open(sample / "logo2.png").convert("RGB"))
    drawing = Image.new("RGB", (400, 400), "white")
    pen = ImageDraw.Draw(drawing)
    pen.ellipse((60, 60, 340, 340), outline="black", width=6)
    pen.line((0, 0, 400, 400), fill="red", width=8)
    pen.rectangle((150, 150, 250, 250), fill="blue")
    images["drawing_shapes"] = np.asarray(drawing)
    rng = np.random.default_rng(0)
    images["noise"] = rng.integers(0, 256, (512, 512), dtype=np.uint8)
    images["flat_gray"] = np.full((512, 512), 128, dtype=np.uint8)
    paths = []
    for name, array in images.items():
        path = folder / f"{name}.png"
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_path", type=Path, help="default: the shipped model")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/kermany_224"))
    args = parser.parse_args()
    model_path = resolve_model_path(args.model_path)
    predictor = Predictor.open(model_path, device="cpu")
    with tempfile.TemporaryDirectory() as scratch:
        rows = predict_paths(predictor, non_xray_images(Path(scratch)))
        print(f"model: {model_path}\n")
        print("| image | network's P(PNEUMONIA) | state | guard score | OOD score |")
        print("| --- | --- | --- | --- | --- |")
        for row in rows:
            name, result = Path(row.path).stem, row.result
            guard = "-" if row.guard_score is None else f"{row.guard_score:.1f}"
            ood = "-" if row.ood_score is None else f"{row.ood_score:.1f}"
            number = result.probabilities["pneumonia"] if result is not None else float("nan")
            print(f"| {name} | {number:.3f} | {row.state} | {guard} | {ood} |")
    flagged = sum(bool(row.out_of_distribution) for row in rows)
    xrays = [r.path for r in list_images(args.data, ["test"])]
    xray_rows = predict_paths(predictor, xrays)
    xray_flagged = sum(bool(row.out_of_distribution) for row in xray_rows)
    print(f"\nnon-X-ray images flagged: {flagged} of {len(rows)}")
    print(
        f"test X-rays flagged: {xray_flagged} of {len(xray_rows)} "
        f"({100 * xray_flagged / len(xray_rows):.1f}%)"
    )


if __name__ == "__main__":
    main()
