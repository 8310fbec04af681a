"""`predict` on archives of growing size: images/s and peak memory, and SIGKILL + --resume.

Folders of N files are made of symbolic links to the shared 224-px copies (test, then train
images, repeated as needed). For each N, `pneumonia-cxr predict DIR --output out.csv` runs in a
fresh process under GNU time: wall seconds, images/s and peak RSS. Memory should stay flat as N
grows (rows are streamed, the folder is walked lazily).

`--resume_check N`: the N-file folder scored unbroken; then again, killed with SIGKILL from
outside once half of its rows are recorded, and resumed with `--resume`; the two outputs must
be byte-identical (every file exactly once, the same probabilities).

Run: `.venv/bin/python benchmarks/predict_scale.py [--sizes 1000 5000 20000] [--resume_check 3000]`
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROGRESS_SUFFIX = ".progress.tsv"


def _folder(sources: list[Path], target: Path, n: int) -> Path:
    target.mkdir(parents=True)
    for i in range(n):
        source = sources[i % len(sources)]
        (target / f"{i:06d}_{source.name}").symlink_to(source)
    return target


def _command(folder: Path, output: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "pneumonia_cxr.cli", "predict", str(folder), "--output",
            str(output), "--no_progress", *extra]  # fmt: skip


def _timed(folder: Path, output: Path, extra: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one predict process."""
    report = output.with_suffix(".time")
    started = time.perf_counter()
    subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", str(report), *_command(folder, output, extra)],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started, int(report.read_text().split()[-1]) / 1024


def _resume_check(folder: Path, work: Path, n: int, extra: list[str]) -> None:
    unbroken = work / "unbroken.csv"
    _timed(folder, unbroken, extra)
    killed = work / "killed.csv"
    process = subprocess.Popen(_command(folder, killed, extra), stderr=subprocess.DEVNULL)
    progress = killed.with_name(killed.name + PROGRESS_SUFFIX)
    while process.poll() is None:
        if progress.exists() and progress.read_text().count("\n") > n // 2:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait()
    rows_at_kill = max(0, killed.read_text().count("\n") - 1)
    subprocess.run(_command(folder, killed, [*extra, "--resume"]), check=True,
                   stderr=subprocess.DEVNULL)  # fmt: skip
    same = killed.read_bytes() == unbroken.read_bytes()
    rows = killed.read_text().count("\n") - 1
    verdict = "identical to" if same else "DIFFERENT from"
    print(
        f"resume check, {n} files: killed (SIGKILL) with {rows_at_kill} rows written, "
        f"resumed: {rows} rows, {verdict} the unbroken run"
    )


def main() -> None:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "kermany_224"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=shared)
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 5000, 20000])
    parser.add_argument("--resume_check", type=int, default=0, metavar="N")
    parser.add_argument("--model_path", help="default: the shipped model")
    args = parser.parse_args()
    sources = sorted((args.data / "test").glob("*/*.jpeg")) + sorted(
        (args.data / "train").glob("*/*.jpeg")
    )
    extra = ["--model_path", args.model_path] if args.model_path else []
    with tempfile.TemporaryDirectory(prefix="predict_scale_") as tmp:
        work = Path(tmp)
        warm = _folder(sources, work / "warm", 64)
        _timed(warm, work / "warm.csv", extra)  # builds and caches the ONNX export
        print("| files | seconds | images/s | peak RSS MB |\n| ---: | ---: | ---: | ---: |")
        for n in args.sizes:
            folder = _folder(sources, work / f"n{n}", n)
            seconds, rss = _timed(folder, work / f"n{n}.csv", extra)
            print(f"| {n} | {seconds:.1f} | {n / seconds:.1f} | {rss:.0f} |", flush=True)
        if args.resume_check:
            folder = _folder(sources, work / "resume", args.resume_check)
            _resume_check(folder, work, args.resume_check, extra)


if __name__ == "__main__":
    main()
