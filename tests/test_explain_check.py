"""explain-check on a tiny trained model: output keys, value ranges, boxes scaled, no-box data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pneumonia_cxr import CLASS_NAMES
from pneumonia_cxr.cli import build_parser, main
from pneumonia_cxr.data.discovery import ImageRecord, list_images
from pneumonia_cxr.data.synthetic import SYNTHETIC_BOXES_FILE
from pneumonia_cxr.explain.check import (
    EXPLAIN_CHECK_FILE,
    explain_check_job,
    pointing_game_summary,
    run_explain_check,
    sample_records,
    scale_box,
)
from pneumonia_cxr.explain.gradcam import CAM_METHODS
from pneumonia_cxr.model.model_file import load_model

N_IMAGES = 4


@pytest.fixture(scope="module")
def model_file(session_tiny_model: Path) -> Path:
    return session_tiny_model


@pytest.fixture(scope="module")
def job(
    model_file: Path, tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("explain_check")
    return explain_check_job(model_file, tiny_synthetic, n_images=N_IMAGES, output_dir=out)


def test_output_file_holds_the_result(job: tuple[dict, Path]) -> None:
    result, path = job
    assert path.name == EXPLAIN_CHECK_FILE
    assert json.loads(path.read_text()) == result
    assert {"model_path", "model_fingerprint", "dataset", "split", "method"} <= set(result)
    assert result["split"] == "test" and result["method"] == "gradcam"


def test_randomization_figures_are_in_range(job: tuple[dict, Path]) -> None:
    rand = job[0]["randomization"]
    assert rand["n_images"] == N_IMAGES == len(rand["per_image"])
    assert -1.0 <= rand["mean_spearman"] <= 1.0
    assert all(-1.0 <= value <= 1.0 for value in rand["per_image"])
    assert 0 <= rand["n_constant"] <= N_IMAGES
    assert all("/test/PNEUMONIA/" in path for path in rand["paths"])  # maps of the positive logit
    layers = rand["randomized_layers"]
    assert "head.0" in layers  # the head ...
    backbone = [name for name in layers if name.startswith("backbone.")]
    assert backbone and all(name.startswith("backbone.layer4") for name in backbone)  # ... + top


def test_pointing_game_figures_are_in_range(job: tuple[dict, Path], tiny_synthetic: Path) -> None:
    game = job[0]["pointing_game"]
    assert game["n"] == N_IMAGES  # tiny set: 8 PNEUMONIA test images, all with boxes
    assert 0 <= game["hits"] <= game["n"] and 0 <= game["n_flat"] <= game["n"]
    assert game["accuracy"] == pytest.approx(game["hits"] / game["n"])
    assert 0.0 < game["chance"] < 1.0
    assert all("/test/PNEUMONIA/" in path for path in game["paths"])
    fine = game["fine_layer"]  # the same images, on the stride-16 maps: finer
    assert fine["n"] == game["n"] and 0 <= fine["hits"] <= fine["n"]
    assert (game["map_cells"], fine["map_cells"]) == (2, 3)  # ResNet-18 at 48 px, measured
    summary = pointing_game_summary(game)
    assert f"{game['hits']}/{game['n']}" in summary and "3 x 3 stride-16" in summary


def test_summary_reads_files_written_before_the_stride_16_layer() -> None:
    old = {"hits": 1, "n": 4, "accuracy": 0.25, "chance": 0.05, "n_flat": 0}
    assert pointing_game_summary(old) == "1/4 = 25.0% (a random peak: 5.0%; flat maps: 0)"


def test_without_boxes_the_pointing_game_is_skipped_with_a_reason(
    model_file: Path, tiny_synthetic: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_synthetic, data)
    (data / SYNTHETIC_BOXES_FILE).unlink()
    result = run_explain_check(load_model(model_file), data, n_images=2)
    assert result["pointing_game"] is None
    assert SYNTHETIC_BOXES_FILE in result["pointing_game_note"]
    assert result["randomization"]["n_images"] == 2


def test_cli_explain_check_prints_both_figures(
    model_file: Path, tiny_synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["--model_path", str(model_file), "--dataset_path", str(tiny_synthetic)]
    assert main(["explain-check", *args, "--n_images", "2", "--output_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mean Spearman" in out and "pointing game: " in out
    assert (tmp_path / EXPLAIN_CHECK_FILE).is_file()


@pytest.mark.parametrize(
    ("box", "from_size", "to_size", "expected"),
    [
        ((10, 20, 30, 40), (48, 48), (48, 48), (10, 20, 30, 40)),  # same size: unchanged
        ((10, 20, 30, 40), (48, 48), (96, 96), (20, 40, 60, 80)),  # exact doubling
        ((1, 1, 3, 3), (10, 10), (4, 4), (0, 0, 2, 2)),  # rounded outwards, never shrinks
        ((0, 0, 100, 50), (100, 50), (32, 32), (0, 0, 32, 32)),  # squash: x and y apart
        ((99, 49, 100, 50), (100, 50), (10, 10), (9, 9, 10, 10)),  # corner pixel stays 1 px
    ],
)
def test_scale_box(box, from_size, to_size, expected) -> None:
    assert scale_box(box, from_size, to_size) == expected


def test_sample_records_is_seeded_and_balanced(tiny_synthetic: Path) -> None:
    records: list[ImageRecord] = list_images(tiny_synthetic, ["test"])
    first = sample_records(records, 6, seed=1)
    assert first == sample_records(records, 6, seed=1)
    assert [r.label for r in first].count(0) == [r.label for r in first].count(1) == 3
    positives = sample_records(records, 100, seed=1, label=1)
    assert {r.class_name for r in positives} == {CLASS_NAMES[1]}
    assert len(positives) == sum(r.label == 1 for r in records)


def test_cli_cam_choices_come_from_the_gradcam_module_without_importing_the_library() -> None:
    """Building the parser must not import pytorch-grad-cam (seconds), yet offer its methods."""
    import subprocess
    import sys

    code = (
        "import sys; from pneumonia_cxr.cli import build_parser; build_parser(); "
        "print('pytorch_grad_cam' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    action = next(
        a
        for a in build_parser()._subparsers._group_actions[0].choices["predict"]._actions
        if a.dest == "gradcam_method"
    )
    assert tuple(action.choices) == tuple(CAM_METHODS)
