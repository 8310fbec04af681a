"""Images/s of the data path (load_xray + transforms + DataLoader), to check it never starves
the model. Run: `.venv/bin/python benchmarks/loader_throughput.py [--kermany P] [--fullres P]`.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from pneumonia_cxr.config import AugmentConfig, Preprocessing
from pneumonia_cxr.data.dataset import XrayDataset, collate_skipping_bad
from pneumonia_cxr.data.loader import is_image_file, load_xray
from pneumonia_cxr.data.transforms import build_transforms


def _images(folder: Path, limit: int) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
    return files[:limit]


def loader_rate(paths: list[Path], workers: int, augment: bool, min_side: int | None) -> float:
    transform = build_transforms(Preprocessing(), AugmentConfig() if augment else None)
    dataset = XrayDataset(paths, [0] * len(paths), transform, min_side=min_side)
    loader = DataLoader(
        dataset, batch_size=32, num_workers=workers, collate_fn=collate_skipping_bad
    )
    started = time.perf_counter()
    n = sum(len(batch["label"]) for batch in loader)
    return n / (time.perf_counter() - started)


def decode_rate(paths: list[Path], min_side: int | None, repeats: int) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        for path in paths:
            load_xray(path, min_side=min_side)
    return len(paths) * repeats / (time.perf_counter() - started)


def main() -> None:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kermany", type=Path, default=shared / "kermany_224")
    parser.add_argument("--fullres", type=Path, default=shared / "kermany_fullres_sample")
    parser.add_argument("--n", type=int, default=1024, help="224-px images to read")
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(f"{'data':<34}{'workers':>8}{'augment':>9}{'images/s':>10}")
    small = _images(args.kermany, args.n)
    big = _images(args.fullres, 100)
    for path in small + big:  # warm the page cache: measure decoding, not the first disk read
        path.read_bytes()
    for workers in (0, 2):
        for augment in (False, True):
            rate = loader_rate(small, workers, augment, min_side=224)
            print(
                f"{'kermany_224 (' + str(len(small)) + ' imgs)':<34}{workers:>8}"
                f"{augment!s:>9}{rate:>10.1f}"
            )
    for workers in (0, 2):
        rate = loader_rate(big * 2, workers, augment=True, min_side=224)
        print(
            f"{'fullres originals (' + str(len(big)) + ' x2)':<34}{workers:>8}{'True':>9}"
            f"{rate:>10.1f}"
        )
    for min_side, label in ((None, "full decode"), (224, "draft decode (min_side 224)")):
        rate = decode_rate(big, min_side, repeats=2)
        print(f"{'fullres load_xray only, ' + label:<51}{rate:>10.1f}")


if __name__ == "__main__":
    main()
