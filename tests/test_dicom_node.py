"""`pneumonia-cxr dicom-node` against a real Orthanc (Debian's package, loopback ports, a
generated configuration): Orthanc forwards a film to the node, the node sends back its SR and
heatmap capture, and the test reads them from Orthanc's REST API (issue 36)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from test_loader import dicom_bytes

from pneumonia_cxr.archive import read_table
from pneumonia_cxr.cli import main

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _computed_radiograph(data: bytes) -> bytes:
    """The test DICOM as a CR object, as a PACS holds a computed radiograph (the node takes
    CR and DX images only)."""
    import io

    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class Orthanc:
    def __init__(self, root: Path, node_port: int, dicomweb: bool = False) -> None:
        self.http, self.dicom = _free_port(), _free_port()
        config = {
            "Name": "pcx-test",
            "StorageDirectory": str(root / "storage"),
            "IndexDirectory": str(root / "index"),
            "HttpPort": self.http,
            "DicomPort": self.dicom,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {"node": ["PCXNODE", "127.0.0.1", node_port]},
            "Plugins": [str(DICOMWEB_PLUGIN)] if dicomweb else [],
            "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/"},
        }
        (root / "orthanc.json").write_text(json.dumps(config))
        self.process = subprocess.Popen(
            ["Orthanc", str(root / "orthanc.json")],
            stdout=subprocess.DEVNULL,
            stderr=open(root / "orthanc.log", "wb"),  # noqa: SIM115 - closed with the process
        )
        _wait(lambda: self._get("/system"), 60, "Orthanc to start")

    def _get(self, path: str):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def post(self, path: str, data: bytes):
        request = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", data=data)
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())

    def instances(self) -> list[pydicom.Dataset]:
        found = []
        for instance in self._get("/instances") or []:
            url = f"http://127.0.0.1:{self.http}/instances/{instance}/file"
            with urllib.request.urlopen(url, timeout=10) as response:
                found.append(pydicom.dcmread(__import__("io").BytesIO(response.read())))
        return found

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def round_trip(real_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    if shutil.which("Orthanc") is None:
        pytest.skip("Orthanc absent: `apt-get install orthanc` (.ci/run installs it)")
    root = tmp_path_factory.mktemp("pacs")
    node_port, health = _free_port(), _free_port()
    orthanc = Orthanc(root, node_port)
    work = root / "node"
    command = [sys.executable, "-m", "pneumonia_cxr.cli", "dicom-node", str(work)]
    command += ["--allow", "ORTHANC", "--dest", f"ORTHANC@127.0.0.1:{orthanc.dicom}"]
    command += ["--port", str(node_port), "--health_port", str(health)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    node = subprocess.Popen(command, env=env, stderr=open(root / "node.log", "wb"))  # noqa: SIM115

    def healthy():
        try:
            url = f"http://127.0.0.1:{health}/health"
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            return None

    try:
        _wait(healthy, 120, "the node to start")
        film = sorted((real_data_root / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
        gray = np.asarray(Image.open(film).convert("L"))
        sources = {
            "child": dicom_bytes(gray, PatientAge="003Y", ViewPosition="AP"),
            "adult": dicom_bytes(gray, PatientAge="045Y", ViewPosition="AP"),
            "lateral": dicom_bytes(gray, PatientAge="003Y", ViewPosition="LL"),
        }
        files = {}
        for name, data in sources.items():
            path = root / f"{name}.dcm"
            path.write_bytes(_computed_radiograph(data))
            files[name] = path
            uploaded = orthanc.post("/instances", path.read_bytes())
            orthanc.post("/modalities/node/store", json.dumps(uploaded["ID"]).encode())
        _wait(lambda: (healthy() or {}).get("counts", {}).get("sent") == 3, 300, "3 results")
        # An AE title outside the allow-list: the association is rejected. A DICOM report (not
        # an image) sent by an allowed caller: no accepted context, no crash.
        child = pydicom.dcmread(files["child"])
        unknown, _ = _store_as("INTRUDER", node_port, child)
        report = next(o for o in orthanc.instances() if o.Modality == "SR")
        _, report_status = _store_as("ORTHANC", node_port, report)
        compressed = pydicom.dcmread(files["child"])
        compressed.SOPInstanceUID = pydicom.uid.generate_uid()
        compressed.compress(pydicom.uid.RLELossless)
        _, compressed_status = _store_as("ORTHANC", node_port, compressed)
        table = root / "rows.csv"
        assert main(["predict", *map(str, files.values()), "--output", str(table)]) == 0
        return {
            "instances": orthanc.instances(),
            "files": files,
            "rows": {Path(r["path"]).stem: r for r in read_table(table)},
            "counts": healthy()["counts"],
            "unknown_caller_established": unknown,
            "sr_store_status": report_status,
            "compressed_status": compressed_status,
            "alive_after": node.poll() is None and healthy() is not None,
            "node": node,
            "ports": (node_port, orthanc.dicom),
            "log": root / "node.log",
        }
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=60)
        orthanc.stop()


def test_orthanc_holds_the_nodes_results_for_each_film(round_trip: dict) -> None:
    instances = round_trip["instances"]
    by_source: dict[str, list[pydicom.Dataset]] = {}
    uids = {
        pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID: name
        for name, path in round_trip["files"].items()
    }
    for obj in instances:
        if obj.Modality == "SR":
            ref = obj.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
            by_source.setdefault(
                uids[ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID], []
            ).append(obj)
        elif obj.get("SourceImageSequence"):
            by_source.setdefault(
                uids[obj.SourceImageSequence[0].ReferencedSOPInstanceUID], []
            ).append(obj)
    assert {n: sorted(o.Modality for o in objs) for n, objs in by_source.items()} == {
        "child": ["OT", "SR"],
        "adult": ["SR"],
        "lateral": ["SR"],
    }
    for name, objs in by_source.items():
        [sr] = [o for o in objs if o.Modality == "SR"]
        items = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in sr.ContentSequence}
        row = round_trip["rows"][name]
        assert items["Assessment state"].TextValue == row["state"]
        if row["state"] == "assessed":
            value = items["Probability of pneumonia"].MeasuredValueSequence[0].NumericValue
            assert float(value) == pytest.approx(float(row["probability"]), abs=1e-6)
        else:
            assert items["Reason not assessed"].TextValue == row["reason"]
    assert round_trip["counts"]["sent"] == 3 and round_trip["counts"]["dead"] == 0
    log = round_trip["log"].read_text()
    assert log.count("sent the results of") == 3


def test_every_object_the_node_sent_passes_dciodvfy(round_trip: dict, tmp_path: Path) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy absent: `apt-get install dicom3tools`")
    for obj in round_trip["instances"]:
        if obj.Modality not in ("SR", "OT"):
            continue
        path = tmp_path / f"{obj.SOPInstanceUID}.dcm"
        obj.save_as(path, enforce_file_format=True)
        done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        errors = [
            line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")
        ]
        assert not errors, errors


def test_an_unknown_caller_is_rejected_and_a_report_is_refused(round_trip: dict) -> None:
    """Checked while the node ran (`round_trip` kept these answers): no context for an SR or
    a compressed film (RLE), so nothing is stored and nothing hangs."""
    assert round_trip["unknown_caller_established"] is False
    assert round_trip["sr_store_status"] is None
    assert round_trip["compressed_status"] is None
    assert round_trip["counts"]["failed"] == 0
    assert round_trip["alive_after"] is True


def _store_as(ae_title: str, port: int, dataset: pydicom.Dataset | Path, tls=None):
    """(association established, C-STORE status or None) of one send to the node, offering
    only the dataset's own transfer syntax (a path: sent as its bytes, undecoded)."""
    from pynetdicom import AE

    meta = (
        pydicom.dcmread(dataset, stop_before_pixels=True) if isinstance(dataset, Path) else dataset
    )
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(meta.SOPClassUID, meta.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="PCXNODE", tls_args=tls)
    if not assoc.is_established:
        return False, None
    try:
        if not assoc.accepted_contexts:
            return True, None
        status = assoc.send_c_store(dataset)
        return True, getattr(status, "Status", None)
    finally:
        assoc.release()


def _node(work: Path, node_port: int, health: int, orthanc: Orthanc, log: Path):
    command = [sys.executable, "-m", "pneumonia_cxr.cli", "dicom-node", str(work)]
    command += ["--allow", "ORTHANC", "--dest", f"ORTHANC@127.0.0.1:{orthanc.dicom}"]
    command += ["--port", str(node_port), "--health_port", str(health)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return subprocess.Popen(command, env=env, stderr=open(log, "ab"))


def _counts(health: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{health}/health", timeout=2) as response:
            return json.loads(response.read())["counts"]
    except OSError:
        return {}


def test_sigkill_with_images_queued_loses_nothing_and_duplicates_nothing(
    real_data_root: Path, tmp_path: Path
) -> None:
    """20 films forwarded; the node is killed (SIGKILL) while its queue holds them; after a
    restart, and the PACS sending again what was not acknowledged, Orthanc holds exactly one
    SR per film."""
    if shutil.which("Orthanc") is None:
        pytest.skip("Orthanc absent: `apt-get install orthanc` (.ci/run installs it)")
    node_port, health = _free_port(), _free_port()
    orthanc = Orthanc(tmp_path, node_port)
    work, log = tmp_path / "node", tmp_path / "node.log"
    film = sorted((real_data_root / "test" / "NORMAL").glob("*.jpeg"))[0]
    gray = np.asarray(Image.open(film).convert("L"))
    ids, sources = [], set()
    for _ in range(20):
        data = _computed_radiograph(dicom_bytes(gray, PatientAge="004Y", ViewPosition="PA"))
        sources.add(pydicom.dcmread(__import__("io").BytesIO(data)).SOPInstanceUID)
        ids.append(orthanc.post("/instances", data)["ID"])
    node = _node(work, node_port, health, orthanc, log)
    try:
        _wait(lambda: _counts(health), 120, "the node to start")
        body = json.dumps({"Resources": ids, "Asynchronous": True}).encode()
        orthanc.post("/modalities/node/store", body)
        _wait(lambda: sum(_counts(health).values()) >= 10, 120, "10 films queued")
        node.send_signal(signal.SIGKILL)
        node.wait(timeout=30)
        assert sum(_counts(health).values()) == 0  # it is down
        node = _node(work, node_port, health, orthanc, log)
        _wait(lambda: _counts(health), 120, "the node to restart")
        # A PACS sends again what the node did not acknowledge (here: everything, again).
        orthanc.post("/modalities/node/store", json.dumps({"Resources": ids}).encode())
        _wait(lambda: _counts(health).get("sent") == 20, 300, "20 results sent")
        assert sum(_counts(health).values()) == 20  # each film queued once
        reports = [o for o in orthanc.instances() if o.Modality == "SR"]
        referenced = [
            o.CurrentRequestedProcedureEvidenceSequence[0]
            .ReferencedSeriesSequence[0]
            .ReferencedSOPSequence[0]
            .ReferencedSOPInstanceUID
            for o in reports
        ]
        assert sorted(referenced) == sorted(sources)  # one SR per film, none twice
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=60)
        orthanc.stop()


def _film(real_data_root: Path, size: int | None = None) -> bytes:
    film = sorted((real_data_root / "test" / "NORMAL").glob("*.jpeg"))[1]
    image = Image.open(film).convert("L")
    if size is not None:
        image = image.resize((size, size))
    return _computed_radiograph(dicom_bytes(np.asarray(image), PatientAge="005Y"))


def _in_process_node(tmp_path: Path, **settings):
    from pneumonia_cxr.dicom_node import DicomNode, NodeConfig

    port = _free_port()
    config = NodeConfig(
        work_dir=tmp_path / "node",
        allowed_callers=("SCU",),
        destination=("NOBODY", "127.0.0.1", _free_port()),
        port=port,
        retries=1,
        **settings,
    )
    node = DicomNode(config)
    node.start()
    return node, port


def test_a_dataset_past_the_limit_is_aborted_as_it_arrives_and_a_forged_length_refused(
    real_data_root: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The limit is enforced while the fragments arrive (the association is aborted before the
    rest comes), an element declaring 2 GB is refused, and the node takes the next film."""
    from pynetdicom import _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # a file's bytes as they are
    node, port = _in_process_node(tmp_path, max_bytes=300_000)
    try:
        big = pydicom.dcmread(__import__("io").BytesIO(_film(real_data_root, 700)))  # ~490 KB
        established, status = _store_as("SCU", port, big)
        assert established and status is None  # aborted mid-dataset: no status came back
        small = _film(real_data_root)
        at = small.rfind(b"\xe0\x7f\x10\x00")  # Pixel Data, explicit VR OB: length at +8
        forged = tmp_path / "forged.dcm"
        forged.write_bytes(small[: at + 8] + (0x7FFFFFF0).to_bytes(4, "little") + small[at + 12 :])
        assert _store_as("SCU", port, forged)[1] == 0xC210
        # One PDU declaring 2 GB (the node announced 64 KB): the connection is closed from
        # the header, nothing is buffered.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(b"\x04\x00" + (2**31).to_bytes(4, "big") + b"\x00" * 1024)
            assert raw.recv(16) == b""  # closed by the node, not waiting for 2 GB
        assert _store_as("SCU", port, pydicom.dcmread(__import__("io").BytesIO(small)))[1] == 0
        assert sum(node.queue.counts().values()) == 1  # only the good film was kept
        messages = " ".join(r.getMessage() for r in caplog.records)
        assert "a dataset passed 300000 bytes" in messages
        assert "declares 2147483632 bytes" in messages and "a PDU of 2147483648 bytes" in messages
        assert not list((tmp_path / "node" / "received").glob("*.part"))
    finally:
        node.stop()


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA, a node certificate for 127.0.0.1 and a caller certificate (openssl CLI)."""
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=test CA")  # fmt: skip
    for name in ("node", "caller"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
            f"{name}.csr", "-subj", f"/CN={name}")  # fmt: skip
        (folder / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
            "-extfile", f"{name}.ext")  # fmt: skip
    return {
        name: folder / name
        for name in ("ca.pem", "node.pem", "node.key", "caller.pem", "caller.key")
    }


def test_a_tls_node_takes_tls_callers_with_a_certificate_only(
    real_data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import ssl

    from pneumonia_cxr.cli import main

    if shutil.which("openssl") is None:
        pytest.skip("openssl absent")
    files = _certificates(tmp_path / "tls")
    node, port = _in_process_node(
        tmp_path, tls_cert=files["node.pem"], tls_key=files["node.key"], tls_ca=files["ca.pem"]
    )
    film = pydicom.dcmread(__import__("io").BytesIO(_film(real_data_root)))
    try:
        assert _store_as("SCU", port, film) == (False, None)  # plain DICOM: no association
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=files["ca.pem"])
        assert _store_as("SCU", port, film, tls=(context, "127.0.0.1")) == (False, None)
        context.load_cert_chain(files["caller.pem"], files["caller.key"])  # mutual TLS
        assert _store_as("SCU", port, film, tls=(context, "127.0.0.1")) == (True, 0)
        assert sum(node.queue.counts().values()) == 1
    finally:
        node.stop()
    # Another interface than loopback without TLS: refused before anything listens.
    args = ["dicom-node", str(tmp_path / "w"), "--allow", "SCU", "--dest", "PACS@10.0.0.9:104"]
    assert main([*args, "--host", "0.0.0.0"]) == 2
    assert "needs TLS" in capsys.readouterr().err
    assert main([*args[:4], "--dest", "nowhere"]) == 2
    assert "AE@HOST:PORT" in capsys.readouterr().err


def test_results_go_to_a_dicomweb_server_by_stow_rs(real_data_root: Path, tmp_path: Path) -> None:
    """The node's destination as a DICOMweb URL: Orthanc's DICOMweb plugin receives the SR and
    the capture by STOW-RS."""
    if shutil.which("Orthanc") is None or not DICOMWEB_PLUGIN.exists():
        pytest.skip("Orthanc or its DICOMweb plugin absent (.ci/run installs orthanc-dicomweb)")
    node_port, health = _free_port(), _free_port()
    orthanc = Orthanc(tmp_path, node_port, dicomweb=True)
    command = [sys.executable, "-m", "pneumonia_cxr.cli", "dicom-node", str(tmp_path / "node")]
    command += ["--allow", "ORTHANC", "--dest", f"http://127.0.0.1:{orthanc.http}/dicom-web"]
    command += ["--port", str(node_port), "--health_port", str(health)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    node = subprocess.Popen(command, env=env, stderr=open(tmp_path / "node.log", "wb"))  # noqa: SIM115
    try:
        _wait(lambda: _counts(health), 120, "the node to start")
        uploaded = orthanc.post("/instances", _film(real_data_root))
        orthanc.post("/modalities/node/store", json.dumps(uploaded["ID"]).encode())
        _wait(lambda: _counts(health).get("sent") == 1, 300, "the results sent")
        modalities = sorted(str(o.Modality) for o in orthanc.instances())
        assert modalities == ["CR", "OT", "SR"]
        assert "(STOW-RS)" in (tmp_path / "node.log").read_text()
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=60)
        orthanc.stop()


def test_a_stow_rs_partial_failure_is_not_taken_for_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 202 whose FailedSOPSequence names an object raises, so the queue retries it."""
    from dicomweb_client.api import DICOMwebClient
    from pydicom.dataset import Dataset, FileMetaDataset

    from pneumonia_cxr.dicom_node import NodeConfig, send_results

    failed = Dataset()
    failed.ReferencedSOPInstanceUID, failed.FailureReason = "1.2.3", 0xA700
    answer = Dataset()
    answer.FailedSOPSequence = [failed]
    monkeypatch.setattr(DICOMwebClient, "store_instances", lambda self, datasets: answer)
    sr = Dataset()
    sr.file_meta = FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    sr.SOPClassUID, sr.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.3"
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    config = NodeConfig(tmp_path, ("SCU",), "http://127.0.0.1:9/dicom-web")
    with pytest.raises(ConnectionError, match="refused 1 of 1"):
        send_results([path], config)
    answer.FailedSOPSequence = []
    send_results([path], config)  # all stored: no error


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"tls_ca": Path("ca.pem")}, "give --tls_cert"),
        ({"destination": "http://pacs.example:8042/dicom-web", "token": "t"}, "in clear"),
        ({"destination": "http://127.0.0.1:8042/dicom-web", "dest_tls_ca": Path("x")}, "https"),
        ({"max_bytes": 0}, "must be positive"),
    ],
)
def test_unsafe_node_settings_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: dict, message: str
) -> None:
    from pneumonia_cxr.dicom_node import DEST_TOKEN_ENV, NodeConfig

    settings = dict(settings)
    if settings.pop("token", None):
        monkeypatch.setenv(DEST_TOKEN_ENV, "secret")
    settings.setdefault("destination", ("PACS", "127.0.0.1", 104))
    with pytest.raises(ValueError, match=message):
        NodeConfig(tmp_path, ("SCU",), **settings)
