"""`pneumonia-cxr adapt`: a new head on frozen features, chosen and estimated out of fold by
patient, written whatever the verdict; refusals only for what the data cannot support; resume
after SIGKILL; every consumer runs the adapted file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from pneumonia_cxr.cli import main
from pneumonia_cxr.data.site import list_site_images
from pneumonia_cxr.faults import FAULT_ENV
from pneumonia_cxr.model.model_file import load_model
from pneumonia_cxr.site import NOT_USEFUL_EXIT
from pneumonia_cxr.site.held_out import held_out_figures


def texture_site(
    folder: Path,
    per_class: int,
    seed: int,
    *,
    learnable: bool = True,
    first: int = 0,
    typed: bool = False,
) -> Path:
    """48-px films a tiny Kermany-trained model has never seen: NORMAL smoother (blur sigma
    1.0-2.0), PNEUMONIA finer (0.3-1.3; the classes overlap), equal mean and contrast; two
    films per patient. `learnable=False`: the labels are a coin toss. `typed`: a labels.csv
    says which PNEUMONIA film is viral (the smoother half, sigma 0.8-1.3) or bacterial."""
    rng = np.random.default_rng(seed)
    rows, types = ["file,patient"], ["file,type"]
    for index in range(2 * per_class):
        label = index % 2 if learnable else int(rng.integers(2))
        texture = index % 2
        sigma = rng.uniform(1.0, 2.0) if texture == 0 else rng.uniform(0.3, 1.3)
        if typed and label == 1:
            types.append(f"film{first + index}.png,{'viral' if sigma > 0.8 else 'bacterial'}")
        image = Image.fromarray(rng.normal(128, 40, (48, 48)).clip(0, 255).astype(np.uint8))
        pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(sigma)), dtype=np.float32)
        pixels = (pixels - pixels.mean()) / (pixels.std() + 1e-6) * 40 + 128
        name = ("NORMAL", "PNEUMONIA")[label]
        path = folder / name / f"film{first + index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)
        rows.append(f"{path.name},p{texture}_{(first + index) // 4}")
    (folder / "patients.csv").write_text("\n".join(rows) + "\n")
    if typed:
        (folder / "labels.csv").write_text("\n".join(types) + "\n")
    return folder


def _adapt(model: Path, site: Path, output: Path, *extra: str) -> int:
    args = ["--model_path", str(model), "--dataset_path", str(site), "--output", str(output)]
    recipes = () if "--recipes" in extra else ("--recipes", "probe_parent")
    return main(["adapt", *args, *recipes, "--device", "cpu", *extra])


@pytest.fixture(scope="module")
def adapted(session_tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One adaptation on site part A (70 films per class), part B (60 per class) kept apart."""
    root = tmp_path_factory.mktemp("adapt")
    site_a = texture_site(root / "A", 70, seed=1)
    site_b = texture_site(root / "B", 60, seed=2, first=1000)
    output = root / "site.pt"
    code = _adapt(session_tiny_model, site_a, output, "--min_sensitivity", "0.9")
    return {"code": code, "output": output, "A": site_a, "B": site_b, "root": root}


def test_adapt_makes_a_useful_model_where_the_parent_is_at_chance(
    adapted: dict, session_tiny_model: Path
) -> None:
    assert adapted["code"] == 0
    bundle = load_model(adapted["output"])
    record = bundle.extra["adaptation"]
    before, after = record["held_out_before"], record["out_of_fold_after"]
    assert not before["verdict"]["useful"] and before["roc_auc"]["ci_low"] < 0.5
    assert after["verdict"]["useful"] and after["roc_auc"]["value"] > 0.8
    assert record["site"]["images"] == {"NORMAL": 70, "PNEUMONIA": 70}
    assert record["site"]["patients"] == {"NORMAL": 35, "PNEUMONIA": 35}
    assert len(record["outer_folds_chose"]) == 5 and record["recipe"] == "probe_parent"
    nested = record["nested_at_target"]  # the threshold fitted inside each fold too
    assert 0.7 <= nested["sensitivity"]["value"] <= 1.0 and nested["specificity"]["ci_low"] > 0
    assert record["verdict_from"] in ("out of fold", "nested")
    assert bundle.model.probe_layers == ("layer1", "layer2", "layer3")
    # The parent's frozen backbone, a new head; the type is not carried over from Kermany.
    parent = load_model(session_tiny_model).model.backbone.state_dict()
    for name, tensor in bundle.model.backbone.state_dict().items():
        assert torch.equal(tensor, parent[name])
    assert bundle.type_decision is None and not record["type"]["available"]
    # Every consumer reads the verdict from the file (the service's /v1/model, the pages).
    assert bundle.decision.calibration["verdict"]["useful"]
    assert bundle.decision.calibration["adapted"] == "probe_parent"
    from pneumonia_cxr.model.decision import calibration_line

    assert calibration_line(bundle.decision.calibration).startswith("adapted on 140 local images")


def test_the_out_of_fold_estimate_and_threshold_hold_on_other_patients(adapted: dict) -> None:
    """The bar of issue 35 on a synthetic site: AUC on part B within 0.05 of the command's
    own out-of-fold estimate from part A, sensitivity on B within 0.1 of the 0.9 target."""
    record = load_model(adapted["output"]).extra["adaptation"]
    held = held_out_figures(adapted["output"], list_site_images(adapted["B"]), engine="torch")
    estimate = record["out_of_fold_after"]["roc_auc"]["value"]
    assert abs(held.metrics.roc_auc.value - estimate) <= 0.05, (held.metrics.roc_auc, estimate)
    assert abs(held.metrics.sensitivity.value - 0.9) <= 0.1, held.metrics.sensitivity
    assert held.metrics.threshold == record["out_of_fold_after"]["threshold"]


def test_the_site_report_holds_the_records_figures(adapted: dict) -> None:
    folder = adapted["root"] / "site_report"
    report = json.loads((folder / "site_report.json").read_text())
    record = load_model(adapted["output"]).extra["adaptation"]
    assert report["after_out_of_fold"]["roc_auc"] == record["out_of_fold_after"]["roc_auc"]
    assert report["before"]["roc_auc"] == record["held_out_before"]["roc_auc"]
    assert report["identity"]["parent_sha256"] == record["parent_sha256"]
    assert report["site"]["patients"] == {"NORMAL": 35, "PNEUMONIA": 35}
    assert len(report["roc"]["after_out_of_fold"]["probabilities"]) == 140
    page = (folder / "site_report.html").read_text()
    assert "Verdict: useful here" in page and "<svg" in page and "probe_parent (chosen)" in page


def test_the_adapted_file_runs_in_predict_and_its_onnx_export(adapted: dict) -> None:
    pytest.importorskip("onnxruntime")
    from pneumonia_cxr.inference.predictor import Predictor
    from pneumonia_cxr.predict import predict_paths

    paths = sorted(adapted["B"].rglob("*.png"))[:12]
    torch_rows = predict_paths(Predictor.open(adapted["output"], engine="torch"), paths)
    onnx_rows = predict_paths(Predictor.open(adapted["output"], engine="onnx"), paths)
    assert sum(r.result.state == "assessed" for r in torch_rows) >= 9  # its own site's films
    for left, right in zip(torch_rows, onnx_rows, strict=True):
        assert left.result.state == right.result.state and left.label == right.label
        if left.probability is not None:
            assert abs(left.probability - right.probability) < 1e-4
    from pneumonia_cxr.export import output_names

    assert "cam" in output_names(load_model(adapted["output"]))  # the pages draw its heatmap


def test_a_site_that_names_its_pneumonia_types_gets_its_own_type_head(
    session_tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    site = texture_site(tmp_path / "site", 50, seed=6, typed=True)
    output = tmp_path / "site.pt"
    assert _adapt(session_tiny_model, site, output) == 0
    bundle = load_model(output)
    kind = bundle.extra["adaptation"]["type"]
    assert kind["available"] and sum(kind["images"].values()) == 50
    assert kind["out_of_fold"]["roc_auc"]["value"] > 0.7  # sigma 0.3-0.8 against 0.8-1.3
    assert "out-of-fold predictions" in bundle.type_decision.fitted_on
    assert bundle.type_decision.threshold == kind["out_of_fold"]["threshold"]
    assert "type (bacterial/viral): fitted on the site" in capsys.readouterr().out
    from pneumonia_cxr.inference.predictor import Predictor
    from pneumonia_cxr.predict import predict_paths

    paths = sorted(site.rglob("*.png"))
    rows = predict_paths(Predictor.open(output, engine="torch"), paths)
    assert {r.pneumonia_type for r in rows if r.label == "PNEUMONIA"} == {"BACTERIAL", "VIRAL"}
    pytest.importorskip("onnxruntime")
    from pneumonia_cxr.export import output_names

    assert output_names(bundle)[-2:] == ["cam", "type_cam"]
    graph_rows = predict_paths(Predictor.open(output, engine="onnx"), paths)
    for left, right in zip(rows, graph_rows, strict=True):
        assert left.pneumonia_type == right.pneumonia_type


def test_an_unlearnable_site_gets_its_file_with_a_not_useful_verdict(
    session_tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    site = texture_site(tmp_path / "site", 40, seed=3, learnable=False)
    output = tmp_path / "site.pt"
    assert _adapt(session_tiny_model, site, output, "--force") == NOT_USEFUL_EXIT
    printed = capsys.readouterr().out
    assert "NOT useful here" in printed and "exit status 3" in printed
    verdict = load_model(output).decision.calibration["verdict"]
    assert not verdict["useful"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("one class", "NORMAL is missing"),
        ("few patients", "too few patients to cross-fit 5 folds: {'NORMAL': 3"),
        ("small", "images {'NORMAL': 12, 'PNEUMONIA': 12}, patients {'NORMAL': 6"),
    ],
)
def test_what_the_data_cannot_support_is_refused_with_its_numbers(
    session_tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture, case: str, message: str
) -> None:
    per_class = {"one class": 12, "few patients": 6, "small": 12}[case]
    site = texture_site(tmp_path / "site", per_class, seed=4)
    if case == "one class":
        for path in (site / "NORMAL").iterdir():
            path.unlink()
        (site / "NORMAL").rmdir()
    output = tmp_path / "site.pt"
    assert _adapt(session_tiny_model, site, output) == 2
    assert message in capsys.readouterr().err
    assert not output.exists()


def _adapt_process(model: Path, site: Path, output: Path, fault: str | None) -> int:
    env = {**os.environ, FAULT_ENV: fault} if fault else dict(os.environ)
    env.pop(FAULT_ENV, None) if not fault else None
    command = [sys.executable, "-m", "pneumonia_cxr.cli", "adapt", "--model_path", str(model)]
    command += ["--dataset_path", str(site), "--output", str(output)]
    command += ["--recipes", "probe_parent", "--batch_size", "16", "--device", "cpu"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    return done.returncode


@pytest.mark.slow
def test_killed_mid_features_and_mid_folds_it_resumes_to_the_same_model(
    session_tiny_model: Path, tmp_path: Path
) -> None:
    site = texture_site(tmp_path / "site", 40, seed=5)
    output = tmp_path / "site.pt"
    assert _adapt(session_tiny_model, site, tmp_path / "whole.pt") == 0
    kills = ("features:probe_parent:batch2", "write:fold2.json")
    for fault in kills:
        assert _adapt_process(session_tiny_model, site, output, fault) == -9
    features = np.load(tmp_path / "site_adapt" / "features" / "probe_parent.npy")
    assert len(features) == 80  # the features finished on the second run, not redone
    assert sorted(p.name for p in (tmp_path / "site_adapt" / "folds").glob("*.json")) == [
        "fold0.json",
        "fold1.json",
    ]
    assert _adapt(session_tiny_model, site, output) == 0  # the resume, in this process
    resumed, whole = load_model(output), load_model(tmp_path / "whole.pt")
    for name, tensor in whole.model.head.state_dict().items():
        assert torch.allclose(tensor, resumed.model.head.state_dict()[name], atol=1e-6)
    assert resumed.threshold == pytest.approx(whole.threshold, abs=1e-9)
    left, right = (b.extra["adaptation"]["outer_folds_chose"] for b in (resumed, whole))
    assert left == right


@pytest.mark.slow
def test_fine_tuning_competes_when_asked_for_and_resumes_fold_by_fold(
    session_tiny_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pneumonia_cxr.site import finetune

    short = {**finetune.FINETUNE_RECIPE, "stage2_epochs": 0}  # one epoch a run: seconds
    monkeypatch.setattr(finetune, "FINETUNE_RECIPE", short)
    site = texture_site(tmp_path / "site", 30, seed=7)
    output = tmp_path / "site.pt"
    recipes = ("--recipes", "probe_parent,finetune", "--folds", "3", "--force")
    code = _adapt(session_tiny_model, site, output, *recipes)
    assert code in (0, NOT_USEFUL_EXIT)
    record = load_model(output).extra["adaptation"]
    tuned = record["candidates"]["finetune"]
    assert tuned["c"] is None and tuned["nested_oof_auc"] is None and 0 <= tuned["cv_auc"] <= 1
    assert record["recipe"] == max(
        record["candidates"], key=lambda n: record["candidates"][n]["cv_auc"]
    )
    work = tmp_path / "site_adapt"
    assert sorted(p.name for p in (work / "folds").glob("finetune*.json")) == [
        "finetune0.json",
        "finetune1.json",
        "finetune2.json",
    ]
    assert "recipe finetune: cross-validated AUC" in capsys.readouterr().out
    # Re-run: the finished folds and runs are kept, nothing trains again.
    runs = sorted(work.glob("finetune_fold*/final_pneumonia_model.pt"))
    stamps = [path.stat().st_mtime_ns for path in runs]
    assert len(runs) == 3
    assert _adapt(session_tiny_model, site, output, *recipes) == code
    assert [path.stat().st_mtime_ns for path in runs] == stamps


def test_a_rerun_with_other_settings_starts_afresh(
    session_tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Same output, another parent: the cached features of the first parent are not reused."""
    from pneumonia_cxr.model.model_file import save_model

    output, site = tmp_path / "site.pt", texture_site(tmp_path / "site", 30, seed=8)
    assert _adapt(session_tiny_model, site, output) == 0
    cache = tmp_path / "site_adapt" / "features" / "probe_parent.npy"
    first = np.load(cache)
    other = load_model(session_tiny_model)
    with torch.no_grad():
        for tensor in other.model.backbone.parameters():
            tensor.mul_(1.5)
    save_model(other, tmp_path / "other.pt")
    assert _adapt(tmp_path / "other.pt", site, output) == 0
    second = np.load(cache)
    assert not np.allclose(first, second)  # made again with the other parent's network
    probe = load_model(output).model.head
    assert np.allclose(probe.mean.numpy(), second.mean(axis=0), rtol=1e-4, atol=1e-5)
    # A parent that is itself an adapted file cannot be fine-tuned: refused before any work.
    assert _adapt(output, site, tmp_path / "x.pt", "--recipes", "finetune") == 2
    assert "adapted (probe) model" in capsys.readouterr().err
