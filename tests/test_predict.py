"""predict: files and folders in, one row per image out; bad files become rows, never crashes."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pneumonia_cxr import CLASS_NAMES
from pneumonia_cxr.cli import main
from pneumonia_cxr.data.loader import load_xray
from pneumonia_cxr.data.transforms import build_transforms
from pneumonia_cxr.errors import ModelFileError
from pneumonia_cxr.model.model_file import load_model
from pneumonia_cxr.model.outputs import PNEUMONIA, table_columns
from pneumonia_cxr.predict import (
    PredictionRow,
    expand_paths,
    predict_paths,
    rows_to_csv,
)

BAD_FILES: dict[str, str] = {  # file -> words its error must say (no class names)
    "corrupt.png": "truncated",  # a truncated PNG
    "fake.jpeg": "not JPEG, PNG or DICOM",  # text with an image extension
    "empty.png": "empty (0 bytes)",
}


@pytest.fixture(scope="module")
def model_file(session_tiny_model: Path) -> Path:
    return session_tiny_model


@pytest.fixture(scope="module")
def folder(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two good images (one in a subfolder, same name as a third elsewhere), bad files, a note."""
    root = tmp_path_factory.mktemp("inbox")
    normal = sorted((tiny_synthetic / "test" / "NORMAL").glob("*.png"))[0]
    pneumonia = sorted((tiny_synthetic / "test" / "PNEUMONIA").glob("*.png"))[0]
    shutil.copy(normal, root / "a.png")
    (root / "sub").mkdir()
    shutil.copy(pneumonia, root / "sub" / "b.png")
    (root / "corrupt.png").write_bytes(normal.read_bytes()[:120])
    (root / "fake.jpeg").write_text("not an image\n")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("ignored: not an image extension\n")
    return root


def _read_csv(text: str) -> dict[str, dict[str, str]]:
    return {Path(row["path"]).name: row for row in csv.DictReader(io.StringIO(text))}


def test_folder_with_bad_files_gives_error_rows_and_exit_code_0(
    model_file: Path, folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results.csv"
    assert (
        main(["predict", str(folder), "--model_path", str(model_file), "--output", str(out)]) == 0
    )
    rows = _read_csv(out.read_text())
    assert set(rows) == {"a.png", "b.png", *BAD_FILES}  # notes.txt is not an image file
    for name in ("a.png", "b.png"):
        assert rows[name]["error"] == ""
        assert 0.0 <= float(rows[name]["probability"]) <= 1.0
        assert rows[name]["label"] in CLASS_NAMES
    for name, words in BAD_FILES.items():
        assert words in rows[name]["error"] and "Error" not in rows[name]["error"], rows[name]
        assert rows[name]["state"] == "unreadable"
        assert rows[name]["probability"] == "" and rows[name]["label"] == ""


def test_json_output_holds_the_same_rows_as_csv(
    model_file: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "results.json"
    assert (
        main(["predict", str(folder), "--model_path", str(model_file), "--output", str(out)]) == 0
    )
    as_json = {Path(row["path"]).name: row for row in json.loads(out.read_text())}
    capsys.readouterr()
    assert main(["predict", str(folder), "--model_path", str(model_file), "--no_progress"]) == 0
    as_csv = _read_csv(capsys.readouterr().out)  # no --output: CSV on stdout
    assert set(as_json) == set(as_csv)
    for name, row in as_json.items():
        assert list(row) == table_columns([PNEUMONIA])
        assert row["label"] == as_csv[name]["label"] and row["error"] == as_csv[name]["error"]
        if row["probability"] is None:
            assert as_csv[name]["probability"] == ""
        else:
            assert row["probability"] == pytest.approx(float(as_csv[name]["probability"]), abs=1e-6)


def test_exit_code_is_nonzero_when_no_image_can_be_read(
    model_file: Path, folder: Path, tmp_path: Path
) -> None:
    bad = [str(folder / name) for name in BAD_FILES] + [str(tmp_path / "missing.png")]
    out = tmp_path / "bad.csv"
    assert main(["predict", *bad, "--model_path", str(model_file), "--output", str(out)]) == 1
    rows = _read_csv(out.read_text())
    assert "not found" in rows["missing.png"]["error"]
    assert all(row["error"] for row in rows.values())


def test_an_explicit_file_is_judged_by_content_not_extension(
    model_file: Path, folder: Path
) -> None:
    rows = predict_paths(load_model(model_file), [folder / "notes.txt"], device="cpu")
    assert [("not JPEG, PNG or DICOM" in row.error, row.state) for row in rows] == [
        (True, "unreadable")
    ]


def test_probabilities_follow_the_model_files_own_pipeline(model_file: Path, folder: Path) -> None:
    bundle = load_model(model_file)
    good = [folder / "a.png", folder / "sub" / "b.png"]
    transform = build_transforms(bundle.preprocessing)
    with torch.no_grad():
        batch = torch.stack([transform(load_xray(path)) for path in good])
        expected = bundle.probabilities(bundle.model.eval()(batch)[:, 0]).tolist()
    for batch_size in (1, 32):
        rows = predict_paths(bundle, good, batch_size=batch_size, device="cpu")
        assert [row.probability for row in rows] == pytest.approx(expected, abs=1e-5)
        assert [row.label for row in rows] == [
            CLASS_NAMES[int(p >= bundle.threshold)] for p in expected
        ]


def test_gradcam_overlays_are_named_after_their_files(
    model_file: Path, folder: Path, tmp_path: Path
) -> None:
    twin = tmp_path / "elsewhere"
    twin.mkdir()
    shutil.copy(folder / "a.png", twin / "a.png")  # same file name in another folder
    cams = tmp_path / "cams"
    rows = predict_paths(
        load_model(model_file), [folder, twin], device="cpu", gradcam_dir=cams, batch_size=2
    )
    heatmaps = {Path(row.heatmap).name for row in rows if row.heatmap}
    assert heatmaps == {"a_gradcam.png", "b_gradcam.png", "a_2_gradcam.png"}
    assert all(not row.heatmap for row in rows if row.error)
    with Image.open(cams / "b_gradcam.png") as overlay:
        original = load_xray(folder / "sub" / "b.png")
        assert overlay.mode == "RGB" and overlay.size == (original.shape[2], original.shape[1])
    assert "heatmap" in rows_to_csv(rows).splitlines()[0]


def test_predict_refuses_a_model_whose_preprocessing_does_not_match(
    model_file: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    payload = torch.load(model_file, map_location="cpu", weights_only=True)
    payload["preprocessing"]["std"] = [1.0, 1.0, 1.0]
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(ModelFileError, match="std"):
        predict_paths(load_model(tmp_path / "edited.pt"), [folder / "a.png"])
    assert main(["predict", str(folder), "--model_path", str(tmp_path / "edited.pt")]) == 2
    assert capsys.readouterr().err.startswith("error:")


def test_expand_paths_recurses_folders_and_keeps_missing_paths(
    folder: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.png"
    paths = expand_paths([folder, missing])
    names = ["a.png", "corrupt.png", "empty.png", "fake.jpeg", "b.png", "nope.png"]
    assert [p.name for p in paths] == names  # sorted, recursive, notes.txt left out
    assert paths[4].parent.name == "sub" and paths[-1] == missing


@pytest.mark.parametrize(
    ("row", "ok"),
    [(PredictionRow("x.png"), True), (PredictionRow("y.png", error="E"), False)],
)
def test_row_ok_means_no_error(row: PredictionRow, ok: bool) -> None:
    assert row.ok is ok


def test_auto_engine_uses_onnx_runtime_on_cpu_and_torch_for_gradcam(model_file: Path) -> None:
    from pneumonia_cxr.inference import AUTO_CPU_ENGINES
    from pneumonia_cxr.inference.engines import OnnxEngine, OpenVinoEngine
    from pneumonia_cxr.inference.predictor import Predictor
    from pneumonia_cxr.inference.torch_engine import TorchEngine

    first = {"openvino": OpenVinoEngine, "onnx": OnnxEngine}[AUTO_CPU_ENGINES[0]]
    assert type(Predictor.open(model_file, device="cpu").engine) is first
    assert isinstance(Predictor.open(model_file, gradcam=True).engine, TorchEngine)
    assert isinstance(Predictor.open(model_file, engine="torch").engine, TorchEngine)


def test_batches_of_files_equal_the_single_image_transform_exactly(real_data_root: Path) -> None:
    """Scoring files finishes each batch at once (`evaluation_stages`); the numbers must be the
    single-image pipeline's, bit for bit (the shipped model: its JPEG q75 step included)."""
    from pneumonia_cxr.inference.predictor import Predictor
    from pneumonia_cxr.model.shipped import resolve_model_path

    predictor = Predictor.open(resolve_model_path(None), engine="torch", device="cpu")
    assert predictor.engine.preprocessing.jpeg_quality  # the per-image part is not a no-op
    paths = sorted((real_data_root / "test").glob("*/*.jpeg"))[::60]
    batches = [b["image"] for b in predictor.iter_inputs(paths, batch_size=4)]
    single = np.stack([predictor.load_input(p)[0] for p in paths])
    assert np.array_equal(np.concatenate(batches), single)
    in_workers = [b["image"] for b in predictor.iter_inputs(paths, batch_size=3, num_workers=2)]
    assert np.array_equal(np.concatenate(in_workers), single)


def test_a_reader_thread_decodes_ahead_beside_onnx_runtime_only(
    model_file: Path, folder: Path, monkeypatch
) -> None:
    """ORT/OpenVINO own the cores while they score: a reader thread decodes ahead (numpy and
    Pillow: no PyTorch threads to share); the PyTorch engine decodes in the caller's thread,
    and an early exit leaves no reader behind."""
    import threading

    from pneumonia_cxr.inference import batching as module
    from pneumonia_cxr.inference.predictor import Predictor

    decoded: list[str] = []
    real_load_input = module.load_input_with_facts

    def recording_load_input(*args, **kwargs):
        decoded.append(threading.current_thread().name)
        return real_load_input(*args, **kwargs)

    monkeypatch.setattr(module, "load_input_with_facts", recording_load_input)
    paths = sorted(folder.glob("*.png"))
    onnx = Predictor.open(model_file, engine="onnx", device="cpu")
    assert len(list(onnx.iter_files(paths, batch_size=1))) == len(paths)
    assert {name.startswith(module.READER_THREAD) for name in decoded} == {True}
    for _ in onnx.iter_files(paths, batch_size=1):
        break
    assert not [t for t in threading.enumerate() if t.name.startswith(module.READER_THREAD)]
    decoded.clear()
    torch_engine = Predictor.open(model_file, engine="torch", device="cpu")
    assert len(list(torch_engine.iter_files(paths))) >= 1
    assert set(decoded) == {threading.current_thread().name}


def test_reading_ahead_keeps_file_order_errors_and_scores(
    model_file: Path, folder: Path, tiny_synthetic: Path
) -> None:
    """The reader thread changes when files are decoded, never what comes out."""
    from pneumonia_cxr.inference.predictor import Predictor

    good = sorted(tiny_synthetic.glob("test/*/*.png"))[:6]
    paths = [*good[:3], folder / "corrupt.png", *good[3:], folder / "empty.png"]
    runs = {}
    for engine in ("onnx", "torch"):
        predictor = Predictor.open(model_file, engine=engine, device="cpu")
        runs[engine] = predictor.score_files(paths, batch_size=2)
    fast, reference = runs["onnx"], runs["torch"]
    assert fast.indices == reference.indices == [0, 1, 2, 4, 5, 6]
    assert fast.errors.keys() == reference.errors.keys() == {3, 7}
    np.testing.assert_allclose(fast.scores.probabilities, reference.scores.probabilities, atol=1e-5)


@pytest.fixture
def counted_builds(monkeypatch, tmp_path: Path) -> list[Path]:
    """Every network `Predictor.open` builds, with a cache of its own."""
    from pneumonia_cxr.model import model_file as module

    monkeypatch.setenv("PNEUMONIA_CXR_CACHE", str(tmp_path / "cache"))
    builds: list[Path] = []
    real_build = module.bundle_from_payload

    def counting_build(payload, path):
        builds.append(Path(path))
        return real_build(payload, path)

    monkeypatch.setattr(module, "bundle_from_payload", counting_build)
    return builds


def test_a_cached_export_of_a_model_file_opens_without_building_the_network(
    model_file: Path, tmp_path: Path, counted_builds: list[Path]
) -> None:
    """The file's bytes key its export: the second start skips timm and the network build; a
    rewritten file (a new threshold) is a new key, never the stale export."""
    from pneumonia_cxr.inference.predictor import Predictor
    from pneumonia_cxr.model.model_file import load_model, save_model

    copy = shutil.copy(model_file, tmp_path / "model.pt")
    first = Predictor.open(copy, engine="onnx")
    again = Predictor.open(copy, engine="onnx")
    assert len(counted_builds) == 1 and again.engine.path == first.engine.path
    bundle = load_model(copy)  # counted too: the same builder
    bundle.threshold = 0.61
    save_model(bundle, copy)
    rewritten = Predictor.open(copy, engine="onnx")
    assert len(counted_builds) == 3 and rewritten.threshold == pytest.approx(0.61)
    assert rewritten.engine.path != first.engine.path
    assert Predictor.open(copy, engine="torch").threshold == pytest.approx(0.61)


def test_an_inconsistent_model_file_fails_once_with_its_own_error(
    model_file: Path, tmp_path: Path, counted_builds: list[Path]
) -> None:
    from pneumonia_cxr.errors import ModelFileError
    from pneumonia_cxr.inference.predictor import Predictor

    payload = torch.load(model_file, weights_only=True)
    state = payload["members"][0]["state_dict"]
    state.pop(sorted(state)[0])
    broken = tmp_path / "broken.pt"
    torch.save(payload, broken)
    with pytest.raises(ModelFileError, match="incomplete or inconsistent"):
        Predictor.open(broken, device="cpu")
    assert counted_builds == [broken]


def test_without_any_exported_graph_runtime_auto_falls_back_to_pytorch(
    model_file: Path, tmp_path: Path, counted_builds: list[Path], monkeypatch
) -> None:
    import sys

    from pneumonia_cxr.inference.predictor import Predictor
    from pneumonia_cxr.inference.torch_engine import TorchEngine

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "openvino", None)
    copy = shutil.copy(model_file, tmp_path / "model.pt")
    predictor = Predictor.open(copy, device="cpu")
    assert isinstance(predictor.engine, TorchEngine) and len(counted_builds) == 1


def test_export_then_predict_with_onnx_matches_torch(
    model_file: Path, folder: Path, tmp_path: Path, capsys
) -> None:
    onnx_path = tmp_path / "model.onnx"
    assert main(["export", "--model_path", str(model_file), "--output", str(onnx_path)]) == 0
    assert onnx_path.is_file()
    capsys.readouterr()
    results = {}
    for engine, model in (("torch", model_file), ("auto", onnx_path)):
        out = tmp_path / f"{engine}.csv"
        args = ["predict", str(folder), "--model_path", str(model), "--output", str(out)]
        assert main([*args, "--engine", engine, "--no_progress"]) == 0
        results[engine] = _read_csv(out.read_text())
    for name in ("a.png", "b.png"):
        torch_row, onnx_row = results["torch"][name], results["auto"][name]
        assert float(onnx_row["probability"]) == pytest.approx(
            float(torch_row["probability"]), abs=1e-4
        )
        assert onnx_row["label"] == torch_row["label"]
    assert results["auto"]["corrupt.png"]["error"]
