"""A third answer is one registry entry (`model.outputs`): with a dummy output added to the
registry and its head to a tiny model, it appears in the CSV and JSON of `predict`, the ONNX
graph and its metadata, the API's rows and the service's JSON, with no other module edited."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pneumonia_cxr.archive import read_table
from pneumonia_cxr.cli import main
from pneumonia_cxr.data.discovery import list_images
from pneumonia_cxr.model import outputs
from pneumonia_cxr.model.decision import TypeDecision
from pneumonia_cxr.model.model_file import load_model, save_model

DUMMY = outputs.ModelOutput(
    name="dummy",
    logit_output="dummy_logit",
    cam_output="dummy_cam",
    probability_column="p_dummy",
    label_column="dummy_label",
    question="P(DUMMY)",
    build_head=lambda width: nn.Linear(width, 1),
)


@pytest.fixture
def dummy_model(session_tiny_model: Path, tmp_path: Path):
    """The tiny model with the dummy head (a fixed linear map: its answer is predictable)."""
    outputs.OUTPUTS.append(DUMMY)
    try:
        bundle = load_model(session_tiny_model)
        network = bundle.model.members[0]
        network.add_output("dummy")
        head = network.further_heads["dummy"]
        torch.manual_seed(0)
        nn.init.normal_(head.weight, std=0.5)
        bundle.further_decisions["dummy"] = TypeDecision(
            threshold=0.5, rule="fixed_0.5", class_names=("NO", "YES")
        )
        path = save_model(bundle, tmp_path / "dummy.pt")
        yield path, bundle
    finally:
        outputs.OUTPUTS.remove(DUMMY)


def _expected(bundle, files: list[Path]) -> np.ndarray:
    """sigmoid(head(pooled features)) computed here, from the network itself."""
    from pneumonia_cxr.inference.predictor import Predictor

    predictor = Predictor.from_bundle(bundle, "cpu")
    images = torch.from_numpy(np.stack([predictor.load_input(f)[0] for f in files]))
    network = bundle.model.members[0].eval()
    with torch.inference_mode():
        logit = network.further_heads["dummy"](network.features(images))[:, 0]
    return torch.sigmoid(logit).numpy()


def test_a_dummy_third_output_reaches_every_output(
    dummy_model, tiny_synthetic: Path, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    import pneumonia_cxr as pcx
    from pneumonia_cxr.export import export_onnx
    from pneumonia_cxr.inference.engines import OnnxEngine
    from pneumonia_cxr.serve.app import create_app
    from pneumonia_cxr.serve.service import ServeConfig

    path, bundle = dummy_model
    files = [r.path for r in list_images(tiny_synthetic, ["test"])][:6]
    expected = _expected(bundle, files)

    table, records = tmp_path / "rows.csv", tmp_path / "rows.json"
    for out in (table, records):
        args = ["predict", *map(str, files), "--model_path", str(path), "--output", str(out)]
        assert main([*args, "--engine", "torch", "--no_progress"]) == 0
    rows = read_table(table)
    assert {"p_dummy", "dummy_label", "unassessed_p_dummy"} <= set(rows[0])
    for row, p in zip(rows, expected, strict=True):
        number = float(row["p_dummy"] or row["unassessed_p_dummy"])
        assert number == pytest.approx(float(p), abs=1e-5)
        if row["state"] == "assessed":
            assert row["dummy_label"] == ("YES" if p >= 0.5 else "NO")
    as_json = json.loads(records.read_text())
    assert [r["dummy_label"] for r in as_json] == [r["dummy_label"] for r in rows]

    onnx = export_onnx(load_model(path), tmp_path / "dummy.onnx")
    engine = OnnxEngine(onnx)
    assert engine.metadata["extra_outputs"]["dummy"]["class_names"] == ["NO", "YES"]
    from pneumonia_cxr.inference.predictor import Predictor

    onnx_rows = pcx.load(onnx).predict(files)
    for row, p in zip(onnx_rows, expected, strict=True):
        assert row.result.probabilities["dummy"] == pytest.approx(float(p), abs=1e-5)
        assert "p_dummy" in row.values(Predictor(engine).outputs)

    with TestClient(create_app(ServeConfig(model_path=path, device="cpu"))) as client:
        deadline = time.monotonic() + 60
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        upload = [("file", (files[0].name, files[0].read_bytes()))]
        [answer] = client.post("/v1/predict", files=upload).json()["results"]
    number = answer["p_dummy"] if answer["p_dummy"] is not None else answer["unassessed_p_dummy"]
    assert number == pytest.approx(float(expected[0]), abs=1e-4)
    assert answer["thresholds"]["dummy"] == 0.5


def test_a_file_with_an_output_this_package_does_not_know_is_refused(dummy_model) -> None:
    from pneumonia_cxr.errors import ModelFileError

    path, _ = dummy_model
    outputs.OUTPUTS.remove(DUMMY)
    try:
        with pytest.raises(ModelFileError, match="dummy"):
            load_model(path)
    finally:
        outputs.OUTPUTS.append(DUMMY)
