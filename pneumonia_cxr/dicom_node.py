"""`pneumonia-cxr dicom-node`: a DICOM node a PACS sends chest films to; it sends back a
Structured Report and a heatmap capture (`dicom_results`) for each (issue 36).

A C-STORE listener (pynetdicom) accepts CR and DX images, uncompressed, from an allow-list of
calling AE titles. Each received instance is written to disk (atomically) and recorded in an
SQLite queue before the C-STORE is acknowledged, so a crash or SIGKILL at any point loses
nothing: an unacknowledged image is sent again by the PACS; an acknowledged one is on disk and
in the queue. One worker scores queued images in order and C-STOREs the results to the
destination; each step is recorded, and the objects' UIDs are derived from the source (see
`dicom_results.result_uid`), so a restart after any kill scores nothing twice in effect and a
PACS never holds two results for one image. A send that keeps failing ends in a dead-letter
state after `retries` tries. `/health` (loopback HTTP) reports the queue's counts.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATES: tuple[str, ...] = ("queued", "scored", "sent", "failed", "dead")
"""queued: on disk, not scored; scored: its results written, not sent; sent: in the PACS;
failed: could not be scored (its reason stored); dead: sending kept failing."""
IMAGE_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
)
UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")  # explicit / implicit VR LE
MAX_PDU = 64 * 1024
PDU_MARGIN = 1024
"""A PDU may exceed the announced maximum P-DATA length by its own headers; a longer one is
refused before it is read (`DicomNode._on_connection`)."""


LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEST_TOKEN_ENV = "PNEUMONIA_CXR_DEST_TOKEN"
"""A bearer token for a STOW-RS destination that asks for one (never on the command line)."""


def parse_destination(text: str) -> tuple[str, str, int] | str:
    """`AE@HOST:PORT` (a PACS, C-STORE) -> (AE, host, port); `http(s)://.../dicom-web` (a
    DICOMweb server, STOW-RS) -> the URL. Anything else is a clear error."""
    if text.startswith(("http://", "https://")):
        return text.rstrip("/")
    title, _, address = text.partition("@")
    host, _, port = address.rpartition(":")
    if not title or not host or not port.isdigit():
        raise ValueError(
            f"--dest {text!r}: give AE@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242) or a DICOMweb "
            "URL (e.g. http://127.0.0.1:8042/dicom-web)"
        )
    return title, host, int(port)


@dataclass
class NodeConfig:
    work_dir: Path
    allowed_callers: tuple[str, ...]
    """Calling AE titles allowed to send (an association from any other is rejected)."""
    destination: tuple[str, str, int] | str
    """(AE title, host, port) the results are C-STOREd to, or a DICOMweb base URL they are
    STOW-RS'd to (`parse_destination`)."""
    ae_title: str = "PCXNODE"
    host: str = "127.0.0.1"
    port: int = 11112
    health_port: int | None = None
    model_path: Path | None = None
    retries: int = 3
    retry_seconds: float = 5.0
    max_bytes: int = 512 * 1024 * 1024
    """A dataset larger than this is refused: its association is aborted once this many of its
    bytes have arrived, and an element declaring more (a forged 2 GB length) is refused."""
    tls_cert: Path | None = None
    """The listener's certificate (PEM): with `tls_key`, callers must speak TLS."""
    tls_key: Path | None = None
    tls_ca: Path | None = None
    """CA certificates (PEM) a caller's certificate must chain to (mutual TLS); None: any
    caller on the allow-list, its certificate not asked for."""
    dest_tls_ca: Path | None = None
    """CA certificates the destination's certificate must chain to: C-STORE then runs over
    TLS (an https STOW-RS URL always does, verified against these or the system's CAs)."""
    plain_on_network: bool = False
    """Listen on another interface than loopback without TLS (TLS terminated elsewhere)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.allowed_callers:
            raise ValueError("allow at least one calling AE title (--allow)")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both --tls_cert and --tls_key")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ValueError("--tls_ca asks callers for certificates over TLS: give --tls_cert "
                             "and --tls_key too")  # fmt: skip
        if self.max_bytes <= 0:
            raise ValueError(f"--max_mb must be positive (got {self.max_bytes} bytes)")
        if isinstance(self.destination, str):
            url = urllib.parse.urlsplit(self.destination)
            local = url.hostname in LOOPBACK
            if self.dest_tls_ca is not None and url.scheme != "https":
                raise ValueError("--dest_tls_ca verifies an https destination: use https://")
            if os.environ.get(DEST_TOKEN_ENV) and url.scheme != "https" and not local:
                raise ValueError(
                    f"${DEST_TOKEN_ENV} would travel in clear to {url.hostname}: use https://"
                )
        elif self.destination[1] not in LOOPBACK and self.dest_tls_ca is None:
            log.warning(
                "results go to %s without TLS (--dest_tls_ca): keep that link inside a trusted "
                "network",
                self.destination[1],
            )
        if self.host not in LOOPBACK and self.tls_cert is None and not self.plain_on_network:
            raise ValueError(
                f"--host {self.host}: another interface than loopback needs TLS (--tls_cert, "
                "--tls_key, and --tls_ca to ask callers for certificates) or, where TLS is "
                "terminated elsewhere, --plain_on_network"
            )

    def listener_tls(self):
        """The listener's `ssl.SSLContext`, or None (plain DICOM)."""
        if self.tls_cert is None:
            return None
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls_cert, self.tls_key)
        if self.tls_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.tls_ca)
        return context


class Queue:
    """The durable queue: one SQLite row per received SOP instance (its UID the key)."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS queue (uid TEXT PRIMARY KEY, path TEXT, state TEXT,"
            " attempts INTEGER DEFAULT 0, detail TEXT DEFAULT '', results TEXT DEFAULT '[]',"
            " received REAL)"
        )
        self._lock = threading.Lock()

    def add(self, uid: str, path: Path) -> bool:
        """True when new; a second copy of an instance already queued is not scored again."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO queue (uid, path, state, received) VALUES (?, ?, ?, ?)",
                (uid, str(path), "queued", time.time()),
            )
            return cursor.rowcount == 1

    def next(self, state: str) -> tuple[str, str, int, str] | None:
        with self._lock:
            return self._db.execute(
                "SELECT uid, path, attempts, results FROM queue WHERE state = ? "
                "ORDER BY received LIMIT 1",
                (state,),
            ).fetchone()

    def set(self, uid: str, state: str, **values: Any) -> None:
        columns = "".join(f", {name} = ?" for name in values)
        with self._lock:
            self._db.execute(
                f"UPDATE queue SET state = ?{columns} WHERE uid = ?",
                (state, *values.values(), uid),
            )

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM queue GROUP BY state").fetchall()
        return {state: 0 for state in STATES} | dict(rows)


class DicomNode:
    """The listener, the worker and the health endpoint of one node (see the module doc)."""

    def __init__(self, config: NodeConfig) -> None:
        from pneumonia_cxr.dicom_results import DicomBatchWriter
        from pneumonia_cxr.inference.predictor import Predictor
        from pneumonia_cxr.model.shipped import resolve_model_path

        self.config = config
        self.received = config.work_dir / "received"
        self.results = config.work_dir / "results"
        for folder in (self.received, self.results):
            folder.mkdir(parents=True, exist_ok=True)
        self.queue = Queue(config.work_dir / "queue.sqlite")
        model_path = resolve_model_path(config.model_path)
        heatmaps = model_path.suffix == ".pt"
        self.predictor = Predictor.open(model_path, gradcam=heatmaps, device="cpu")
        self._writer = DicomBatchWriter.for_model(self.results, self.predictor, model_path)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._server = None
        self._health = None

    # -- receiving -------------------------------------------------------------------------
    def _on_store(self, event) -> int:
        """Write the instance, queue it, then acknowledge (0x0000); refuse what it cannot take."""
        try:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
        except Exception as error:
            log.warning("refused an unreadable dataset from %s: %s", self._caller(event), error)
            return 0xC210
        forged = _length_beyond_data(dataset, self.config.max_bytes)
        if forged:
            log.warning("refused a dataset from %s: %s", self._caller(event), forged)
            return 0xC210
        uid = str(dataset.SOPInstanceUID)
        target = self.received / f"{uid}.dcm"
        temporary = target.with_suffix(".part")
        try:
            with open(temporary, "wb") as handle:
                dataset.save_as(handle, enforce_file_format=True)
                handle.flush()
                os.fsync(handle.fileno())
            if temporary.stat().st_size > self.config.max_bytes:
                temporary.unlink()
                log.warning("refused %s from %s: larger than the limit", uid, self._caller(event))
                return 0xA700
            os.replace(temporary, target)
            new = self.queue.add(uid, target)
        except OSError as error:
            log.error("could not keep %s: %s", uid, error)
            return 0xA700  # out of resources: the PACS keeps it and may retry
        log.info(
            "received %s (study %s) from %s%s",
            uid,
            dataset.get("StudyInstanceUID", "?"),
            self._caller(event),
            "" if new else ": already queued",
        )
        self._wake.set()
        return 0x0000

    def _on_connection(self, event) -> None:
        """Refuse a PDU longer than the node accepts from its header, before reading it:
        pynetdicom reads a PDU's declared length whole (a caller ignoring the 64 KB maximum
        the node announced could make it buffer gigabytes); the connection is closed."""
        sock = event.assoc.dul.socket
        if sock is None:
            return
        read = sock.recv
        caller = str(event.address)

        def recv(nr_bytes: int) -> bytearray:
            if nr_bytes > MAX_PDU + PDU_MARGIN:
                log.warning(
                    "closed the connection from %s: a PDU of %d bytes (the node accepts %d)",
                    caller,
                    nr_bytes,
                    MAX_PDU,
                )
                raise OSError(f"a PDU of {nr_bytes} bytes is longer than the node accepts")
            return read(nr_bytes)

        sock.recv = recv

    def _on_pdu(self, event) -> None:
        """Count a dataset's bytes as its fragments arrive; past `max_bytes`, abort the
        association before the rest comes (pynetdicom would buffer it all first)."""
        items = getattr(event.pdu, "presentation_data_value_items", None)
        if not items:
            return
        assoc = event.assoc
        count = getattr(assoc, "pcx_dataset_bytes", 0)
        for item in items:
            value = item.presentation_data_value
            if value[0] & 0x01:  # a command fragment
                continue
            count += len(value) - 1
            if count > self.config.max_bytes:
                log.warning(
                    "aborted the association from %s: a dataset passed %d bytes (--max_mb)",
                    self._caller(event),
                    self.config.max_bytes,
                )
                assoc.pcx_dataset_bytes = 0
                threading.Thread(target=assoc.abort, daemon=True).start()  # not in its reader
                return
            if value[0] & 0x02:  # the dataset's last fragment
                count = 0
        assoc.pcx_dataset_bytes = count

    @staticmethod
    def _caller(event) -> str:
        return str(event.assoc.requestor.ae_title).strip()

    def start(self) -> None:
        from pynetdicom import AE, evt

        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_pdu_size = MAX_PDU
        ae.require_calling_aet = list(self.config.allowed_callers)
        for sop_class in IMAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(UNCOMPRESSED))
        self._server = ae.start_server(
            (self.config.host, self.config.port),
            block=False,
            ssl_context=self.config.listener_tls(),
            evt_handlers=[
                (evt.EVT_CONN_OPEN, self._on_connection),
                (evt.EVT_C_STORE, self._on_store),
                (evt.EVT_PDU_RECV, self._on_pdu),
            ],
        )
        threading.Thread(target=self._work, name="pcx-node-worker", daemon=True).start()
        if self.config.health_port is not None:
            self._health = _health_server("127.0.0.1", self.config.health_port, self)
            threading.Thread(target=self._health.serve_forever, daemon=True).start()
        log.info(
            "DICOM node %s listening on %s:%d%s (callers %s), results to %s",
            self.config.ae_title,
            self.config.host,
            self.config.port,
            " over TLS" if self.config.tls_cert else "",
            ",".join(self.config.allowed_callers),
            _destination_name(self.config),
        )

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._server is not None:
            self._server.shutdown()
        if self._health is not None:
            self._health.shutdown()

    # -- working ---------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            did = self._score_one() or self._send_one()
            if not did:
                self._wake.wait(timeout=1.0)
                self._wake.clear()

    def _score_one(self) -> bool:
        from pneumonia_cxr.predict import iter_prediction_batches

        item = self.queue.next("queued")
        if item is None:
            return False
        uid, path, _, _ = item
        writer = self._writer
        writer.written, writer.failed = [], []
        try:
            [rows] = list(iter_prediction_batches(self.predictor, [Path(path)], writers=[writer]))
            row = rows[0]
            if not row.ok or writer.failed:
                detail = row.error or "no DICOM result could be written (see the log)"
                self.queue.set(uid, "failed", detail=detail)
                log.warning("%s: could not be scored: %s", uid, detail)
                return True
            self.queue.set(uid, "scored", results=json.dumps([str(p) for p in writer.written]))
            log.info("scored %s: %s %s", uid, row.state, row.label or row.reason)
        except Exception as error:
            self.queue.set(uid, "failed", detail=str(error))
            log.warning("%s: could not be scored: %s", uid, error)
        return True

    def _send_one(self) -> bool:
        item = self.queue.next("scored")
        if item is None:
            return False
        uid, _, attempts, results = item
        try:
            send_results([Path(p) for p in json.loads(results)], self.config)
        except Exception as error:
            attempts += 1
            state = "dead" if attempts >= self.config.retries else "scored"
            self.queue.set(uid, state, attempts=attempts, detail=str(error))
            log.warning("sending the results of %s failed (%d): %s", uid, attempts, error)
            if state == "scored":
                self._stop.wait(self.config.retry_seconds)
            return True
        self.queue.set(uid, "sent")
        log.info("sent the results of %s to %s", uid, _destination_name(self.config))
        return True


def _length_beyond_data(dataset, limit: int) -> str | None:
    """Why a received dataset is refused before it is kept: a top-level element that declares
    more bytes than the limit or than arrived (a forged 2 GB length); None when none does."""
    from pydicom.dataelem import RawDataElement

    for tag in list(dataset.keys()):
        raw = dataset.get_item(tag)
        if not isinstance(raw, RawDataElement) or raw.length == 0xFFFFFFFF:
            continue
        arrived = len(raw.value) if raw.value is not None else 0
        if raw.length > limit or arrived < raw.length:
            return f"element {tag} declares {raw.length} bytes, {arrived} arrived (limit {limit})"
    return None


def _destination_name(config: NodeConfig) -> str:
    if isinstance(config.destination, str):
        return f"{config.destination} (STOW-RS)"
    title, host, port = config.destination
    return f"{title}@{host}:{port}" + (" over TLS" if config.dest_tls_ca else "")


def send_results(paths: list[Path], config: NodeConfig) -> None:
    """Send result files to the destination (C-STORE or STOW-RS); raise on any failure."""
    if not paths:
        return
    if isinstance(config.destination, str):
        _stow(paths, config)
    else:
        _c_store(paths, config)


def _stow(paths: list[Path], config: NodeConfig) -> None:
    """STOW-RS every file in one request (dicomweb-client); raise unless all are stored."""
    import pydicom
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    if config.dest_tls_ca is not None:
        session.verify = str(config.dest_tls_ca)
    token = os.environ.get(DEST_TOKEN_ENV)
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    client = DICOMwebClient(url=str(config.destination), session=session)
    response = client.store_instances([pydicom.dcmread(path) for path in paths])
    failed = response.get(0x00081198) if response is not None else None  # FailedSOPSequence
    if failed is not None and failed.value:
        raise ConnectionError(f"STOW-RS refused {len(failed.value)} of {len(paths)} object(s)")


def _c_store(paths: list[Path], config: NodeConfig) -> None:
    """C-STORE each file to the destination in one association (over TLS where the
    destination's CA is given)."""
    import pydicom
    from pynetdicom import AE

    datasets = [pydicom.dcmread(path) for path in paths]
    ae = AE(ae_title=config.ae_title)
    for sop_class in {str(ds.SOPClassUID) for ds in datasets}:
        ae.add_requested_context(sop_class, list(UNCOMPRESSED))
    title, host, port = config.destination
    tls = None
    if config.dest_tls_ca is not None:
        import ssl

        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=config.dest_tls_ca)
        if config.tls_cert is not None:  # the node's own certificate, for a PACS that asks
            context.load_cert_chain(config.tls_cert, config.tls_key)
        tls = (context, host)
    assoc = ae.associate(host, port, ae_title=title, tls_args=tls)
    if not assoc.is_established:
        raise ConnectionError(f"no association with {title}@{host}:{port}")
    try:
        for dataset in datasets:
            status = assoc.send_c_store(dataset)
            if not status or status.Status != 0x0000:
                code = getattr(status, "Status", None)
                raise ConnectionError(f"C-STORE of {dataset.SOPInstanceUID} failed: {code}")
    finally:
        assoc.release()


def _health_server(host: str, port: int, node: DicomNode) -> ThreadingHTTPServer:
    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/health":
                self.send_error(404)
                return
            body = json.dumps({"status": "ok", "counts": node.queue.counts()}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args) -> None:
            return

    return ThreadingHTTPServer((host, port), Health)


def run_node(config: NodeConfig) -> None:
    """Run until interrupted (Ctrl-C or SIGTERM)."""
    import signal

    node = DicomNode(config)
    node.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        node.stop()
