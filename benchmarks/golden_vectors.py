"""Write tests/golden/preprocessing.json: the input contract's golden vectors.

Real test copies in; out, per image: the sha256 of the model's uint8 input (after the resize
and the JPEG step), of its float32 input, and the shipped model's probability, P(viral) and
guard score. The three implementations of the contract are held to it: numpy/Pillow
(scoring, tests/test_preprocess.py), PyTorch (training's transforms, same test) and JavaScript
(the browser page, tests/test_web_browser.py). Rerun only when the contract or the shipped
model changes on purpose.

Run: `.venv/bin/python benchmarks/golden_vectors.py [--data ../shared/data/kermany_224]`
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from pneumonia_cxr.data.loader import load_xray
from pneumonia_cxr.inference.predictor import Predictor
from pneumonia_cxr.model.shipped import SHIPPED_ONNX_SHA256, shipped_onnx_path

ROOT = Path(__file__).resolve().parents[1]
NAMES = (
    "test/NORMAL/IM-0001-0001.jpeg",
    "test/NORMAL/NORMAL2-IM-0112-0001.jpeg",
    "test/PNEUMONIA/person100_bacteria_475.jpeg",
    "test/PNEUMONIA/person1_virus_6.jpeg",
    "test/PNEUMONIA/person80_bacteria_390.jpeg",
    "test/NORMAL/IM-0021-0001.jpeg",
)


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/kermany_224")
    args = parser.parse_args()
    predictor = Predictor.open(shipped_onnx_path())
    per_image, per_batch = predictor._file_stages
    vectors = []
    for name in NAMES:
        path = args.data / name
        pixels = per_image(load_xray(path, min_side=predictor.image_size))
        model_input = per_batch(pixels[None])[0]
        [result] = predictor.results(predictor.scores(model_input[None]))
        vectors.append(
            {
                "file": name,
                "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "uint8_sha256": digest(pixels),
                "float32_sha256": digest(model_input.astype(np.float32)),
                "probability": result.probabilities["pneumonia"],
                "p_viral": result.probabilities["type"],
                "guard_score": result.guard_score,
            }
        )
    document = {"model_onnx_sha256": SHIPPED_ONNX_SHA256, "vectors": vectors}
    target = ROOT / "tests" / "golden" / "preprocessing.json"
    target.write_text(json.dumps(document, indent=1) + "\n")
    print(f"{target}: {len(vectors)} vectors")


if __name__ == "__main__":
    main()
