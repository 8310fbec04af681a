"""Load and fault benchmark of `pneumonia-cxr serve`, on loopback, bounded in count and time.

Starts the server in its own process, then N client threads post uploads for T seconds: real
X-rays from the test split mixed with bad uploads (text, truncated JPEG, empty file, PNG bomb
header, an upload above the size limit). A separate thread asks /health every 0.2 s throughout.
Prints requests/s, latency percentiles, responses by status, the server's RSS at start and end,
and whether /health answered every time, during and after.

Run: `.venv/bin/python benchmarks/serve_load.py [--model_path M] [--clients 16] [--seconds 30]`
"""

from __future__ import annotations

import argparse
import collections
import io
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

BAD_SHARE = 0.3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _bad_uploads(sample: Path, limit_mb: float) -> list[tuple[str, bytes]]:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )
    jpeg = io.BytesIO()
    Image.open(sample).convert("L").save(jpeg, format="JPEG")
    return [
        ("notes.jpeg", b"not an image at all"),
        ("cut.jpeg", jpeg.getvalue()[:-500]),
        ("empty.png", b""),
        ("bomb.png", bomb),
        ("huge.png", b"\0" * int((limit_mb + 1) * 1024 * 1024)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_path", help="default: the shipped model")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/kermany_224"))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--max_upload_mb", type=float, default=32.0)
    args = parser.parse_args()

    xrays = sorted((args.data / "test").glob("*/*.jpeg"))
    random.Random(0).shuffle(xrays)
    good = [(p.name, p.read_bytes()) for p in xrays[:64]]
    bad = _bad_uploads(xrays[0], args.max_upload_mb)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "pneumonia_cxr.cli", "serve", "--port", str(port)]
    command += ["--max_upload_mb", str(args.max_upload_mb), "--max_in_flight", "256"]
    if args.model_path:
        command += ["--model_path", args.model_path]
    started, health_at = time.monotonic(), None
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(timeout=60) as probe:
            while True:
                try:
                    if health_at is None and probe.get(f"{base}/health").status_code == 200:
                        health_at = time.monotonic() - started
                    if probe.get(f"{base}/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None:
                    raise SystemExit("the server exited during start-up")
                time.sleep(0.1)
        ready_at = time.monotonic() - started
        rss_start = _rss_mb(server.pid)
        results: list[tuple[int, float]] = []
        health: list[tuple[int, float]] = []
        lock = threading.Lock()
        deadline = time.monotonic() + args.seconds

        def client(seed: int) -> None:
            rng = random.Random(seed)
            with httpx.Client(timeout=120) as http:
                while time.monotonic() < deadline:
                    name, data = rng.choice(bad) if rng.random() < BAD_SHARE else rng.choice(good)
                    t0 = time.monotonic()
                    try:
                        status = http.post(
                            f"{base}/v1/predict", files={"file": (name, data)}
                        ).status_code
                    except httpx.TransportError:
                        status = 0  # connection refused or reset: the server failed
                    with lock:
                        results.append((status, time.monotonic() - t0))

        def watch_health() -> None:
            with httpx.Client(timeout=10) as http:
                while time.monotonic() < deadline + 1:
                    t0 = time.monotonic()
                    try:
                        status = http.get(f"{base}/health").status_code
                    except httpx.TransportError:
                        status = 0
                    health.append((status, time.monotonic() - t0))
                    time.sleep(0.2)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        threads.append(threading.Thread(target=watch_health))
        t_start = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - t_start
        rss_end = _rss_mb(server.pid)
        after = httpx.get(f"{base}/health", timeout=10).status_code
    finally:
        server.terminate()
        server.wait(timeout=30)

    latencies = np.array([seconds for _, seconds in results]) * 1000
    ok = np.array([seconds for status, seconds in results if status == 200]) * 1000
    by_status = collections.Counter(status for status, _ in results)
    health_fail = sum(status != 200 for status, _ in health)
    print(f"server: /health after {health_at:.1f} s, /ready after {ready_at:.1f} s")
    print(
        f"{args.clients} clients for {elapsed:.1f} s: {len(results)} requests, "
        f"{len(results) / elapsed:.1f} req/s ({len(ok) / elapsed:.1f} images/s scored)"
    )
    for name, values in (("all", latencies), ("200 only", ok)):
        if len(values):
            p50, p95, p99 = np.percentile(values, [50, 95, 99])
            print(f"latency ms ({name}): p50 {p50:.0f}, p95 {p95:.0f}, p99 {p99:.0f}")
    print("responses by status: " + ", ".join(f"{k}: {v}" for k, v in sorted(by_status.items())))
    print(f"server RSS: {rss_start:.0f} MB at start, {rss_end:.0f} MB at end")
    print(
        f"/health: {len(health)} checks during the load, {health_fail} failed, max "
        f"{1000 * max(s for _, s in health):.0f} ms; after the load: {after}"
    )


if __name__ == "__main__":
    main()
