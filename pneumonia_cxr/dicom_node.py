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


@dataclass
class NodeConfig:
    work_dir: Path
    allowed_callers: tuple[str, ...]
    """Calling AE titles allowed to send (an association from any other is rejected)."""
    destination: tuple[str, str, int]
    """(AE title, host, port) the results are C-STOREd to."""
    ae_title: str = "PCXNODE"
    host: str = "127.0.0.1"
    port: int = 11112
    health_port: int | None = None
    model_path: Path | None = None
    retries: int = 3
    retry_seconds: float = 5.0
    max_bytes: int = 512 * 1024 * 1024
    """A dataset larger than this is refused (a 2 GB declared length never fills the disk)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.allowed_callers:
            raise ValueError("allow at least one calling AE title (--allow)")
        if self.host not in ("127.0.0.1", "localhost", "::1") and len(self.allowed_callers) < 1:
            raise ValueError("another interface than loopback needs an allow-list")


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
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        threading.Thread(target=self._work, name="pcx-node-worker", daemon=True).start()
        if self.config.health_port is not None:
            self._health = _health_server(self.config.host, self.config.health_port, self)
            threading.Thread(target=self._health.serve_forever, daemon=True).start()
        log.info(
            "DICOM node %s listening on %s:%d (callers %s), results to %s@%s:%d",
            self.config.ae_title,
            self.config.host,
            self.config.port,
            ",".join(self.config.allowed_callers),
            *self.config.destination,
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
            _c_store([Path(p) for p in json.loads(results)], self.config)
        except Exception as error:
            attempts += 1
            state = "dead" if attempts >= self.config.retries else "scored"
            self.queue.set(uid, state, attempts=attempts, detail=str(error))
            log.warning("sending the results of %s failed (%d): %s", uid, attempts, error)
            if state == "scored":
                self._stop.wait(self.config.retry_seconds)
            return True
        self.queue.set(uid, "sent")
        log.info("sent the results of %s to %s", uid, self.config.destination[0])
        return True


def _c_store(paths: list[Path], config: NodeConfig) -> None:
    """C-STORE each file to the destination in one association; raise on any failure."""
    import pydicom
    from pynetdicom import AE

    if not paths:
        return
    datasets = [pydicom.dcmread(path) for path in paths]
    ae = AE(ae_title=config.ae_title)
    for sop_class in {str(ds.SOPClassUID) for ds in datasets}:
        ae.add_requested_context(sop_class, list(UNCOMPRESSED))
    title, host, port = config.destination
    assoc = ae.associate(host, port, ae_title=title)
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
