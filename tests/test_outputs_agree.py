"""One result in every output (issue 34): the shipped two-headed model through plain, streamed
(archive) and distributed (DDP) prediction, the API and the service, on 10 test copies, an
astronaut photograph, a test film written as a 45-year-old's DICOM and an empty file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_loader import dicom_bytes

from pneumonia_cxr.archive import read_table
from pneumonia_cxr.cli import main
from pneumonia_cxr.model.outputs import OUTPUTS, table_columns

REFUSED = ("astronaut.png", "adult.dcm")
NUMERIC_TOLERANCE = 1e-4  # the ONNX twin (plain) against PyTorch (DDP ranks)


@pytest.fixture(scope="module")
def inputs(real_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders: `good` (5 NORMAL + 5 PNEUMONIA test copies), `refused` (the photograph and the
    adult DICOM), `mixed` (both and an empty file), `unreadable` (only the empty file)."""
    from skimage import data

    root = tmp_path_factory.mktemp("agree")
    folders = {name: root / name for name in ("good", "refused", "mixed", "unreadable")}
    for folder in folders.values():
        folder.mkdir()
    for kind in ("NORMAL", "PNEUMONIA"):
        for source in sorted((real_data_root / "test" / kind).glob("*.jpeg"))[:5]:
            for name in ("good", "mixed"):
                shutil.copy(source, folders[name] / source.name)
    film = sorted((real_data_root / "test" / "NORMAL").glob("*.jpeg"))[0]
    pixels = np.asarray(Image.open(film).convert("L"))
    adult = dicom_bytes(pixels, PatientAge="045Y", ViewPosition="AP", Modality="CR")
    for name in ("refused", "mixed"):
        Image.fromarray(data.astronaut()).save(folders[name] / "astronaut.png")
        (folders[name] / "adult.dcm").write_bytes(adult)
    for name in ("mixed", "unreadable"):
        (folders[name] / "empty.png").write_bytes(b"")
    return folders


def _ddp(folder: Path, output: Path) -> int:
    """`predict --devices 2` in its own process (Lightning starts the second rank from it)."""
    command = [sys.executable, "-m", "pneumonia_cxr.cli", "predict", str(folder)]
    command += ["--output", str(output), "--devices", "2", "--accelerator", "cpu"]
    command += ["--strategy", "ddp", "--batch_size", "4"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PYTEST"))}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    return done.returncode


@pytest.fixture(scope="module")
def runs(inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """(folder, mode) -> (exit code, output file); the DDP runs side by side."""
    out = tmp_path_factory.mktemp("runs")
    jobs = {  # the bar's three cases: one unreadable (mixed), all not assessed, all good
        ("mixed", "ddp_csv"): out / "mixed_ddp.csv",
        ("refused", "ddp_csv"): out / "refused_ddp.csv",
        ("good", "ddp_json"): out / "good_ddp.json",
    }
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {key: pool.submit(_ddp, inputs[key[0]], path) for key, path in jobs.items()}
    found = {key: (future.result(), jobs[key]) for key, future in futures.items()}
    for folder in inputs:
        for mode, suffix in (("archive", ".csv"), ("plain_json", ".json")):
            path = out / f"{folder}_{mode}{suffix}"
            code = main(["predict", str(inputs[folder]), "--output", str(path), "--no_progress"])
            found[(folder, mode)] = (code, path)
    return found


def _same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for column, value in a.items():
        other = b[column]
        if isinstance(value, float) or (isinstance(value, str) and _is_number(value)):
            expected = pytest.approx(float(other), abs=NUMERIC_TOLERANCE, rel=1e-5)
            assert float(value) == expected, column
        else:
            assert value == other, (a["path"], column)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text not in ("True", "False")


def test_distributed_csv_and_json_equal_the_plain_modes(runs: dict) -> None:
    archive, ddp = (
        read_table(runs[("mixed", "archive")][1]),
        read_table(runs[("mixed", "ddp_csv")][1]),
    )
    header = runs[("mixed", "archive")][1].read_text().splitlines()[0]
    assert runs[("mixed", "ddp_csv")][1].read_text().splitlines()[0] == header
    assert header.split(",") == table_columns(OUTPUTS)  # the shipped model: both answers
    assert len(ddp) == len(archive) == 13
    for a, b in zip(ddp, archive, strict=True):
        _same(a, b)
    plain = json.loads(runs[("good", "plain_json")][1].read_text())
    distributed = json.loads(runs[("good", "ddp_json")][1].read_text())
    assert len(distributed) == 10
    assert [list(r) for r in distributed] == [list(r) for r in plain]
    for a, b in zip(distributed, plain, strict=True):
        _same(a, b)
    assert not list(runs[("mixed", "ddp_csv")][1].parent.glob(".*.part"))


def test_refused_images_have_no_label_in_any_table(runs: dict) -> None:
    for mode in ("archive", "ddp_csv"):
        rows = {Path(r["path"]).name: r for r in read_table(runs[("mixed", mode)][1])}
        for name in REFUSED:
            row = rows[name]
            assert (row["state"], row["label"], row["probability"]) == ("not assessed", "", "")
            assert row["pneumonia_type"] == "" and row["p_viral"] == ""
            assert row["out_of_distribution"] == "True" and row["reason"]
            assert 0.0 <= float(row["unassessed_probability"]) <= 1.0
        assert "age" in rows["adult.dcm"]["reason"]
        assert "colour picture" in rows["astronaut.png"]["reason"]
        assert rows["empty.png"]["state"] == "unreadable" and rows["empty.png"]["error"]
        assessed = [r for r in rows.values() if r["state"] == "assessed"]
        assert len(assessed) == 10 and all(r["label"] in ("NORMAL", "PNEUMONIA") for r in assessed)
    records = json.loads(runs[("mixed", "plain_json")][1].read_text())
    for record in records:
        if Path(record["path"]).name in REFUSED:
            assert record["label"] == "" and record["probability"] is None


def test_every_mode_exits_by_the_same_rule(runs: dict) -> None:
    """0 when at least one file was read (answered or not assessed), 1 when none was; the
    distributed mode exits by the same rule (`cli.prediction._report`) for the three cases."""
    expected = {"good": 0, "mixed": 0, "refused": 0, "unreadable": 1}
    for (folder, _mode), (code, _path) in runs.items():
        assert code == expected[folder], (folder, _mode)
    modes = {mode for (folder, mode) in runs if folder != "unreadable"}
    assert {"archive", "plain_json", "ddp_csv", "ddp_json"} <= modes


def test_gradcam_writes_no_heatmap_for_a_refused_image(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    maps, table = tmp_path / "maps", tmp_path / "rows.json"
    args = ["predict", str(inputs["mixed"]), "--output", str(table), "--no_progress"]
    assert main([*args, "--gradcam", str(maps)]) == 0
    rows = {Path(r["path"]).name: r for r in json.loads(table.read_text())}
    assert all(rows[name]["heatmap"] == "" for name in REFUSED)
    written = sorted(p.name for p in maps.glob("*.png"))
    assert len(written) == 10 and not any(
        Path(n).stem.startswith(("astro", "adult")) for n in written
    )


def test_api_and_service_say_not_assessed(inputs: dict[str, Path]) -> None:
    from fastapi.testclient import TestClient

    import pneumonia_cxr as pcx
    from pneumonia_cxr.serve.app import create_app
    from pneumonia_cxr.serve.service import ServeConfig

    model = pcx.load()
    files = [inputs["mixed"] / name for name in (*REFUSED, "IM-0001-0001.jpeg")]
    rows = model.predict(files)
    assert [r.state for r in rows] == ["not assessed", "not assessed", "assessed"]
    assert [r.label for r in rows[:2]] == ["", ""] and rows[2].label == "NORMAL"
    with TestClient(create_app(ServeConfig())) as client:
        deadline = time.monotonic() + 120
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        upload = [("file", (f.name, f.read_bytes())) for f in files]
        answers = client.post("/v1/predict?gradcam=true", files=upload).json()["results"]
    for answer, row in zip(answers, rows, strict=True):
        assert answer["state"] == row.state and answer["label"] == row.label
        assert answer["reason"] == row.reason
        if row.state == "not assessed":
            assert answer["probability"] is None and answer["reasons"]
            assert "gradcam_png_base64" not in answer and "gradcam_type_png_base64" not in answer
        else:
            assert answer["probability"] == pytest.approx(row.probability, abs=1e-4)
            assert "gradcam_png_base64" in answer
