"""The synthetic demo set: layout, names, determinism, boxes, idempotence, SYNTHETIC marking."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumonia_cxr import CLASS_NAMES
from pneumonia_cxr.data.synthetic import (
    OPACITY_BOX_FRACTION,
    SPLITS,
    SYNTHETIC_BOXES_FILE,
    SYNTHETIC_MARKER_FILE,
    SYNTHETIC_README_FILE,
    SyntheticSpec,
    generate_synthetic_dataset,
    plan_synthetic_dataset,
    read_opacity_boxes,
    render_item,
)
from pneumonia_cxr.errors import DatasetLayoutError

SMALL = SyntheticSpec(
    image_size=64,
    train_per_class=4,
    val_per_class=2,
    test_per_class=2,
    images_per_patient=2,
    seed=3,
)
PNEUMONIA_NAME = re.compile(r"person(\d+)_(bacteria|virus)_(\d+)\.png")
NORMAL_NAME = re.compile(r"IM-(\d{4})-(\d{4})\.png")


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("syn") / "synthetic_cxr_demo", SMALL)


def _pngs(root: Path) -> list[Path]:
    return sorted(root.glob("*/*/*.png"))


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _patient_of(label: str, name: str) -> int:
    pattern = PNEUMONIA_NAME if label == "PNEUMONIA" else NORMAL_NAME
    match = pattern.fullmatch(name)
    assert match, f"{label}/{name} does not follow Kermany's naming"
    return int(match.group(1))


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("label", CLASS_NAMES)
def test_layout_counts_and_png_format(small_set: Path, split: str, label: str) -> None:
    files = sorted((small_set / split / label).iterdir())
    assert len(files) == SMALL.per_class(split)
    for path in files:
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "L", (64, 64))
            assert np.asarray(image).std() > 10, f"{path} looks blank"


def test_only_the_expected_files_exist(small_set: Path) -> None:
    expected = {item.relpath for item in plan_synthetic_dataset(SMALL)}
    expected |= {SYNTHETIC_BOXES_FILE, SYNTHETIC_MARKER_FILE, SYNTHETIC_README_FILE}
    assert set(_tree_bytes(small_set)) == expected
    assert not list(small_set.parent.glob(".*partial*")), "staging folder left behind"


def test_names_parse_to_patients_with_several_images_in_one_split(small_set: Path) -> None:
    splits_of: dict[tuple[str, int], set[str]] = defaultdict(set)
    images_of: dict[tuple[str, int], int] = defaultdict(int)
    pneumonia_counters = []
    for path in _pngs(small_set):
        split, label = path.parent.parent.name, path.parent.name
        patient = _patient_of(label, path.name)
        splits_of[label, patient].add(split)
        images_of[label, patient] += 1
        if label == "PNEUMONIA":
            pneumonia_counters.append(int(PNEUMONIA_NAME.fullmatch(path.name).group(3)))
    assert all(len(s) == 1 for s in splits_of.values()), "a patient crosses splits"
    assert set(images_of.values()) == {SMALL.images_per_patient}
    assert len(pneumonia_counters) == len(set(pneumonia_counters))
    names = [p.name for p in _pngs(small_set)]
    assert len(names) == len(set(names))


def test_last_patient_takes_the_remainder() -> None:
    spec = SyntheticSpec(train_per_class=5, val_per_class=1, test_per_class=1, images_per_patient=3)
    sizes: dict[tuple[str, str, int], int] = defaultdict(int)
    for item in plan_synthetic_dataset(spec):
        sizes[item.split, item.label, item.patient] += 1
    train_normal = sorted(n for (s, lab, _), n in sizes.items() if (s, lab) == ("train", "NORMAL"))
    assert train_normal == [2, 3]


def test_images_of_one_patient_share_anatomy() -> None:
    """Same-patient lung masks overlap more than masks of different patients."""
    spec = SyntheticSpec(image_size=64, train_per_class=12, images_per_patient=3)
    items = [i for i in plan_synthetic_dataset(spec) if i.split == "train" and not i.is_pneumonia]
    masks = {i: render_item(i, spec).lung_mask > 0.5 for i in items}

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        return float((a & b).sum() / (a | b).sum())

    same, other = [], []
    for n, first in enumerate(items):
        for second in items[n + 1 :]:
            score = iou(masks[first], masks[second])
            (same if first.patient == second.patient else other).append(score)
    assert np.mean(same) > np.mean(other) + 0.03


def test_same_seed_gives_identical_bytes(small_set: Path, tmp_path: Path) -> None:
    again = generate_synthetic_dataset(tmp_path / "again", SMALL)
    assert _tree_bytes(again) == _tree_bytes(small_set)


def test_different_seed_gives_different_images(small_set: Path, tmp_path: Path) -> None:
    spec = replace(SMALL, seed=SMALL.seed + 1)
    other = generate_synthetic_dataset(tmp_path / "other", spec)
    for path in _pngs(small_set):
        twin = other / path.relative_to(small_set)
        if twin.exists():  # pneumonia names may differ (bacteria/virus is drawn per patient)
            assert twin.read_bytes() != path.read_bytes(), path.name
    first = np.stack([np.asarray(Image.open(p)) for p in _pngs(small_set)])
    second = np.stack([np.asarray(Image.open(p)) for p in _pngs(other)])
    assert np.abs(first.astype(int) - second.astype(int)).mean() > 2


def test_boxes_cover_exactly_the_pneumonia_images_inside_the_image(small_set: Path) -> None:
    boxes = read_opacity_boxes(small_set)
    pneumonia = {p.relative_to(small_set).as_posix() for p in small_set.glob("*/PNEUMONIA/*.png")}
    assert set(boxes) == pneumonia
    for x0, y0, x1, y1 in boxes.values():
        assert 0 <= x0 < x1 <= SMALL.image_size
        assert 0 <= y0 < y1 <= SMALL.image_size
        assert (x1 - x0) * (y1 - y0) < 0.25 * SMALL.image_size**2, "opacity is not localised"


def test_files_and_boxes_match_a_fresh_render_and_lie_in_a_lung(small_set: Path) -> None:
    boxes = read_opacity_boxes(small_set)
    for item in plan_synthetic_dataset(SMALL):
        rendered = render_item(item, SMALL)
        np.testing.assert_array_equal(
            np.asarray(Image.open(small_set / item.relpath)), rendered.pixels
        )
        assert rendered.box == boxes.get(item.relpath)
        if rendered.box is None:
            continue
        x0, y0, x1, y1 = rendered.box
        visible = rendered.opacity >= OPACITY_BOX_FRACTION * rendered.opacity.max()
        rows, cols = np.nonzero(visible)
        assert (x0, y0, x1, y1) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        assert rendered.lung_mask[(y0 + y1) // 2, (x0 + x1) // 2] > 0.5
        assert (rendered.lung_mask[y0:y1, x0:x1] > 0.5).mean() > 0.5


def test_opacity_brightens_its_box_and_normal_images_have_none() -> None:
    for item in plan_synthetic_dataset(SMALL):
        with_opacity = render_item(item, SMALL)
        without = render_item(item, SMALL, include_opacity=False)
        if not item.is_pneumonia:
            assert with_opacity.box is None and not with_opacity.opacity.any()
            np.testing.assert_array_equal(with_opacity.pixels, without.pixels)
            continue
        x0, y0, x1, y1 = with_opacity.box
        inside = (slice(y0, y1), slice(x0, x1))
        gain = with_opacity.pixels[inside].mean() - without.pixels[inside].mean()
        assert gain > 8, f"{item.relpath}: opacity adds only {gain:.1f} gray levels"
        outside = np.ones(with_opacity.pixels.shape, bool)
        outside[inside] = False
        changed = with_opacity.pixels[outside].astype(int) - without.pixels[outside]
        assert np.abs(changed).mean() < gain / 4, "opacity is not concentrated in its box"


def test_second_call_does_not_rewrite(small_set: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in small_set.rglob("*")}
    assert generate_synthetic_dataset(small_set, SMALL) == small_set
    assert {p: p.stat().st_mtime_ns for p in small_set.rglob("*")} == before


def test_changed_spec_replaces_the_old_set(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    generate_synthetic_dataset(out, SMALL)
    bigger = replace(SMALL, train_per_class=6)
    generate_synthetic_dataset(out, bigger)
    assert len(list((out / "train" / "NORMAL").iterdir())) == 6
    marker = json.loads((out / SYNTHETIC_MARKER_FILE).read_text())
    assert marker["spec"]["train_per_class"] == 6


def test_incomplete_set_is_regenerated(tmp_path: Path) -> None:
    out = generate_synthetic_dataset(tmp_path / "demo", SMALL)
    victim = _pngs(out)[0]
    content = victim.read_bytes()
    victim.unlink()
    generate_synthetic_dataset(out, SMALL)
    assert victim.read_bytes() == content


def test_existing_empty_folder_is_used(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    generate_synthetic_dataset(out, SMALL)
    assert len(_pngs(out)) == 2 * (4 + 2 + 2)


def test_refuses_to_overwrite_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DatasetLayoutError, match="not a synthetic demo set"):
        generate_synthetic_dataset(tmp_path, SMALL)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_folder_is_marked_synthetic(small_set: Path) -> None:
    readme = (small_set / SYNTHETIC_README_FILE).read_text()
    assert "SYNTHETIC" in readme and "NOT MEDICAL" in readme.upper()
    marker = json.loads((small_set / SYNTHETIC_MARKER_FILE).read_text())
    assert marker["synthetic"] is True
    assert SyntheticSpec(**marker["spec"]) == SMALL


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("file,a,b,c,d\n", "header"),
        ("path,x0,y0,x1,y1\ntrain/PNEUMONIA/a.png,1,2,x,4\n", "line 2"),
        ("path,x0,y0,x1,y1\ntrain/PNEUMONIA/a.png,1,2,3\n", "line 2"),
    ],
)
def test_read_opacity_boxes_names_the_broken_file(
    tmp_path: Path, content: str | None, message: str
) -> None:
    if content is not None:
        (tmp_path / SYNTHETIC_BOXES_FILE).write_text(content)
    with pytest.raises(DatasetLayoutError, match=message) as error:
        read_opacity_boxes(tmp_path)
    assert SYNTHETIC_BOXES_FILE in str(error.value)


@pytest.mark.parametrize(
    "bad",
    [
        {"image_size": 16},
        {"train_per_class": 0},
        {"val_per_class": 0},
        {"images_per_patient": 0},
        {"seed": -1},
        {"train_per_class": 30000, "images_per_patient": 1},
    ],
)
def test_spec_rejects_impossible_values(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        SyntheticSpec(**bad)
