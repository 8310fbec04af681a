"""The light install measured against the full one, in one run on one machine (issue 28's bar).

Builds a fresh venv with `pip install "<this repository>[score]"` (a wheel, as a user gets it:
the shipped model and its ONNX twin inside), then:

- lists its packages (no torch, torchvision, lightning or timm) and measures its size on disk;
- `predict` on the 624 official test copies with the light and the full install's default
  model: labels equal on all, the largest |p(light) - p(full)|;
- `predict` of one image, wall time of the whole command, median of `--repeats` runs, both;
- `predict` on the 1,872-file folder (the test split three times, as benchmarks/predict_speed.py)
  in images/s, both, alternated;
- `serve` from the light venv: `/ready`, then one upload scored.

Run: `.venv/bin/python benchmarks/light_install.py [--keep VENV] [--output light.json]`
(needs the package registry once, to build the venv; several minutes).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL_STACK = ("torch", "torchvision", "lightning", "timm")


def _build(venv: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, f"{ROOT}[score]"], check=True)
    return time.perf_counter() - started


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def _predict(cli: Path, inputs: list[Path], output: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [str(cli), "predict", *map(str, inputs), "--output", str(output)],
        check=True,
        capture_output=True,
        cwd=tempfile.gettempdir(),  # never this checkout: the light venv must use its own wheel
    )
    return time.perf_counter() - started


def _rows(path: Path) -> dict[str, tuple[float, str]]:
    with path.open(newline="") as handle:
        return {r["path"]: (float(r["probability"]), r["label"]) for r in csv.DictReader(handle)}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve_check(cli: Path, image: Path) -> dict:
    port = _free_port()
    server = subprocess.Popen(
        [str(cli), "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tempfile.gettempdir(),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/ready", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="{image.name}"\r\nContent-Type: image/jpeg\r\n\r\n'
            ).encode()
            + image.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        request = urllib.request.Request(
            f"{base}/v1/predict",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            [result] = json.loads(answer.read())["results"]
        return {"ready": True, "label": result["label"], "probability": result["probability"]}
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    shared = ROOT.parent / "shared" / "data" / "kermany_224"
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=shared)
    parser.add_argument("--keep", type=Path, help="build the venv here and keep it")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="light-install-"))
    venv = args.keep or work / "venv"
    report: dict = {}
    if not (venv / "bin" / "pneumonia-cxr").exists():
        report["install_s"] = round(_build(venv), 1)
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        check=True,
        capture_output=True,
        text=True,
    )
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    report["full_stack_present"] = sorted(n for n in FULL_STACK if n in names)
    report["venv_mb"] = round(_size_mb(venv), 1)

    light, full = venv / "bin" / "pneumonia-cxr", ROOT / ".venv" / "bin" / "pneumonia-cxr"
    test_files = sorted(args.data.glob("test/*/*.jpeg"))
    agreement = {}
    for name, cli in (("light", light), ("full", full)):
        _predict(cli, test_files[:2], work / f"warm_{name}.csv")  # the full one caches
        _predict(cli, test_files, work / f"test_{name}.csv")
        agreement[name] = _rows(work / f"test_{name}.csv")
    assert agreement["light"].keys() == agreement["full"].keys()
    report["test_images"] = len(agreement["full"])
    report["labels_differ"] = sum(
        agreement["light"][k][1] != agreement["full"][k][1] for k in agreement["full"]
    )
    report["max_abs_dp"] = max(
        abs(agreement["light"][k][0] - agreement["full"][k][0]) for k in agreement["full"]
    )

    one = test_files[:1]
    times: dict[str, list[float]] = {"light": [], "full": []}
    for _ in range(args.repeats):
        for name, cli in (("light", light), ("full", full)):
            times[name].append(_predict(cli, one, work / "one.csv"))
    report["one_image_s"] = {k: round(statistics.median(v), 3) for k, v in times.items()}

    folder = work / "folder"
    folder.mkdir()
    for copy in range(args.copies):
        for source in test_files:
            (folder / f"c{copy}_{source.parent.name}_{source.name}").symlink_to(source)
    n = args.copies * len(test_files)
    rates: dict[str, float] = {}
    for name, cli in (("light", light), ("full", full)):
        rates[name] = round(n / _predict(cli, [folder], work / "folder.csv"), 1)
    report["folder_files"], report["images_per_s"] = n, rates
    report["serve"] = _serve_check(light, test_files[-1])

    print(json.dumps(report, indent=2))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
