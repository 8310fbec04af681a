"""Shared fixtures: a tiny synthetic data set, and the real data where CI provides it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pneumonia_cxr.data.synthetic import SyntheticSpec, generate_synthetic_dataset

TINY_SPEC = SyntheticSpec(
    image_size=48, train_per_class=24, val_per_class=4, test_per_class=8, seed=3
)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Caches (e.g. ONNX exports of test models) go to a temporary folder, not ~/.cache."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few dozen 48-px synthetic X-rays in the official layout (read-only for tests)."""
    return generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "data", TINY_SPEC)


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """The Kermany 224 data set (CI sets PNEUMONIA_CXR_DATA); skip where it is absent."""
    value = os.environ.get("PNEUMONIA_CXR_DATA")
    if not value or not Path(value).is_dir():
        pytest.skip("real data absent: set PNEUMONIA_CXR_DATA to the kermany_224 folder")
    return Path(value)


@pytest.fixture(scope="session")
def session_tiny_model(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny trained model file for the whole session (read-only: copy it to change it)."""
    from tiny_runs import train_tiny_model

    return train_tiny_model(tiny_synthetic, tmp_path_factory.mktemp("session_model"))
