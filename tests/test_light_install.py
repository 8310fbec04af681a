"""The light install (`pip install ".[score]"`, no PyTorch): predict, data, the service and the
Python API score the shipped model's ONNX twin with the labels of the full install's PyTorch
engine; the commands that need PyTorch say which install they need.

The light install is simulated in a subprocess whose import system refuses PyTorch and the
rest of the training stack (`sys.modules[name] = None`), so any module-level import of them on
the scoring path fails here. benchmarks/light_install.py builds a real fresh venv and measures it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pneumonia_cxr.archive import read_table
from pneumonia_cxr.cli import FULL_STACK
from pneumonia_cxr.model import shipped

BLOCK = f"import sys\nfor _name in {sorted(FULL_STACK)!r}:\n    sys.modules[_name] = None\n"


def _run_light(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=240,
    )


def _sample(real_data_root: Path) -> list[Path]:
    """Real test copies of both classes and a DICOM-free mix of names (4 + 4)."""
    test = real_data_root / "test"
    return sorted((test / "NORMAL").iterdir())[:4] + sorted((test / "PNEUMONIA").iterdir())[:4]


LIGHT_SESSION = """
import io, json
from pathlib import Path
from fastapi.testclient import TestClient
import pneumonia_cxr as pcx
from pneumonia_cxr.cli import main
from pneumonia_cxr.serve.app import create_app
from pneumonia_cxr.serve.service import ServeConfig

files, out = [Path(p) for p in sys.argv[2:]], Path(sys.argv[1])
report = {}
report["predict_rc"] = main(["predict", *map(str, files), "--output", str(out / "p.csv")])
report["data_rc"] = main(["data", "--dataset_path", str(files[0].parents[2]), "--fast"])
for shard in (0, 1):  # the archive mode: shards, resume, merge
    report[f"shard{shard}_rc"] = main(["predict", *map(str, files), "--resume", "--shard",
                                       f"{shard}/2", "--batch_size", "2",
                                       "--output", str(out / f"s{shard}.csv")])
report["resume_rc"] = main(["predict", *map(str, files), "--resume", "--shard", "0/2",
                            "--batch_size", "2", "--output", str(out / "s0.csv")])
report["merge_rc"] = main(["merge-predictions", "--output", str(out / "merged.csv"),
                           str(out / "s0.csv"), str(out / "s1.csv")])
model = pcx.load()
report["api"] = [[r.probability, r.label, r.pneumonia_type] for r in model.predict(files)]
with TestClient(create_app(ServeConfig(device="cpu"))) as client:
    import time
    deadline = time.monotonic() + 120
    while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    report["ready"] = client.get("/ready").status_code
    report["model"] = client.get("/v1/model").status_code
    answer = client.post("/v1/predict", files=[("file", (files[-1].name, files[-1].read_bytes()))])
    report["serve"] = answer.json()
report["train_rc"] = main(["train", "--dataset_path", str(out), "--output_dir", str(out)])
report["shipped_pt_rc"] = main(["predict", str(files[0]), "--model_path",
                                str(shipped.WEIGHTS_DIR / shipped.SHIPPED_MODEL_FILE)])
(out / "copy.pt").write_bytes((shipped.WEIGHTS_DIR / shipped.SHIPPED_MODEL_FILE).read_bytes())
report["pt_rc"] = main(["predict", str(files[0]), "--model_path", str(out / "copy.pt")])
report["torch_loaded"] = sorted(m for m in sys.modules if m.split(".")[0] == "torch"
                                and sys.modules[m] is not None)
print("REPORT" + json.dumps(report))
"""


@pytest.mark.realdata
def test_light_install_scores_like_the_full_one(real_data_root: Path, tmp_path: Path) -> None:
    from pneumonia_cxr.inference.predictor import Predictor

    files = _sample(real_data_root)
    code = "from pneumonia_cxr.model import shipped\n" + LIGHT_SESSION
    result = _run_light(code, str(tmp_path), *map(str, files))
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT")]
    assert lines, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(lines[0][len("REPORT") :])
    codes = ("predict", "data", "shard0", "shard1", "resume", "merge")
    assert [report[f"{name}_rc"] for name in codes] == [0] * len(codes), result.stderr[-3000:]
    assert report["torch_loaded"] == []
    assert "model: " in result.stderr and shipped.SHIPPED_ONNX_FILE in result.stderr

    # The full install's PyTorch engine on the shipped .pt: same labels, |dp| <= 1e-4.
    full = Predictor.open(shipped.default_model_path(), engine="torch", device="cpu")
    expected = full.results(full.score_files(files).scores)
    rows = read_table(tmp_path / "p.csv")
    assert [r["state"] for r in rows] == [r.state for r in expected]
    assert [r["label"] for r in rows] == [r.label for r in expected]
    light_p = [float(r["probability"] or r["unassessed_probability"]) for r in rows]
    full_p = [r.probabilities["pneumonia"] for r in expected]
    assert np.max(np.abs(np.array(light_p) - full_p)) <= 1e-4
    merged = read_table(tmp_path / "merged.csv")
    keys = ("path", "state", "probability", "label")
    assert [[r[k] for k in keys] for r in merged] == [[r[k] for k in keys] for r in rows]
    assert re.search(r"; 4 kept from before", result.stderr)  # the resumed shard: all 4 kept
    api = report["api"]
    assert [a[1] for a in api] == [r.label for r in expected]
    assert [a[2] for a in api] == [r.pneumonia_type for r in expected]
    assessed = [i for i, r in enumerate(expected) if r.assessed]
    api_p = np.array([api[i][0] for i in assessed])
    assert np.max(np.abs(api_p - [expected[i].probability for i in assessed])) <= 1e-4

    assert report["ready"] == 200 and report["model"] == 200
    [served] = report["serve"]["results"]
    assert served["label"] == expected[-1].label
    assert abs(served["probability"] - expected[-1].probability) < 1e-4

    # The shipped .pt scores through its ONNX twin; any other .pt, and what needs PyTorch,
    # say which install they need and exit with the usage code.
    assert report["shipped_pt_rc"] == 0
    assert report["train_rc"] == 2 and report["pt_rc"] == 2
    assert "`pneumonia-cxr train` needs '" in result.stderr
    assert "pneumonia-cxr[full]" in result.stderr
    assert "a PyTorch model file (.pt) needs the full install" in result.stderr


def test_the_shipped_onnx_is_the_shipped_models_export() -> None:
    """Same metadata document as an export of the shipped `.pt` would carry, same outputs as
    its PyTorch engine (the export itself is byte-reproducible: `pneumonia-cxr export` of the
    shipped file gives the pinned sha256, checked by hand in the issue note)."""
    import torch

    from pneumonia_cxr.export import onnx_metadata
    from pneumonia_cxr.inference.engines import OnnxEngine
    from pneumonia_cxr.inference.torch_engine import TorchEngine
    from pneumonia_cxr.model.model_file import load_model

    bundle = load_model(shipped.default_model_path())
    engine = OnnxEngine(shipped.shipped_onnx_path())
    assert engine.metadata == json.loads(json.dumps(onnx_metadata(bundle)))
    size = bundle.preprocessing.image_size
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0)).numpy()
    ours, theirs = engine.score(images), TorchEngine(bundle, "cpu").score(images)
    for name in ("logits", "ood_scores", "guard_scores"):
        np.testing.assert_allclose(getattr(ours, name), getattr(theirs, name), atol=1e-4)
    assert set(ours.answer_logits) == set(theirs.answer_logits) == {"type"}
    np.testing.assert_allclose(ours.answer_logits["type"], theirs.answer_logits["type"], atol=1e-4)
