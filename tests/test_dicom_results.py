"""`predict --dicom_out` (issue 36): DICOM SR and heatmap Secondary Capture per DICOM input,
valid by `dciodvfy`, in the source's study, saying what the table says."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from test_loader import dicom_bytes

from pneumonia_cxr.archive import read_table
from pneumonia_cxr.cli import main
from pneumonia_cxr.dicom_results import DISCLAIMER, PRIVATE_SCHEME, burn_disclaimer

PNEUMONIA_CODE = "233604007"


def _dicoms(gray: np.ndarray, folder: Path) -> dict[str, Path]:
    """The four kinds of DICOM of the browser test (8/16-bit, MONOCHROME1/2), a 45-year-old's
    film, a lateral view and a film without the type 2 patient and study attributes, all of one
    patient's study."""
    wide = gray.astype(np.uint16) * 16 + 100
    study = {"StudyInstanceUID": pydicom.uid.generate_uid(), "PatientAge": "003Y"}
    files = {
        "mono2_8bit.dcm": dicom_bytes(gray, **study),
        "mono1_8bit.dcm": dicom_bytes(255 - gray, photometric="MONOCHROME1", **study),
        "mono2_16bit.dcm": dicom_bytes(
            wide, RescaleSlope=2, RescaleIntercept=-50, WindowCenter=4200, WindowWidth=7000, **study
        ),
        "mono1_16bit.dcm": dicom_bytes(4500 - wide, photometric="MONOCHROME1", **study),
        "adult.dcm": dicom_bytes(gray, **(study | {"PatientAge": "045Y"})),
        "lateral.dcm": dicom_bytes(gray, ViewPosition="LL", **study),
    }
    files["bare.dcm"] = _without_type2(dicom_bytes(gray, **study))
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


def _without_type2(data: bytes) -> bytes:
    """A film from a modality that leaves out the patient's and study's type 2 attributes."""
    import io

    from pneumonia_cxr.dicom_results import TYPE2_COPIED

    dataset = pydicom.dcmread(io.BytesIO(data))
    for keyword in TYPE2_COPIED:
        if keyword in dataset:
            delattr(dataset, keyword)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def written(real_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("dicom_out")
    (root / "in").mkdir()
    film = sorted((real_data_root / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    sources = _dicoms(np.asarray(Image.open(film).convert("L")), root / "in")
    shutil.copy(film, root / "in" / film.name)  # a JPEG beside them: no DICOM result
    table, out = root / "rows.csv", root / "out"
    args = ["predict", str(root / "in"), "--output", str(table), "--dicom_out", str(out)]
    assert main([*args, "--no_progress"]) == 0
    objects = [pydicom.dcmread(path) for path in sorted(out.glob("*.dcm"))]
    by_source: dict[str, dict[str, pydicom.Dataset]] = {}
    uids = {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: n for n, p in sources.items()
    }
    for obj in objects:
        if obj.Modality == "SR":
            ref = obj.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
            source = uids[ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID]
        else:
            source = uids[obj.SourceImageSequence[0].ReferencedSOPInstanceUID]
        by_source.setdefault(source, {})[obj.Modality] = obj
    rows = {Path(r["path"]).name: r for r in read_table(table)}
    return {"sources": sources, "objects": by_source, "rows": rows, "out": out}


def _items(sr: pydicom.Dataset) -> dict[str, pydicom.Dataset]:
    return {item.ConceptNameCodeSequence[0].CodeMeaning: item for item in sr.ContentSequence}


def test_each_dicom_input_gets_an_sr_and_the_assessed_ones_a_heatmap(written: dict) -> None:
    objects = written["objects"]
    assert set(objects) == set(written["sources"])  # the JPEG got none
    for name, found in objects.items():
        expect = {"SR", "OT"} if name.startswith(("mono", "bare")) else {"SR"}
        assert set(found) == expect, name
    for name in ("adult.dcm", "lateral.dcm"):
        assert written["rows"][name]["state"] == "not assessed"


def test_the_sr_says_what_the_table_says(written: dict) -> None:
    for name, found in written["objects"].items():
        row, items = written["rows"][name], _items(found["SR"])
        source = pydicom.dcmread(written["sources"][name], stop_before_pixels=True)
        for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber"):
            if keyword in source:  # copied as it is
                assert found["SR"].get(keyword) == source.get(keyword), keyword
            else:  # a type 2 attribute the film lacks: present and empty, nothing made up
                assert found["SR"].get(keyword) == "", keyword
        assert found["SR"].SOPInstanceUID != source.SOPInstanceUID
        assert found["SR"].SeriesInstanceUID != source.SeriesInstanceUID
        assert items["Assessment state"].TextValue == row["state"]
        finding = items["Finding"].ConceptCodeSequence[0]
        if row["state"] == "assessed":
            probability = float(
                items["Probability of pneumonia"].MeasuredValueSequence[0].NumericValue
            )
            assert probability == pytest.approx(float(row["probability"]), abs=1e-6)
            assert (finding.CodeValue == PNEUMONIA_CODE) == (row["label"] == "PNEUMONIA")
            type_p = items["P(VIRAL | PNEUMONIA)"].MeasuredValueSequence[0].NumericValue
            assert float(type_p) == pytest.approx(float(row["p_viral"]), abs=1e-6)
            if row["pneumonia_type"]:
                kind = items["Answer: type"].ConceptCodeSequence[0].CodeMeaning
                assert kind.split()[0].upper() == row["pneumonia_type"]
        else:
            assert finding.CodeMeaning == "Undetermined" and "Probability of pneumonia" not in items
            assert items["Reason not assessed"].TextValue == row["reason"]
        assert items["Disclaimer"].TextValue == DISCLAIMER
        assert items["Model file SHA-256"].TextValue
        assert PRIVATE_SCHEME in {
            i.ConceptNameCodeSequence[0].CodingSchemeDesignator for i in found["SR"].ContentSequence
        }


def test_every_object_passes_dciodvfy(written: dict) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy absent: `apt-get install dicom3tools` (.ci/run installs it)")
    for path in sorted(written["out"].glob("*.dcm")):
        done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        errors = [
            line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")
        ]
        assert not errors, (path.name, errors)


def test_the_disclaimer_is_in_the_heatmap_pixels(written: dict) -> None:
    capture = written["objects"]["mono2_8bit.dcm"]["OT"]
    assert capture.BurnedInAnnotation == "YES" and capture.PhotometricInterpretation == "RGB"
    pixels = capture.pixel_array
    band = pixels[: pixels.shape[0] // 30]
    assert (band == [255, 255, 0]).all(axis=-1).any()  # yellow text on the black band
    blank = np.zeros((200, 400, 3), np.uint8)
    assert not np.array_equal(burn_disclaimer(blank), blank)


def test_a_rerun_rewrites_the_same_objects_and_a_misnamed_file_stops_nothing(
    written: dict, tmp_path: Path
) -> None:
    """Deterministic UIDs: a resumed or repeated run gives a PACS no second result; a JPEG
    named .dcm is not DICOM to the loader, so it gets a table row and no object."""
    source = written["sources"]["mono2_8bit.dcm"]
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(source, folder / source.name)
    jpeg = next(p for p in source.parent.iterdir() if p.suffix == ".jpeg")
    shutil.copy(jpeg, folder / "misnamed.dcm")
    out = tmp_path / "out"
    for _ in range(2):
        args = ["predict", str(folder), "--output", str(tmp_path / "rows.json")]
        assert main([*args, "--dicom_out", str(out), "--no_progress"]) == 0
    names = sorted(path.name for path in out.glob("*.dcm"))
    assert names == sorted(path.name for path in written["out"].glob("*.dcm") if _of(path, source))


def _of(path: Path, source: Path) -> bool:
    """Whether a written object is about `source` (by the source's SOP Instance UID)."""
    uid = pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID
    obj = pydicom.dcmread(path, stop_before_pixels=True)
    if obj.Modality == "SR":
        evidence = obj.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        return evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == uid
    return obj.SourceImageSequence[0].ReferencedSOPInstanceUID == uid
