"""Shared fixtures: a tiny synthetic data set, and the real data where CI provides it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest worker per core (pytest-xdist): each keeps to one intra-op
    # thread, so that two workers never put four spinning PyTorch threads on two cores (several
    # times slower). Set before PyTorch is imported; subprocesses inherit it.
    os.environ["OMP_NUM_THREADS"] = "1"

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


def shared_data(variable: str, what: str) -> Path:
    """The one skip for absent shared data: the folder `variable` names, or a skip saying so."""
    value = os.environ.get(variable)
    if not value or not Path(value).is_dir():
        pytest.skip(f"{what} absent: set {variable} to its folder (CI sets it from ../shared/data)")
    return Path(value)


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """The Kermany 224 data set (CI sets PNEUMONIA_CXR_DATA); skip where it is absent."""
    return shared_data("PNEUMONIA_CXR_DATA", "the kermany_224 data")


@pytest.fixture(scope="session")
def fullres_root() -> Path:
    """The full-resolution originals (CI sets PNEUMONIA_CXR_FULLRES); skip where absent."""
    return shared_data("PNEUMONIA_CXR_FULLRES", "the full-resolution sample")


@pytest.fixture(scope="session")
def session_tiny_model(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny trained model file for the whole session (read-only: copy it to change it)."""
    from tiny_runs import train_tiny_model

    return train_tiny_model(tiny_synthetic, tmp_path_factory.mktemp("session_model"))


# The modules that take longest start first, so that under `make test` (one worker per core)
# no core idles while the other finishes a long module started last.
LONGEST_FIRST: tuple[str, ...] = (
    "test_resume_sigkill.py",
    "test_training.py",
    "test_shipped_subgroups_storage.py",
    "test_notebook.py",
    "test_archive.py",
    "test_calibrate_site.py",
    "test_adapt_site.py",
    "test_ensemble_ood.py",
    "test_cli.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept within
