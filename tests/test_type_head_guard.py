"""Issue 27's type head and issue 25's applicability guard: labels, model file, engines, checks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_loader import dicom_bytes
from tiny_runs import tiny_config

from pneumonia_cxr.data.discovery import ImageRecord
from pneumonia_cxr.data.loader import decode_xray_with_facts
from pneumonia_cxr.data.pneumonia_types import (
    check_trainable,
    read_labels_csv,
    type_labels,
)
from pneumonia_cxr.data.split import read_split_csv
from pneumonia_cxr.errors import DatasetLayoutError, ModelFileError
from pneumonia_cxr.inference.predictor import Predictor
from pneumonia_cxr.model.classifier import PneumoniaNet
from pneumonia_cxr.model.intended_use import (
    KERMANY_INTENDED_USE,
    REASON_WORDS,
    age_years,
    out_of_scope,
)
from pneumonia_cxr.model.model_file import load_model, save_model
from pneumonia_cxr.predict import predict_paths, rows_to_csv
from pneumonia_cxr.run_folder import SPLIT_FILE
from pneumonia_cxr.training.guard_fit import fit_guard
from pneumonia_cxr.training.run import train


def _record(name: str, label: int = 1, folder: str = "PNEUMONIA") -> ImageRecord:
    return ImageRecord(Path(f"/d/train/{folder}/{name}"), "train", label)


def test_type_labels_from_names_folders_and_csv(tmp_path: Path) -> None:
    records = [
        _record("person1_bacteria_1.jpeg"),
        _record("person2_virus_3.jpeg"),
        _record("IM-0001-0001.jpeg", 0, "NORMAL"),
        _record("x.png", folder="VIRAL"),
        _record("y.png"),
        _record("z.png"),
    ]
    (tmp_path / "labels.csv").write_text("file,type\nz.png,Bacterial\n")
    assert type_labels(records, read_labels_csv(tmp_path)) == [0, 1, -1, 1, -1, 0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,type\na.png,fungal\n", "fungal"),
        ("file,type\na.png,viral\na.png,bacterial\n", "both"),
        ("name,kind\na.png,viral\n", "file,type"),
    ],
)
def test_labels_csv_errors_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(DatasetLayoutError, match=message):
        read_labels_csv(tmp_path)


def test_labels_csv_naming_a_missing_file_and_one_type_only_are_refused() -> None:
    with pytest.raises(DatasetLayoutError, match="ghost.png"):
        type_labels([_record("a.png")], {"ghost.png": 1})
    with pytest.raises(DatasetLayoutError, match="BACTERIAL only"):
        check_trainable([0, 0, -1])


@pytest.fixture(scope="module")
def typed_run(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = tiny_config(
        tiny_synthetic, tmp_path_factory.mktemp("typed"), "typed", stage1_epochs=1, stage2_epochs=0
    )
    config.model.type_head, config.train.monitor = "on", "val_mean_auc"
    return train(config)


def test_typed_model_file_engines_and_table(typed_run: Path, tiny_synthetic: Path) -> None:
    bundle = load_model(typed_run / "final_pneumonia_model.pt")
    assert bundle.has_type_head and bundle.type_decision.rule == "youden"
    assert 0.0 < bundle.type_decision.threshold < 1.0
    assert (
        torch.load(typed_run / "final_pneumonia_model.pt", weights_only=True)["format_version"] == 3
    )
    files = sorted((tiny_synthetic / "test").rglob("*.png"))[:12]
    torch_rows = predict_paths(
        Predictor.open(typed_run / "final_pneumonia_model.pt", engine="torch"), files
    )
    onnx_rows = predict_paths(
        Predictor.open(typed_run / "final_pneumonia_model.pt", engine="onnx"), files
    )
    for a, b in zip(torch_rows, onnx_rows, strict=True):
        assert a.state == b.state and a.pneumonia_type == b.pneumonia_type
        if not a.assessed:
            assert a.p_viral is None and a.label == a.pneumonia_type == ""
            assert abs(a.result.probabilities["type"] - b.result.probabilities["type"]) < 1e-5
            continue
        assert a.p_viral is not None and abs(a.p_viral - b.p_viral) < 1e-5
        if a.label == "NORMAL":
            assert a.pneumonia_type == ""
        else:
            expected = "VIRAL" if a.p_viral >= bundle.type_decision.threshold else "BACTERIAL"
            assert a.pneumonia_type == expected
    header = rows_to_csv(torch_rows).splitlines()[0].split(",")
    assert header[:6] == ["path", "state", "probability", "label", "p_viral", "pneumonia_type"]


def test_binary_model_keeps_its_columns_and_an_old_file_still_loads(
    session_tiny_model: Path, tiny_synthetic: Path, tmp_path: Path
) -> None:
    payload = torch.load(session_tiny_model, weights_only=True)
    assert payload["format_version"] == 3 and payload["guard"]  # train fits the guard
    files = sorted((tiny_synthetic / "test").rglob("*.png"))[:3]
    rows = predict_paths(load_model(session_tiny_model), files)
    assert "p_viral" not in rows_to_csv(rows).splitlines()[0]
    assert all(r.p_viral is None and r.pneumonia_type == "" for r in rows)
    for key in ("guard", "intended_use", "type_decision"):  # a file written before issue 25
        payload.pop(key, None)
    payload["format_version"] = 2
    torch.save(payload, tmp_path / "old.pt")
    old = load_model(tmp_path / "old.pt")
    assert old.guard is None and old.intended_use == KERMANY_INTENDED_USE
    old_rows = predict_paths(old, files)
    assert [r.probability for r in old_rows] == [r.probability for r in rows]


def test_init_from_binary_keeps_its_weights_and_adds_a_fresh_type_head(
    session_tiny_model: Path,
) -> None:
    from pneumonia_cxr.training.init_from import load_parent_weights

    parent = load_model(session_tiny_model).model
    net = PneumoniaNet("resnet18", "none", head_dims=parent.head_dims, type_head=8)
    load_parent_weights(net, session_tiny_model)
    assert torch.equal(net.head[0].weight, parent.head[0].weight)
    assert net.has_type_head


@pytest.mark.parametrize(
    ("text", "years"),
    [
        ("045Y", 45.0),
        ("003Y", 3.0),
        ("018M", 1.5),
        ("045", None),
        ("45", None),
        ("3M", None),
        ("", None),
    ],
)
def test_dicom_age_parsing(text: str, years: float | None) -> None:
    assert age_years(text) == years


def _dicom_facts(**elements: object):
    pixels = (np.arange(64 * 64) % 251).reshape(64, 64).astype(np.uint8)
    return decode_xray_with_facts(dicom_bytes(pixels, **elements), "x.dcm")[1]


def test_dicom_header_checks() -> None:
    use = KERMANY_INTENDED_USE
    adult = out_of_scope(_dicom_facts(PatientAge="045Y", ViewPosition="PA"), use)
    assert len(adult) == 1 and adult[0].kind == "age" and "PatientAge 045Y" in adult[0].detail
    assert (
        out_of_scope(
            _dicom_facts(PatientAge="003Y", ViewPosition="AP", BodyPartExamined="CHEST"), use
        )
        == []
    )
    lateral = out_of_scope(_dicom_facts(PatientAge="003Y", ViewPosition="LL"), use)
    assert len(lateral) == 1 and "ViewPosition LL" in lateral[0].detail
    # unknown values are neither in scope nor out of it
    assert out_of_scope(_dicom_facts(PatientAge="3M", ViewPosition="XYZ"), use) == []
    assert "Modality MR" in out_of_scope(_dicom_facts(Modality="MR"), use)[0].detail


def _encoded(image: Image.Image, kind: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kind)
    return buffer.getvalue()


def test_colour_is_measured_before_gray_conversion() -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (96, 96), dtype=np.uint8)
    gray_as_rgb = Image.fromarray(np.stack([gray] * 3, axis=-1), "RGB")
    colour = Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8), "RGB")
    assert decode_xray_with_facts(_encoded(Image.fromarray(gray), "PNG"), "a.png")[1].chroma is None
    assert decode_xray_with_facts(_encoded(gray_as_rgb, "JPEG"), "b.jpeg")[1].chroma < 2.0
    facts = decode_xray_with_facts(_encoded(colour, "PNG"), "c.png")[1]
    assert facts.chroma > 20 and out_of_scope(facts, KERMANY_INTENDED_USE)[0].kind == "colour"


def test_guard_round_trip_flags_noise_and_refuses_a_mismatch(
    session_tiny_model: Path, tmp_path: Path, tiny_synthetic: Path
) -> None:
    bundle = load_model(session_tiny_model)
    split = read_split_csv(session_tiny_model.parent / SPLIT_FILE)
    guard = fit_guard(
        bundle, split.train, split.val, fitted_on="tiny", fit_images=40, norm_images=20
    )
    assert guard.layers == ("layer1", "layer2", "layer3") and np.isfinite(guard.cutoff)
    path = save_model(bundle, tmp_path / "guarded.pt")
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)).save(noise)
    xrays = sorted((tiny_synthetic / "test").rglob("*.png"))[:8]
    for engine in ("torch", "onnx"):
        rows = predict_paths(Predictor.open(path, engine=engine), [noise, *xrays])
        assert rows[0].out_of_distribution and rows[0].state == "not assessed"
        assert rows[0].reason == REASON_WORDS["features"] and rows[0].label == ""
        assert sum(r.out_of_distribution for r in rows[1:]) <= 2
    payload = torch.load(path, weights_only=True)
    payload["guard"]["densities"][0]["mean"] = torch.zeros(3)
    torch.save(payload, tmp_path / "broken.pt")
    with pytest.raises(ModelFileError, match="guard"):
        load_model(tmp_path / "broken.pt")


def test_type_metrics_count_the_chain_of_both_heads() -> None:
    from pneumonia_cxr.evaluation.type_metrics import type_metrics
    from pneumonia_cxr.model.decision import TypeDecision

    # NORMAL x2 (one called PNEUMONIA), BACTERIAL x3, VIRAL x3 (one missed), one unknown type.
    labels = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1])
    types = [-1, -1, 0, 0, 0, 1, 1, 1, -1]
    decisions = np.array([0, 1, 1, 1, 1, 1, 1, 0, 1])
    p_viral = np.array([0.9, 0.2, 0.1, 0.3, 0.7, 0.8, 0.6, 0.9, 0.5])
    block = type_metrics(labels, types, decisions, p_viral, TypeDecision(0.5, "youden"), 200)
    assert block["three_class"]["rows"][-1] == "PNEUMONIA (type unknown)"
    assert block["three_class"]["matrix"] == [[1, 1, 0], [0, 2, 1], [1, 0, 2], [0, 0, 1]]
    assert (block["n_known_type"], block["n_unknown_type"]) == (6, 1)
    hits = block["accuracy_among_true_positives"]
    assert (hits["n"], hits["correct"]) == (5, 4)  # the missed VIRAL is not a true positive
    vs = block["viral_vs_bacterial"]
    assert (vs["n_positive"], vs["n_negative"]) == (3, 3)
    assert vs["roc_auc"]["value"] == pytest.approx(8 / 9)
    assert vs["at_threshold"]["sensitivity"]["value"] == pytest.approx(1.0)
    assert vs["at_threshold"]["specificity"]["value"] == pytest.approx(2 / 3)


def test_evaluate_reports_the_type(typed_run: Path, tiny_synthetic: Path, tmp_path: Path) -> None:
    import csv

    from pneumonia_cxr.evaluation.evaluate import evaluate_model

    result = evaluate_model(
        typed_run / "final_pneumonia_model.pt",
        tiny_synthetic,
        output_dir=tmp_path,
        n_resamples=50,
        explain_images=0,
    )
    block = result.metrics["pneumonia_type"]
    assert block["n_known_type"] == result.metrics["n_positive"] - block["n_unknown_type"]
    three = np.array(block["three_class"]["matrix"])
    assert three.sum() == result.metrics["n"]
    assert three[0].sum() == result.metrics["n_negative"]
    assert (tmp_path / "roc_type.png").is_file()
    with (tmp_path / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {"true_type", "p_viral", "pneumonia_type", "reason"} <= set(rows[0])
    called = [r for r in rows if r["label"] == "PNEUMONIA"]
    assert called and all(r["state"] == "assessed" for r in called)
    assert all(r["pneumonia_type"] in ("BACTERIAL", "VIRAL") for r in called)
    assert all(r["pneumonia_type"] == "" for r in rows if r["label"] != "PNEUMONIA")
    assert "VIRAL vs BACTERIAL" in result.report.read_text()
    typed = result.summary.pneumonia_type  # the typed reading of the same block
    assert typed is not None and typed.n == block["n_known_type"]
    assert typed.roc_auc.value == block["viral_vs_bacterial"]["roc_auc"]["value"]


def test_the_service_says_the_type(typed_run: Path, tiny_synthetic: Path) -> None:
    from fastapi.testclient import TestClient

    from pneumonia_cxr.serve.app import create_app
    from pneumonia_cxr.serve.service import ServeConfig

    model = typed_run / "final_pneumonia_model.pt"
    files = sorted((tiny_synthetic / "test" / "PNEUMONIA").glob("*.png"))[:4]
    expected = predict_paths(Predictor.open(model, device="cpu"), files)
    with TestClient(create_app(ServeConfig(model_path=model, device="cpu"))) as client:
        for _ in range(600):
            if client.get("/ready").status_code == 200:
                break
            import time

            time.sleep(0.1)
        info = client.get("/v1/model").json()
        assert info["type"]["class_names"] == ["BACTERIAL", "VIRAL"]
        assert info["type"]["threshold"] == load_model(model).type_decision.threshold
        upload = [("file", (p.name, p.read_bytes())) for p in files]
        results = client.post("/v1/predict?gradcam=true", files=upload).json()["results"]
    for result, row in zip(results, expected, strict=True):
        assert result["gradcam_type_png_base64"] != result["gradcam_png_base64"]
        assert result["p_viral"] == pytest.approx(row.p_viral, abs=1e-4)
        assert result["pneumonia_type"] == row.pneumonia_type
        assert "reason" in result


def test_type_folders_inside_pneumonia_are_read_and_counted(
    tiny_synthetic: Path, tmp_path: Path
) -> None:
    from pneumonia_cxr.data.discovery import list_images
    from pneumonia_cxr.data.summary import format_summary, summarize_dataset

    sources = sorted((tiny_synthetic / "train" / "PNEUMONIA").glob("*.png"))[:6]
    normal = sorted((tiny_synthetic / "train" / "NORMAL").glob("*.png"))[:2]
    for split in ("train", "val", "test"):
        root = tmp_path / "d" / split
        for index, source in enumerate(sources):
            folder = ("BACTERIAL", "viral", "")[index % 3]  # any case; loose files allowed
            target = root / "PNEUMONIA" / folder / f"scan{index}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source)
        (root / "NORMAL").mkdir(parents=True)
        for index, source in enumerate(normal):
            (root / "NORMAL" / f"n{index}.png").symlink_to(source)
    records = list_images(tmp_path / "d", ["train"])
    assert len(records) == 8
    assert type_labels(records) == [-1, -1, 0, 0, -1, -1, 1, 1]  # NORMAL, BACTERIAL, loose, VIRAL
    summary = summarize_dataset(tmp_path / "d", check_readable=False)
    assert summary["pneumonia_types"]["train"] == {"BACTERIAL": 2, "VIRAL": 2, "unknown": 2}
    assert "2 BACTERIAL, 2 VIRAL, 2 unknown" in format_summary(summary)
    (tmp_path / "d" / "train" / "NORMAL" / "VIRAL").mkdir()  # only PNEUMONIA has type folders
    with pytest.raises(DatasetLayoutError, match="type folders"):
        list_images(tmp_path / "d", ["train"])


def test_calibrate_refits_the_type_threshold_on_a_typed_site(
    typed_run: Path, tiny_synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from pneumonia_cxr.cli import main

    site = tmp_path / "site"
    for split in ("train", "test"):
        for path in (tiny_synthetic / split).rglob("*.png"):
            target = site / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
    output = tmp_path / "site.pt"
    model = str(typed_run / "final_pneumonia_model.pt")
    args = ["calibrate", "--model_path", model, "--dataset_path", str(site), "--force"]
    assert main([*args, "--output", str(output)]) == 0
    assert "type threshold refitted on the site" in capsys.readouterr().out
    calibrated = load_model(output)
    record = calibrated.extra["calibration"]["type"]
    assert record["refitted"] and calibrated.type_decision.threshold == record["threshold"]
    assert "calibration site" in calibrated.type_decision.fitted_on


def test_type_heatmaps_explain_the_type_logit(
    typed_run: Path, session_tiny_model: Path, tiny_synthetic: Path, tmp_path: Path
) -> None:
    from pneumonia_cxr.explain.gradcam import model_cams

    model = load_model(typed_run / "final_pneumonia_model.pt")
    files = sorted((tiny_synthetic / "test" / "PNEUMONIA").glob("*.png"))[:2]
    rows = predict_paths(
        model, files, gradcam_dir=tmp_path / "maps", gradcam_target="type", device="cpu"
    )
    assert all(Path(r.heatmap).name.endswith("_gradcam_type.png") for r in rows)
    predictor = Predictor.from_bundle(model, "cpu")
    images = torch.from_numpy(np.stack([predictor.load_input(f)[0] for f in files]))
    pneumonia = model_cams(model.model, images)
    kind = model_cams(model.model, images, target="type")
    assert kind.shape == pneumonia.shape and not np.allclose(kind, pneumonia)
    with pytest.raises(ValueError, match="has no 'type' head"):
        predict_paths(
            load_model(session_tiny_model), files, gradcam_dir=tmp_path / "x", gradcam_target="type"
        )


def test_shipped_model_reads_the_dicom_header_of_a_kermany_film(
    real_data_root: Path, tmp_path: Path
) -> None:
    from pneumonia_cxr.model.shipped import default_model_path

    source = sorted((real_data_root / "test" / "NORMAL").glob("*.jpeg"))[0]
    pixels = np.asarray(Image.open(source).convert("L"))
    cases = {"adult": ("045Y", "AP"), "child": ("003Y", "AP"), "lateral": ("003Y", "LL")}
    files = []
    for name, (age, view) in cases.items():
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(dicom_bytes(pixels, PatientAge=age, ViewPosition=view, Modality="CR"))
        files.append(path)
    predictor = Predictor.open(default_model_path(), engine="torch", device="cpu")
    adult, child, lateral = predict_paths(predictor, files)
    assert adult.out_of_distribution and adult.state == "not assessed" and adult.label == ""
    assert "age" in adult.reason and any("PatientAge 045Y" in d for d in adult.details)
    assert "age" not in child.reason and not any("ViewPosition" in d for d in child.details)
    assert lateral.out_of_distribution and lateral.reason == "not a frontal chest X-ray"
    assert any("ViewPosition LL" in d for d in lateral.details)
