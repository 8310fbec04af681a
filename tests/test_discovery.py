"""Dataset discovery: layout search, strict validation, and where the data comes from."""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

import pytest

from pneumonia_cxr.data import discovery
from pneumonia_cxr.data.discovery import (
    DATA_ENV_VAR,
    SPLITS,
    find_layout_root,
    list_images,
    resolve_dataset,
)
from pneumonia_cxr.errors import DatasetLayoutError, DataUnavailableError
from pneumonia_cxr.storage import CACHE_ENV_VAR

"""Read at import: the autouse fixture below hides the variable from the other tests."""
OFFICIAL_COUNTS = {
    ("train", "NORMAL"): 1341,
    ("train", "PNEUMONIA"): 3875,
    ("val", "NORMAL"): 8,
    ("val", "PNEUMONIA"): 8,
    ("test", "NORMAL"): 234,
    ("test", "PNEUMONIA"): 390,
}
"""Kermany et al. (2018), as published on Kaggle and in shared/data/README.md."""
NAMES = {
    "NORMAL": ["IM-0001-0001.jpeg", "IM-0002-0001.jpeg"],
    "PNEUMONIA": ["person1_virus_1.jpeg"],
}


def make_layout(root: Path) -> Path:
    """A minimal official layout; discovery never decodes, so the bytes need not be images."""
    for split in SPLITS:
        for class_name, names in NAMES.items():
            folder = root / split / class_name
            folder.mkdir(parents=True)
            for name in names:
                (folder / name).write_bytes(f"{split}/{name}".encode())
    return root


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test may see the developer's data variable or write into the real cache."""
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "cache"))


def test_good_layout_lists_sorted_records(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "data")
    records = list_images(root)
    assert len(records) == len(SPLITS) * sum(len(n) for n in NAMES.values())
    keys = [(SPLITS.index(r.split), r.label, r.path.name) for r in records]
    assert keys == sorted(keys)
    assert {(r.path.parent.name, r.class_name, r.label) for r in records} == {
        ("NORMAL", "NORMAL", 0),
        ("PNEUMONIA", "PNEUMONIA", 1),
    }
    assert all(r.split == r.path.parent.parent.name for r in records)


def test_subset_of_splits(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "data")
    assert {r.split for r in list_images(root, splits=("test",))} == {"test"}
    with pytest.raises(ValueError, match="unknown split"):
        list_images(root, splits=("holdout",))


def test_kaggle_nesting_is_found(tmp_path: Path) -> None:
    download = tmp_path / "download"
    inner = make_layout(download / "chest_xray" / "chest_xray")
    (download / "__MACOSX" / "chest_xray" / "train").mkdir(parents=True)
    (download / ".DS_Store").write_bytes(b"\0")
    (inner / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\0")
    assert find_layout_root(download) == inner
    assert find_layout_root(inner) == inner
    assert all(r.path.name != ".DS_Store" for r in list_images(find_layout_root(download)))


def test_shallowest_layout_wins(tmp_path: Path) -> None:
    outer = make_layout(tmp_path / "chest_xray")
    make_layout(outer / "chest_xray")
    assert find_layout_root(tmp_path) == outer


def _remove_tree(path: Path) -> None:
    for child in sorted(path.rglob("*"), reverse=True):
        child.rmdir() if child.is_dir() else child.unlink()
    path.rmdir()


@pytest.mark.parametrize(
    ("damage", "offending"),
    [
        ("missing_split", "val"),
        ("missing_class", "test/PNEUMONIA"),
        ("empty_class", "train/NORMAL"),
        ("only_non_images", "val/NORMAL"),
        ("stray_class", "train/COVID"),
        ("nested_folder", "test/NORMAL/extra"),
    ],
)
def test_bad_layout_names_the_offending_path(tmp_path: Path, damage: str, offending: str) -> None:
    root = make_layout(tmp_path / "data")
    target = root / offending
    if damage in {"missing_split", "missing_class"}:
        _remove_tree(target)
    elif damage == "empty_class":
        for image in target.iterdir():
            image.unlink()
    elif damage == "only_non_images":
        for image in target.iterdir():
            image.rename(image.with_suffix(".txt"))
    else:
        target.mkdir()
        (target / "x.jpeg").write_bytes(b"x")
    with pytest.raises(DatasetLayoutError, match="NORMAL") as caught:
        list_images(root)
    assert str(target) in str(caught.value)


def test_non_image_files_are_skipped_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_layout(tmp_path / "data")
    for name in ("notes.txt", "labels.csv", "Thumbs.db"):
        (root / "train" / "NORMAL" / name).write_text("x")
    with caplog.at_level(logging.WARNING, logger=discovery.__name__):
        records = list_images(root)
    assert all(r.path.suffix == ".jpeg" for r in records)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "3 non-image" in warnings[0].getMessage()


def test_find_layout_root_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        find_layout_root(tmp_path / "nowhere")
    archive = tmp_path / "archive.zip"
    archive.write_bytes(b"PK")
    with pytest.raises(DatasetLayoutError, match="unzip"):
        find_layout_root(archive)
    partial = tmp_path / "partial"
    (partial / "train").mkdir(parents=True)
    (partial / "test").mkdir()
    with pytest.raises(DatasetLayoutError, match="has train, test") as caught:
        find_layout_root(partial)
    assert str(partial) in str(caught.value)


def test_resolve_explicit_path(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "download" / "chest_xray")
    assert resolve_dataset(tmp_path / "download") == root
    missing = tmp_path / "typo"
    with pytest.raises(DatasetLayoutError, match="does not exist") as caught:
        resolve_dataset(missing)
    assert str(missing) in str(caught.value)


def test_resolve_from_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_layout(tmp_path / "data")
    monkeypatch.setenv(DATA_ENV_VAR, str(root))
    assert resolve_dataset() == root
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "gone"))
    with pytest.raises(DatasetLayoutError, match=DATA_ENV_VAR):
        resolve_dataset()


def test_resolve_from_cache(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "cache" / "kermany" / "chest_xray")
    assert resolve_dataset(download=False) == root


def _fake_kagglehub(monkeypatch: pytest.MonkeyPatch, download) -> None:
    """Install a stand-in kagglehub module so no test can reach the network."""
    module = types.ModuleType("kagglehub")
    module.dataset_download = download
    monkeypatch.setitem(sys.modules, "kagglehub", module)


def test_resolve_offline_gives_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(handle: str, path: str | None = None, *, output_dir: str | None = None) -> str:
        raise ConnectionError("Failed to resolve\n 'www.kaggle.com'")

    _fake_kagglehub(monkeypatch, offline)
    with pytest.raises(DataUnavailableError) as caught:
        resolve_dataset()
    message = str(caught.value)
    for needed in (
        DATA_ENV_VAR,
        "--dataset_path",
        "kaggle.json",
        "KAGGLE_USERNAME",
        discovery.KAGGLE_URL,
        str(tmp_path / "cache" / "kermany"),
        "ConnectionError: Failed to resolve 'www.kaggle.com'",
    ):
        assert needed in message
    with pytest.raises(DataUnavailableError, match="download disabled"):
        resolve_dataset(download=False)


def test_resolve_downloads_into_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_download(handle: str, path: str | None = None, *, output_dir: str) -> str:
        calls.append((handle, output_dir))
        make_layout(Path(output_dir) / "chest_xray" / "chest_xray")
        return output_dir

    _fake_kagglehub(monkeypatch, fake_download)
    target = tmp_path / "cache" / "kermany"
    assert resolve_dataset() == target / "chest_xray" / "chest_xray"
    assert calls == [(discovery.KAGGLE_DATASET, str(target))]
    assert resolve_dataset() == target / "chest_xray" / "chest_xray"
    assert len(calls) == 1, "a cached copy must not be downloaded again"


@pytest.mark.realdata
def test_real_data_official_counts(real_data_root: Path) -> None:
    records = list_images(find_layout_root(real_data_root))
    counts = {(r.split, r.class_name): 0 for r in records}
    for record in records:
        counts[record.split, record.class_name] += 1
    assert counts == OFFICIAL_COUNTS
    assert len(records) == sum(OFFICIAL_COUNTS.values()) == 5856
    assert len({r.path for r in records}) == len(records)
