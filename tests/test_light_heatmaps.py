"""Heatmaps in the light install (no PyTorch): `serve` overlays and `Model.explain` come from the
ONNX graph's own Grad-CAM outputs (`cam`, `type_cam`; the `web` page draws the same maps), scaled
and resized as pytorch-grad-cam does, and agree with the full install's PyTorch Grad-CAM; a
graph without them, or another method, says in one line which install it needs.

The light install is simulated as in tests/test_light_install.py: a subprocess whose import
system refuses PyTorch and the rest of the training stack.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_light_install import _run_light

from pneumonia_cxr.model.onnx_format import FULL_INSTALL_HINT

LIGHT_HEATMAPS = """
import json, time
from pathlib import Path
import numpy as np
import pneumonia_cxr as pcx
from fastapi.testclient import TestClient
from pneumonia_cxr.inference.engines import OnnxEngine, OpenVinoEngine
from pneumonia_cxr.serve.app import create_app
from pneumonia_cxr.serve.service import ServeConfig

out, files, photo = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:-1]], Path(sys.argv[-1])
report = {}


def served():
    with TestClient(create_app(ServeConfig(device="cpu"))) as client:
        deadline = time.monotonic() + 120
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        upload = [("file", (f.name, f.read_bytes())) for f in [*files, photo]]
        return client.post("/v1/predict?gradcam=true", files=upload).json()["results"]


def explained(model, **options):
    try:
        return model.explain(files[0], **options)
    except Exception as error:
        return f"{type(error).__name__}|{error}"


model = pcx.load()
report["engine"] = type(model.predictor.engine).__name__
for i, path in enumerate(files):
    np.save(out / f"cam_{i}.npy", model.explain(path))
    np.save(out / f"type_{i}.npy", model.explain(path, target="type"))
report["eigencam"] = explained(model, method="eigencam")
report["served"] = served()

# An export without the maps (several networks, or a head that is not an MLP): no overlays,
# and explain names the full install.
for engine in (OnnxEngine, OpenVinoEngine):
    engine.graph_outputs = (lambda kept: lambda self: kept(self) - {"cam", "type_cam"})(
        engine.graph_outputs
    )
report["no_cam"] = explained(pcx.load())
report["served_no_cam"] = served()
report["torch_loaded"] = sorted(m for m in sys.modules if m.split(".")[0] == "torch"
                                and sys.modules[m] is not None)
print("REPORT" + json.dumps(report))
"""


def _png(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


@pytest.mark.realdata
def test_light_install_heatmaps_are_the_graphs_grad_cam(
    real_data_root: Path, tmp_path: Path
) -> None:
    import pneumonia_cxr as pcx

    test = real_data_root / "test"
    files = sorted((test / "NORMAL").glob("*.jpeg"))[:2]
    files += sorted((test / "PNEUMONIA").glob("*.jpeg"))[:3]
    from skimage import data

    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    result = _run_light(LIGHT_HEATMAPS, str(tmp_path), *map(str, files), str(photo))
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT")]
    assert lines, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(lines[0][len("REPORT") :])
    assert report["torch_loaded"] == []
    assert report["engine"] in ("OnnxEngine", "OpenVinoEngine")

    # Model.explain: the graph's map, in [0, 1] at the input size, against PyTorch Grad-CAM.
    full = pcx.load(engine="torch", device="cpu")
    correlations = {"pneumonia": [], "type": []}
    for i, path in enumerate(files):
        for target, prefix in (("pneumonia", "cam"), ("type", "type")):
            light = np.load(tmp_path / f"{prefix}_{i}.npy")
            size = full.predictor.image_size
            assert light.shape == (size, size) and light.dtype == np.float32
            assert light.min() >= 0.0 and 0.9 < light.max() <= 1.0  # a 7 x 7 map, bilinear
            reference = full.explain(path, target=target)
            correlations[target].append(np.corrcoef(light.ravel(), reference.ravel())[0, 1])
    assert min(correlations["pneumonia"]) >= 0.9, correlations
    assert min(correlations["type"]) >= 0.9, correlations
    kind, message = report["eigencam"].split("|", 1)
    assert kind == "ModelFileError" and "\n" not in message and FULL_INSTALL_HINT in message

    # serve: overlays for assessed images only (the type's where a type was named), none for
    # the astronaut; the same answers as the full install's predict.
    expected = full.predict(files)
    served = {r["name"]: r for r in report["served"]}
    for path, row in zip(files, expected, strict=True):
        answer = served[path.name]
        assert answer["state"] == row.state == "assessed"
        assert answer["label"] == row.label
        assert answer["probability"] == pytest.approx(row.probability, abs=1e-4)
        overlay = _png(answer["gradcam_png_base64"])
        assert overlay.shape == (224, 224, 3) and overlay.dtype == np.uint8
        assert ("gradcam_type_png_base64" in answer) == bool(row.pneumonia_type)
        if row.pneumonia_type:
            assert _png(answer["gradcam_type_png_base64"]).shape == (224, 224, 3)
    assert any(r.pneumonia_type for r in expected)  # the type's overlay was exercised
    refused = served[photo.name]
    assert refused["state"] == "not assessed"
    assert not {"gradcam_png_base64", "gradcam_type_png_base64"} & set(refused)

    # A graph without the maps: scores without overlays; explain names the full install.
    kind, message = report["no_cam"].split("|", 1)
    assert kind == "ModelFileError" and "\n" not in message and FULL_INSTALL_HINT in message
    assert "carries no Grad-CAM map" in message
    for answer in report["served_no_cam"]:
        assert answer["state"] in ("assessed", "not assessed")
        assert not {"gradcam_png_base64", "gradcam_type_png_base64"} & set(answer)
