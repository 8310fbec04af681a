"""explain-check on a tiny trained model: output keys, value ranges, boxes scaled, no-box data."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from pneumonia_cxr import CLASS_NAMES
from pneumonia_cxr.cli import build_parser, main
from pneumonia_cxr.data.discovery import ImageRecord, list_images
from pneumonia_cxr.data.synthetic import SYNTHETIC_BOXES_FILE, read_opacity_boxes
from pneumonia_cxr.explain.check import (
    EXPLAIN_CHECK_FILE,
    explain_check_job,
    load_inputs,
    pointing_game_summary,
    run_explain_check,
    sample_records,
    scale_box,
)
from pneumonia_cxr.explain.gradcam import CAM_METHODS, compute_cams, model_cams
from pneumonia_cxr.model.model_file import ModelBundle, load_model

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


def _inputs(paths: list[str], model_file: Path) -> tuple[ModelBundle, torch.Tensor, list]:
    """The model (in the job's channels_last layout) and its inputs for the job's images."""
    bundle = load_model(model_file)
    bundle.model.to(memory_format=torch.channels_last)
    records = [ImageRecord(Path(p), "test", CLASS_NAMES.index("PNEUMONIA")) for p in paths]
    images, originals, kept = load_inputs(records, bundle)
    assert len(kept) == len(paths)
    return bundle, images, originals


def test_randomization_figures_are_those_of_the_maps(
    job: tuple[dict, Path], model_file: Path
) -> None:
    """Recomputed here: the maps of the model and of a copy whose head and top 4 backbone
    parameter layers were re-initialized under seed 0, one Spearman correlation per image
    (0 for a constant map), and their mean."""
    rand = job[0]["randomization"]
    assert rand["n_images"] == N_IMAGES == len(rand["per_image"]) == len(rand["paths"])
    assert all("/test/PNEUMONIA/" in path for path in rand["paths"])  # maps of the positive logit
    bundle, images, _ = _inputs(rand["paths"], model_file)
    model = bundle.model
    head = [
        name
        for name, module in model.named_modules()
        if name.startswith("head.") and callable(getattr(module, "reset_parameters", None))
    ]
    owners = [
        f"backbone.{name}"
        for name, module in model.backbone.named_modules()
        if any(True for _ in module.parameters(recurse=False))
    ]
    layers = [*head, *owners[-4:]]
    assert rand["randomized_layers"] == layers and "head.0" in layers
    assert all(name.startswith("backbone.layer4") for name in owners[-4:])
    shuffled = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for name in layers:
            shuffled.get_submodule(name).reset_parameters()
    original = compute_cams(model, model.cam_target_layer, images)
    after = compute_cams(shuffled, shuffled.cam_target_layer, images)
    constant = [
        bool(np.ptp(a) == 0 or np.ptp(b) == 0) for a, b in zip(original, after, strict=True)
    ]
    expected = [
        0.0 if flat else float(spearmanr(a.ravel(), b.ravel()).statistic)
        for a, b, flat in zip(original, after, constant, strict=True)
    ]
    assert rand["per_image"] == pytest.approx(expected, abs=1e-6)
    assert rand["mean_spearman"] == pytest.approx(np.mean(expected), abs=1e-6)
    assert rand["n_constant"] == sum(constant)


def test_pointing_game_figures_are_those_of_the_maps(
    job: tuple[dict, Path], model_file: Path
) -> None:
    """Recomputed here on both layers: a hit when the map's first maximum lies in the opacity
    box scaled to the map, a constant map a miss; chance is the boxes' mean share of the map."""
    result = job[0]
    game = result["pointing_game"]
    assert game["n"] == N_IMAGES == len(game["paths"])  # tiny set: 8 PNEUMONIA, all with boxes
    assert all("/test/PNEUMONIA/" in path for path in game["paths"])
    fine = game["fine_layer"]  # the same images, on the stride-16 maps: finer
    assert fine["n"] == game["n"]
    assert (game["map_cells"], fine["map_cells"]) == (2, 3)  # ResNet-18 at 48 px, measured
    bundle, images, originals = _inputs(game["paths"], model_file)
    root = Path(result["dataset"])
    boxes = read_opacity_boxes(root)
    for figures, layer in ((game, False), (fine, True)):
        cams = model_cams(bundle.model, images, fine=layer)
        height, width = cams.shape[1:]
        hits = flat = 0
        areas = []
        for cam, gray, path in zip(cams, originals, game["paths"], strict=True):
            box = boxes[Path(path).relative_to(root).as_posix()]
            x0, y0, x1, y1 = scale_box(box, (gray.shape[-1], gray.shape[-2]), (width, height))
            areas.append((x1 - x0) * (y1 - y0) / (width * height))
            if np.ptp(cam) == 0:
                flat += 1
                continue
            y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
            hits += int(x0 <= x < x1 and y0 <= y < y1)
        assert (figures["hits"], figures["n_flat"]) == (hits, flat), layer
        assert figures["accuracy"] == pytest.approx(hits / N_IMAGES)
        assert game["chance"] == pytest.approx(np.mean(areas))
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
