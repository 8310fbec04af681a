"""The Python API (`import pneumonia_cxr as pcx`): the README's example runs, and its answers
are `predict`'s."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pneumonia_cxr as pcx
from pneumonia_cxr.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_api_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the README's section 'Python API' has no python block"
    return blocks[0]


@pytest.mark.realdata
def test_the_readme_example_gives_predicts_rows(
    real_data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The README's block, run on 20 real test images and one empty file (`paths`), against
    `predict`'s CSV: the error row prints, it raises nothing."""
    test = real_data_root / "test"
    paths = [
        str(p) for name in ("NORMAL", "PNEUMONIA") for p in sorted((test / name).iterdir())[:10]
    ]
    empty = tmp_path / "empty.jpeg"
    empty.write_bytes(b"")
    paths.append(str(empty))
    namespace: dict = {"paths": paths}
    exec(compile(_readme_api_block(), "README.md: Python API", "exec"), namespace)
    results = namespace["results"]
    table = tmp_path / "predict.csv"
    assert main(["predict", *paths, "--output", str(table), "--no_progress"]) == 0
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r.path for r in results] == [row["path"] for row in rows] == paths
    for result, row in zip(results[:-1], rows[:-1], strict=True):
        assert abs(result.probability - float(row["probability"])) <= 1e-6
        assert result.label == row["label"] and result.pneumonia_type == row["pneumonia_type"]
    assert results[-1].state == rows[-1]["state"] == "unreadable" and results[-1].error
    assert f"{empty} unreadable {results[-1].error}" in capsys.readouterr().out
    assert {r.label for r in results[:-1]} == {"NORMAL", "PNEUMONIA"}
    one = namespace["model"].predict(paths[0])
    assert isinstance(one, pcx.PredictionRow) and one.label == results[0].label
    heatmap = namespace["heatmap"]
    assert heatmap.shape == (224, 224) and heatmap.max() > heatmap.min()


def test_arrays_pil_images_and_files_get_the_same_answer(
    session_tiny_model: Path, tiny_synthetic: Path
) -> None:
    model = pcx.load(session_tiny_model)
    files = sorted((tiny_synthetic / "test" / "PNEUMONIA").iterdir())[:3]
    by_file = model.predict(files)
    gray = [np.asarray(Image.open(f).convert("L")) for f in files]
    for row, array in zip(by_file, model.predict(gray), strict=True):
        assert array.probability == pytest.approx(row.probability, abs=1e-6)
        assert array.label == row.label and array.path.startswith("<image")
    pil = model.predict(Image.open(files[0]))
    assert pil.probability == pytest.approx(by_file[0].probability, abs=1e-6)
    folder = model.predict(tiny_synthetic / "test" / "PNEUMONIA")
    assert len(folder) == len(list((tiny_synthetic / "test" / "PNEUMONIA").iterdir()))
    mixed = model.predict([tiny_synthetic / "test" / "PNEUMONIA", gray[0], files[1]])
    assert len(mixed) == len(folder) + 2  # the folder's rows in its place
    assert [r.path for r in mixed[: len(folder)]] == [r.path for r in folder]
    assert mixed[-2].path == f"<image {1}>" and mixed[-1].path == str(files[1])


def test_a_bad_file_is_a_row_with_its_error_and_a_bad_array_a_clear_error(
    session_tiny_model: Path, tmp_path: Path
) -> None:
    model = pcx.load(session_tiny_model)
    broken = tmp_path / "cut.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n cut")
    rows = model.predict([broken, tmp_path / "missing.jpeg"])
    assert [r.probability for r in rows] == [None, None]
    assert "cut.png" not in rows[0].error and rows[0].error  # the path is the row's
    assert "not found" in rows[1].error
    with pytest.raises(ValueError, match="uint8"):
        model.predict(np.zeros((8, 8), dtype=np.float32))


def test_explain_gives_a_map_at_the_input_size(session_tiny_model: Path, tiny_synthetic: Path):
    model = pcx.load(session_tiny_model)
    image = sorted((tiny_synthetic / "test" / "PNEUMONIA").iterdir())[0]
    heatmap = model.explain(image)
    assert heatmap.shape == (48, 48) and heatmap.min() >= 0.0 and heatmap.max() <= 1.0


def test_import_is_light_and_the_public_names_resolve() -> None:
    """`import pneumonia_cxr` loads no PyTorch (PEP 562 lazy names); every listed name exists."""
    code = "import sys, pneumonia_cxr as p; assert 'torch' not in sys.modules; print(p.__all__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in pcx.__all__:
        assert getattr(pcx, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pcx.nope  # noqa: B018


def test_evaluate_returns_typed_figures_equal_to_metrics_json(
    session_tiny_model: Path, tiny_synthetic: Path, tmp_path: Path
) -> None:
    result = pcx.evaluate(
        pcx.load(session_tiny_model), tiny_synthetic, output_dir=tmp_path, n_resamples=50,
        explain_images=0,
    )  # fmt: skip
    written = json.loads((tmp_path / "metrics.json").read_text())
    summary = result.summary.pneumonia
    assert summary.n == written["n"] == 16
    assert summary.roc_auc.value == written["roc_auc"]["value"]
    assert summary.sensitivity.ci_low == written["at_threshold"]["sensitivity"]["ci_low"]
    assert summary.confusion == written["at_threshold"]["confusion"]
    assert sum(summary.confusion.values()) == summary.n
    assert result.summary.pneumonia_type is None  # the tiny model has no type head
