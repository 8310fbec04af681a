"""Ensembles as one model, the OOD guard, and the model file format that carries both."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_runs import tiny_config

from pneumonia_cxr.cli import main
from pneumonia_cxr.config import Preprocessing
from pneumonia_cxr.data.discovery import list_images
from pneumonia_cxr.errors import ModelFileError
from pneumonia_cxr.evaluation.evaluate import evaluate_model
from pneumonia_cxr.evaluation.threshold import choose_threshold
from pneumonia_cxr.inference.predictor import Predictor
from pneumonia_cxr.model.classifier import PneumoniaNet
from pneumonia_cxr.model.ensemble import PneumoniaEnsemble
from pneumonia_cxr.model.model_file import (
    FINAL_MODEL_NAME,
    ModelBundle,
    load_model,
    round_to_half,
    save_model,
)
from pneumonia_cxr.model.ood import FeatureDensity
from pneumonia_cxr.predict import predict_paths
from pneumonia_cxr.training.ensemble import build_ensemble
from pneumonia_cxr.training.run import train


def _member_run(data: Path, out: Path, seed: int, split_seed: int | None = 7) -> Path:
    config = tiny_config(data, out, f"m{seed}-split{split_seed}", stage2_epochs=0, seed=seed)
    config.data.split_seed = split_seed
    return train(config) / FINAL_MODEL_NAME


@pytest.fixture(scope="module")
def two_runs(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two seeds, one shared patient-level split, as ensemble members must be trained."""
    out = tmp_path_factory.mktemp("runs")
    return [_member_run(tiny_synthetic, out, seed) for seed in (1, 2)]


@pytest.fixture(scope="module")
def ensemble_file(two_runs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ensemble") / "ensemble.pt"
    build_ensemble(two_runs, path, ood_train_images=40, half=True)
    return path


def test_the_ensemble_logit_is_the_mean_of_its_members(
    two_runs: list[Path], ensemble_file: Path
) -> None:
    ensemble = load_model(ensemble_file)
    assert isinstance(ensemble.model, PneumoniaEnsemble) and len(ensemble.model.members) == 2
    images = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        members = [round_to_half(load_model(p).model.eval()) for p in two_runs]
        expected = torch.stack([m(images) for m in members]).mean(dim=0)
        got = ensemble.model.eval()(images)
    assert got.shape == (3, 1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_ensemble_file_is_float16_with_a_validation_threshold_and_ood_cutoff(
    ensemble_file: Path, two_runs: list[Path]
) -> None:
    payload = torch.load(ensemble_file, map_location="cpu", weights_only=True)
    assert payload["format_version"] == 3 and len(payload["members"]) == 2
    assert math.isfinite(payload["guard"]["cutoff"])  # the applicability guard, fitted here
    weights = [v for m in payload["members"] for v in m["state_dict"].values()]
    assert all(v.dtype == torch.float16 for v in weights if v.is_floating_point())
    assert math.isfinite(payload["ood"]["cutoff"]) and payload["ood"]["quantile"] == 0.99
    # The stored threshold is the members' rule applied to the ensemble's validation scores.
    from pneumonia_cxr.data.split import read_split_csv

    val = read_split_csv(two_runs[0].parent / "split.csv").val
    predictor = Predictor.open(ensemble_file, engine="torch", device="cpu")
    scores = predictor.score_files([r.path for r in val])
    labels = np.array([val[i].label for i in scores.indices])
    bundle = predictor.bundle
    rule, min_sens = bundle.threshold_rule, bundle.extra["min_sensitivity"]
    assert bundle.threshold == pytest.approx(
        choose_threshold(labels, scores.scores.probabilities, rule, min_sens)
    )
    # The cut-off is the 99th percentile of these very scores: at most the top 1% (>= 1 image).
    assert scores.scores.ood_flags.sum() <= max(1, math.ceil(0.01 * len(labels)))


def test_ensemble_runs_everywhere_a_model_runs(
    ensemble_file: Path, tiny_synthetic: Path, tmp_path: Path
) -> None:
    files = [r.path for r in list_images(tiny_synthetic, ["test"])][:6]
    torch_rows = predict_paths(
        Predictor.open(ensemble_file, engine="torch", device="cpu"),
        files,
        gradcam_dir=tmp_path / "cams",
    )
    onnx_rows = predict_paths(Predictor.open(ensemble_file, device="cpu"), files)
    for t, o in zip(torch_rows, onnx_rows, strict=True):
        assert o.probability == pytest.approx(t.probability, abs=1e-4)
        assert o.label == t.label and o.ood_score == pytest.approx(t.ood_score, rel=1e-3)
        assert t.heatmap and Path(t.heatmap).is_file()
    result = evaluate_model(
        ensemble_file,
        tiny_synthetic,
        output_dir=tmp_path / "eval",
        n_resamples=50,
        explain_images=2,
    )
    with (tmp_path / "eval" / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    flagged = sum(row["out_of_distribution"] == "True" for row in rows)
    assert result.metrics["ood"]["n_flagged"] == flagged  # the summary counts the rows' flags


def test_members_that_disagree_on_preprocessing_are_refused(
    two_runs: list[Path], tmp_path: Path
) -> None:
    mixed = PneumoniaEnsemble(
        [PneumoniaNet("resnet18"), PneumoniaNet("efficientnet_lite0", weights="none")]
    )
    save_model(
        ModelBundle(model=mixed, preprocessing=Preprocessing(image_size=48)), tmp_path / "m.pt"
    )
    with pytest.raises(ModelFileError, match="efficientnet_lite0"):
        Predictor.open(tmp_path / "m.pt", engine="torch")
    payload = torch.load(two_runs[1], map_location="cpu", weights_only=True)
    payload["preprocessing"]["image_size"] = 64
    torch.save(payload, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="share one preprocessing"):
        build_ensemble([two_runs[0], tmp_path / "other.pt"], tmp_path / "e.pt")


def test_members_trained_on_different_splits_are_refused(
    two_runs: list[Path], tiny_synthetic: Path, tmp_path: Path
) -> None:
    other = _member_run(tiny_synthetic, tmp_path, seed=3, split_seed=None)  # split from seed 3
    with pytest.raises(ModelFileError, match="another patient-level split"):
        build_ensemble([two_runs[0], other], tmp_path / "e.pt")


def test_ensemble_command(two_runs: list[Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "e.pt"
    args = ["ensemble", *map(str, two_runs), "--output", str(out), "--ood_train_images", "30"]
    assert main(args) == 0
    assert "ensemble of 2" in capsys.readouterr().out and load_model(out).ood is not None


def test_feature_density_scores_points_off_the_training_manifold_higher() -> None:
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(8, 64))
    train_features = rng.normal(size=(500, 8)) @ basis + 0.01 * rng.normal(size=(500, 64))
    density = FeatureDensity.fit(train_features, n_components=8)
    inside = rng.normal(size=(50, 8)) @ basis + 0.01 * rng.normal(size=(50, 64))
    outside = rng.normal(size=(50, 64))
    with torch.no_grad():
        score_in = density(torch.from_numpy(inside)).numpy()
        score_out = density(torch.from_numpy(outside)).numpy()
    assert np.median(score_in) < 3 and score_out.min() > 10 * score_in.max()
