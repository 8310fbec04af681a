"""The reference's entry point: `python scripts/train.py --stage1_epochs 8 --stage2_epochs 5`.

A thin shim over `pneumonia-cxr train --preset reference` (same flags; another `--preset` may be
given): the reference's recipe, its network and its ImageNet weights (`make install` first).
"""

import sys

from pneumonia_cxr.cli import main

if __name__ == "__main__":
    flags = sys.argv[1:]
    preset = (
        []
        if any(f == "--preset" or f.startswith("--preset=") for f in flags)
        else [
            "--preset",
            "reference",
        ]
    )
    sys.exit(main(["train", *preset, *flags]))
