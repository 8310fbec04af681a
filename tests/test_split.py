"""Patient ids from file names and the patient-level train/validation split."""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path

import pytest

from pneumonia_cxr.data.discovery import ImageRecord, find_layout_root, list_images
from pneumonia_cxr.data.patients import patient_id, pneumonia_type
from pneumonia_cxr.data.split import (
    PatientSplit,
    file_sha256,
    make_patient_split,
    read_split_csv,
    write_split_csv,
)


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("person1_virus_6.jpeg", "person1"),
        ("person1000_bacteria_2931.jpeg", "person1000"),
        ("person447_virus_921_1.jpeg", "person447"),
        ("train/PNEUMONIA/person22_bacteria_77.JPEG", "person22"),
        ("Person3_Bacteria_4.png", "person3"),
        ("IM-0117-0001.jpeg", "IM-0117"),
        ("IM-0429-0001-0002.jpeg", "IM-0429"),
        ("im-0117-0001.jpg", "IM-0117"),
        ("NORMAL2-IM-0381-0001.jpeg", "NORMAL2-IM-0381"),
        ("NORMAL2-IM-0395-0001-0001.jpeg", "NORMAL2-IM-0395"),
        ("C:\\data\\NORMAL2-IM-0012-0001.dcm", "NORMAL2-IM-0012"),
        ("IM-0117-0001", "IM-0117"),
        ("scan_0001.jpeg", None),
        ("person_virus_1.jpeg", None),
        ("person12.jpeg", None),
        ("IM-0117.jpeg", None),
        ("NORMAL3-IM-0001-0001.jpeg", None),
        ("covid-person1_virus_2.jpeg", None),
        (".DS_Store", None),
    ],
)
def test_patient_id(filename: str, expected: str | None) -> None:
    assert patient_id(filename) == expected


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("person1_virus_6.jpeg", "virus"),
        ("PERSON1_BACTERIA_2.JPG", "bacteria"),
        ("person447_virus_921_1.jpeg", "virus"),
        ("IM-0117-0001.jpeg", None),
        ("person_virus_1.jpeg", None),
    ],
)
def test_pneumonia_type(filename: str, expected: str | None) -> None:
    assert pneumonia_type(filename) == expected


def test_normal2_is_its_own_namespace() -> None:
    assert patient_id("IM-0381-0001.jpeg") != patient_id("NORMAL2-IM-0381-0001.jpeg")


def _write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def make_pool(root: Path, n_normal: int = 40, n_pneumonia: int = 60) -> list[ImageRecord]:
    """Official train/val records of many patients with 1-3 images each, all distinct bytes."""
    rng = random.Random(0)
    records = []
    for label, class_name, n_patients in ((0, "NORMAL", n_normal), (1, "PNEUMONIA", n_pneumonia)):
        for number in range(1, n_patients + 1):
            split = "val" if number <= 2 else "train"
            for image in range(1, rng.randint(1, 3) + 1):
                name = (
                    f"IM-{number:04d}-{image:04d}.jpeg"
                    if label == 0
                    else f"person{number}_bacteria_{image}.jpeg"
                )
                path = _write(root / split / class_name / name, f"{name}".encode())
                records.append(ImageRecord(path=path, split=split, label=label))
    return records


def subset_of(split: PatientSplit) -> dict[str, str]:
    return {r.path.name: "train" for r in split.train} | {r.path.name: "val" for r in split.val}


def test_every_record_lands_in_exactly_one_subset(tmp_path: Path) -> None:
    records = make_pool(tmp_path)
    split = make_patient_split(records, val_fraction=0.2, seed=1)
    assert sorted(map(str, (r.path for r in split.train + split.val))) == sorted(
        str(r.path) for r in records
    )
    assert not {r.path for r in split.train} & {r.path for r in split.val}
    assert (split.seed, split.val_fraction, split.n_unrecognised) == (1, 0.2, 0)


@pytest.mark.parametrize("seed", range(5))
def test_patients_never_straddle_and_fraction_is_close(tmp_path: Path, seed: int) -> None:
    records = make_pool(tmp_path)
    split = make_patient_split(records, val_fraction=0.25, seed=seed)
    side: dict[str, str] = {}
    for subset, members in (("train", split.train), ("val", split.val)):
        for record in members:
            assert side.setdefault(patient_id(record.path.name), subset) == subset
    for label in (0, 1):
        total = sum(r.label == label for r in records)
        in_val = sum(r.label == label for r in split.val)
        assert abs(in_val - 0.25 * total) <= 2, (label, in_val, total)


def test_duplicate_chain_keeps_patients_together(tmp_path: Path) -> None:
    records = make_pool(tmp_path)
    folder = tmp_path / "train" / "PNEUMONIA"
    # person901 and person902 share one file, person902 and person903 another: one chain.
    chain = [
        ("person901_virus_1.jpeg", b"copy-a"),
        ("person902_virus_1.jpeg", b"copy-a"),
        ("person902_virus_2.jpeg", b"copy-b"),
        ("person903_virus_1.jpeg", b"copy-b"),
        ("unnamed_copy.jpeg", b"copy-b"),
    ]
    for name, content in chain:
        records.append(ImageRecord(path=_write(folder / name, content), split="train", label=1))
    names = [name for name, _ in chain]
    landed_in_val = 0
    for seed in range(20):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            subsets = subset_of(make_patient_split(records, val_fraction=0.3, seed=seed))
        assert len({subsets[name] for name in names}) == 1, f"seed {seed} split the chain"
        landed_in_val += subsets[names[0]] == "val"
    assert landed_in_val > 0, "the chain never reached val: the test would prove nothing"


def test_unrecognised_names_warn_once(tmp_path: Path) -> None:
    records = make_pool(tmp_path)
    for index in range(3):
        path = _write(tmp_path / "train" / "NORMAL" / f"scan_{index}.png", f"s{index}".encode())
        records.append(ImageRecord(path=path, split="train", label=0))
    with pytest.warns(UserWarning, match="3 file name") as caught:
        split = make_patient_split(records)
    assert len([w for w in caught if "patient id" in str(w.message)]) == 1
    assert split.n_unrecognised == 3


def test_same_seed_same_split_other_seed_differs(tmp_path: Path) -> None:
    records = make_pool(tmp_path)
    first = make_patient_split(records, seed=7)
    assert make_patient_split(list(records), seed=7) == first
    assert subset_of(make_patient_split(records, seed=8)) != subset_of(first)


def test_test_records_are_refused(tmp_path: Path) -> None:
    records = make_pool(tmp_path)
    stray = ImageRecord(
        path=_write(tmp_path / "test" / "NORMAL" / "IM-9-1.jpeg", b"t"), split="test", label=0
    )
    with pytest.raises(ValueError, match="test"):
        make_patient_split([*records, stray])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_fraction_is_refused(tmp_path: Path, fraction: float) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        make_patient_split(make_pool(tmp_path, 3, 3), val_fraction=fraction)


def test_csv_round_trip(tmp_path: Path) -> None:
    records = make_pool(tmp_path)
    records.append(
        ImageRecord(
            path=_write(tmp_path / "train" / "NORMAL" / "odd.png", b"odd"), split="train", label=0
        )
    )
    with pytest.warns(UserWarning):
        split = make_patient_split(records, val_fraction=0.2, seed=3)
    csv_path = tmp_path / "runs" / "split.csv"
    write_split_csv(split, csv_path)
    assert read_split_csv(csv_path) == split
    header = csv_path.read_text().splitlines()[0].split(",")
    assert header[:6] == ["path", "official_split", "label", "class_name", "patient", "subset"]


def test_file_sha256_streams_large_files(tmp_path: Path) -> None:
    import hashlib

    content = os.urandom(3 * (1 << 20) + 17)
    path = _write(tmp_path / "big.dcm", content)
    assert file_sha256(path) == hashlib.sha256(content).hexdigest()


@pytest.mark.realdata
def test_real_data_split_is_leak_free(real_data_root: Path) -> None:
    records = list_images(find_layout_root(real_data_root), splits=("train", "val"))
    split = make_patient_split(records, val_fraction=0.15, seed=42)
    assert len(split.train) + len(split.val) == len(records)
    for key in (lambda r: patient_id(r.path.name), lambda r: file_sha256(r.path)):
        assert not {key(r) for r in split.train} & {key(r) for r in split.val}
    for label in (0, 1):
        total = sum(r.label == label for r in records)
        share = sum(r.label == label for r in split.val) / total
        assert abs(share - 0.15) < 0.02, (label, share)


def test_a_sites_patients_csv_keeps_each_patient_on_one_side(tmp_path: Path) -> None:
    from pneumonia_cxr.data.discovery import ImageRecord
    from pneumonia_cxr.data.split import make_patient_split

    records = []
    for i in range(40):
        path = tmp_path / f"scan{i}.png"
        path.write_bytes(bytes([i]) * 10)  # distinct files
        records.append(ImageRecord(path, "site", i % 2))
    patients = {f"scan{i}.png": f"p{i // 4}" for i in range(40)}
    split = make_patient_split(records, 0.25, 3, patients=patients)
    sides = [{patients[r.path.name] for r in part} for part in (split.train, split.val)]
    assert sides[1] and not sides[0] & sides[1]
