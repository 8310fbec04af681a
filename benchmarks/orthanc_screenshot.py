"""The PACS page's screenshot: a child's film (a Kermany test image written as a CR DICOM)
stored into Debian's Orthanc, forwarded to `pneumonia-cxr dicom-node`, and the study as
Orthanc Explorer shows it once the node's SR and heatmap series are back (Chromium through
Playwright), saved as a PNG.

Run: `.venv/bin/python benchmarks/orthanc_screenshot.py [--output assets/orthanc_explorer.png]`
(needs `apt-get install orthanc chromium`; everything runs on loopback ports and stops after).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _until(check, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            found = check()
        except OSError:
            found = None
        if found:
            return found
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def _film(path: Path) -> bytes:
    """The JPEG as an uncompressed CR DICOM of a 3-year-old, AP view (pydicom)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.asarray(Image.open(path).convert("L"))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientAge = "Demo^Child", "DEMO-0001", "003Y"
    ds.PatientBirthDate, ds.PatientSex, ds.ReferringPhysicianName = "", "O", ""
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20261206", "101500", "", "1"
    ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = 1, 1, "demo"
    ds.StudyDescription, ds.SeriesDescription = "Chest AP (demo)", "CR chest"
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "CR", "AP", "CHEST"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def main() -> None:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "kermany_224"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=shared)
    parser.add_argument("--output", type=Path, default=Path("assets/orthanc_explorer.png"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None or shutil.which("Orthanc") is None:
        raise SystemExit("needs Chromium and Orthanc: apt-get install chromium orthanc")
    root = Path(tempfile.mkdtemp(prefix="pcx-orthanc-"))
    http, dicom, node_port, health = _port(), _port(), _port(), _port()
    config = {
        "Name": "pneumonia-cxr demo",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "HttpPort": http,
        "DicomPort": dicom,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": True,
        "DicomCheckModalityHost": False,
        "DicomModalities": {"pcx": ["PCXNODE", "127.0.0.1", node_port]},
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    base = f"http://127.0.0.1:{http}"
    processes = [
        subprocess.Popen(["Orthanc", str(root / "orthanc.json")], stderr=subprocess.DEVNULL)
    ]
    node = [sys.executable, "-m", "pneumonia_cxr.cli", "dicom-node", str(root / "node")]
    node += ["--allow", "ORTHANC", "--dest", f"ORTHANC@127.0.0.1:{dicom}"]
    node += ["--port", str(node_port), "--health_port", str(health)]
    log = open(root / "node.log", "wb")  # noqa: SIM115 - closed after the node stops
    processes.append(subprocess.Popen(node, stderr=log))

    def get(url: str):
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    def post(path: str, body: bytes):
        request = urllib.request.Request(base + path, data=body)
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    try:
        _until(lambda: get(f"{base}/system"), 60, "Orthanc")
        _until(lambda: get(f"http://127.0.0.1:{health}/health"), 120, "the node")
        film = sorted((args.data / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
        stored = post("/instances", _film(film))
        post("/modalities/pcx/store", json.dumps(stored["ID"]).encode())
        study = stored["ParentStudy"]
        try:
            _until(lambda: len(get(f"{base}/studies/{study}")["Series"]) == 3, 120, "the results")
        except SystemExit:
            print((root / "node.log").read_text()[-3000:])  # why the node sent nothing
            raise
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page(viewport={"width": 1000, "height": 620})
            page.goto(f"{base}/app/explorer.html#study?uuid={study}")
            page.get_by_text("pneumonia-cxr heatmap").first.wait_for(timeout=30_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(args.output))
            browser.close()
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        log.close()
        shutil.rmtree(root, ignore_errors=True)
    print(f"written: {args.output}")


if __name__ == "__main__":
    main()
