"""End-to-end `pneumonia-cxr predict` speed of two model files, and the default engine's labels.

What a user waits for: the command on a folder of files, decoding included. The folder holds
every official test image `--copies` times (symbolic links, 624 x 3 = 1,872 files by default).
Each (model, engine) is run once on a small warm-up folder (it builds and caches the ONNX
export), then timed on the whole folder, all in one run of this script so the machine is the
same for every figure; with `--repeats N` the timed runs alternate between the models N times
and each figure is the median (runs of one command vary by 5-10% on a shared 2-core machine).
Then the default engine's labels are compared with `--engine torch`'s
on the 624 test images (PyTorch float32, the reference).

Run: `.venv/bin/python benchmarks/predict_speed.py --model_path NEW.pt --baseline_path OLD.pt`
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-m", "pneumonia_cxr.cli", "predict"]


def _link_folder(test_files: list[Path], target: Path, copies: int) -> int:
    target.mkdir(parents=True)
    for copy in range(copies):
        for source in test_files:
            (target / f"c{copy}_{source.parent.name}_{source.name}").symlink_to(source)
    return copies * len(test_files)


def _predict(model: Path, engine: str, folder: Path, output: Path) -> float:
    """Seconds of one `predict` command (process start to exit, as a user waits)."""
    command = [*CLI, str(folder), "--model_path", str(model), "--engine", engine]
    started = time.perf_counter()
    subprocess.run(
        [*command, "--output", str(output), "--no_progress"],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def _labels(table: Path) -> dict[str, str]:
    with open(table, newline="") as handle:
        return {Path(row["path"]).name: row["label"] for row in csv.DictReader(handle)}


def _probabilities(table: Path) -> dict[str, float]:
    with open(table, newline="") as handle:
        return {Path(row["path"]).name: float(row["probability"]) for row in csv.DictReader(handle)}


def main() -> None:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "kermany_224"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_path", type=Path, required=True, help="the model to measure")
    parser.add_argument("--baseline_path", type=Path, help="the model to compare speed with")
    parser.add_argument("--data", type=Path, default=shared, help="the kermany_224 folder")
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--engines", nargs="+", default=["onnx", "auto"])
    parser.add_argument("--repeats", type=int, default=1, help="alternating timed runs each")
    args = parser.parse_args()
    test_files = sorted((args.data / "test").glob("*/*.jpeg"))
    with tempfile.TemporaryDirectory(prefix="predict_speed_") as tmp:
        work = Path(tmp)
        n = _link_folder(test_files, work / "all", args.copies)
        _link_folder(test_files[:64], work / "warmup", 1)
        models = {"model": args.model_path}
        if args.baseline_path:
            models["baseline"] = args.baseline_path
        for path in models.values():
            for engine in args.engines:
                _predict(path, engine, work / "warmup", work / "warmup.csv")
        runs: dict[tuple[str, str], list[float]] = {}
        for repeat in range(args.repeats):
            for name, path in models.items():
                for engine in args.engines:
                    seconds = _predict(path, engine, work / "all", work / f"{name}_{engine}.csv")
                    runs.setdefault((name, engine), []).append(n / seconds)
                    print(
                        f"run {repeat + 1}: {name} ({path.name}), --engine {engine}: {n} files "
                        f"in {seconds:.1f} s, {n / seconds:.1f} img/s",
                        flush=True,
                    )
        rates = {key: statistics.median(values) for key, values in runs.items()}
        if args.repeats > 1:
            for (name, engine), rate in rates.items():
                print(f"{name}, --engine {engine}: median {rate:.1f} img/s of {args.repeats}")
        if args.baseline_path:
            for engine in args.engines:
                ratio = rates["model", engine] / rates["baseline", engine]
                print(f"--engine {engine}: {ratio:.2f}x the baseline's images/s")
        reference = work / "torch.csv"
        _predict(args.model_path, "torch", args.data / "test", reference)
        default = work / "default.csv"
        _predict(args.model_path, "auto", args.data / "test", default)
        torch_labels, default_labels = _labels(reference), _labels(default)
        same = sum(torch_labels[k] == default_labels[k] for k in torch_labels)
        p_torch, p_default = _probabilities(reference), _probabilities(default)
        max_dp = max(abs(p_torch[k] - p_default[k]) for k in p_torch)
        print(
            f"default engine vs --engine torch on {len(torch_labels)} test images: "
            f"{same} labels equal, max |dp| {max_dp:.1e}"
        )


if __name__ == "__main__":
    main()
