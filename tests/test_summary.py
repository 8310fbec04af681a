"""Dataset summary: every issue planted in a small folder must be reported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumonia_cxr.data.discovery import SPLITS
from pneumonia_cxr.data.summary import format_summary, summarize_dataset

# (split, class, file name): one or two patients per class and split, all distinct pixels
CLEAN = [
    ("train", "NORMAL", "IM-0001-0001.png"),
    ("train", "NORMAL", "IM-0001-0002.png"),
    ("train", "NORMAL", "NORMAL2-IM-0001-0001.png"),
    ("train", "PNEUMONIA", "person1_bacteria_1.png"),
    ("train", "PNEUMONIA", "person2_virus_3.png"),
    ("val", "NORMAL", "IM-0002-0001.png"),
    ("val", "PNEUMONIA", "person3_bacteria_5.png"),
    ("test", "NORMAL", "IM-0003-0001.png"),
    ("test", "PNEUMONIA", "person4_virus_7.png"),
]


def _image(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(16, 16), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path)
    return path


def make_dataset(root: Path) -> Path:
    for seed, (split, class_name, name) in enumerate(CLEAN):
        _image(root / split / class_name / name, seed)
    return root


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """The clean set plus a corrupt file, two duplicate pairs, shared patient ids, an odd name."""
    root = make_dataset(tmp_path / "data")
    (root / "train" / "PNEUMONIA" / "person5_bacteria_9.jpeg").write_bytes(b"\xff\xd8\xff\xe0trunc")
    original = (root / "train" / "NORMAL" / "IM-0001-0001.png").read_bytes()
    (root / "train" / "NORMAL" / "IM-0004-0001.png").write_bytes(original)
    _image(root / "test" / "NORMAL" / "IM-0001-0003.png", 100)
    leaked = (root / "train" / "PNEUMONIA" / "person2_virus_3.png").read_bytes()
    (root / "test" / "PNEUMONIA" / "person6_virus_1.png").write_bytes(leaked)
    _image(root / "val" / "NORMAL" / "scan_final.png", 101)
    # same number as train's person1 (bacteria) but viral: Kermany's separate series
    _image(root / "test" / "PNEUMONIA" / "person1_virus_2.png", 102)
    return root


def test_clean_dataset_has_no_issues(tmp_path: Path) -> None:
    summary = summarize_dataset(make_dataset(tmp_path / "data"))
    assert summary["total_images"] == len(CLEAN)
    for split in SPLITS:
        for class_name in ("NORMAL", "PNEUMONIA"):
            expected = sum(1 for s, c, _ in CLEAN if (s, c) == (split, class_name))
            assert summary["counts"][split][class_name] == expected
    assert summary["patients"] == {"train": 4, "val": 2, "test": 2}
    assert summary["duplicate_groups"]["count"] == 0
    assert not any(summary["cross_split_patients"].values())
    assert summary["cross_split_duplicates"] == [] and summary["unreadable"] == []
    assert "No issues found." in format_summary(summary)


def test_planted_issues_are_reported(planted: Path) -> None:
    summary = summarize_dataset(planted)
    assert summary["root"] == str(planted)
    assert summary["total_images"] == len(CLEAN) + 6

    assert [u["path"] for u in summary["unreadable"]] == ["train/PNEUMONIA/person5_bacteria_9.jpeg"]
    assert summary["unreadable"][0]["error"]

    groups = sorted(sorted(group) for group in summary["duplicate_groups"]["examples"])
    assert groups == [
        ["test/PNEUMONIA/person6_virus_1.png", "train/PNEUMONIA/person2_virus_3.png"],
        ["train/NORMAL/IM-0001-0001.png", "train/NORMAL/IM-0004-0001.png"],
    ]
    assert summary["duplicate_groups"]["count"] == 2
    assert sorted(sorted(g) for g in summary["duplicate_groups"]["across_patients"]) == groups
    assert [sorted(g) for g in summary["cross_split_duplicates"]] == [groups[0]]

    assert summary["cross_split_patients"] == {
        "train/val": [],
        "train/test": ["IM-0001", "person1"],
        "val/test": [],
    }
    assert summary["cross_split_patient_counts"]["train/test"] == 2
    assert summary["cross_split_patients_same_type"]["train/test"] == ["IM-0001"]
    assert summary["unrecognised_names"] == {"count": 1, "examples": ["val/NORMAL/scan_final.png"]}

    report = format_summary(summary)
    for needed in (
        "person5_bacteria_9.jpeg",
        "IM-0004-0001.png",
        "IM-0001",
        "train/test",
        "scan_final.png",
    ):
        assert needed in report
    assert "1 shared id(s) pair a bacterial with a viral case" in report
    assert "patients in more than one official split (train/test: 1)" in report
    json.dumps(summary)


def test_readability_check_can_be_skipped(planted: Path) -> None:
    summary = summarize_dataset(planted, check_readable=False)
    assert summary["unreadable"] == [] and summary["readability_checked"] is False
    assert "not checked" in format_summary(summary)


def test_accepts_a_folder_above_the_layout(planted: Path) -> None:
    assert summarize_dataset(planted.parent, check_readable=False)["root"] == str(planted)


@pytest.mark.realdata
def test_real_data_summary(real_data_root: Path) -> None:
    summary = summarize_dataset(real_data_root, check_readable=False)
    assert summary["counts"] == {
        "train": {"NORMAL": 1341, "PNEUMONIA": 3875},
        "val": {"NORMAL": 8, "PNEUMONIA": 8},
        "test": {"NORMAL": 234, "PNEUMONIA": 390},
    }
    assert summary["total_images"] == 5856
    assert summary["unrecognised_names"]["count"] == 0
    assert summary["duplicate_groups"]["count"] > 0
    # Every shared person number switches bacteria/virus: no same-type patient crosses splits.
    assert not any(summary["cross_split_patients_same_type"].values())
    assert json.loads(json.dumps(summary)) == summary
    assert "5856" in format_summary(summary)
