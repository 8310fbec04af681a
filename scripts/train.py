"""The reference's entry point: `python scripts/train.py --stage1_epochs 8 --stage2_epochs 5`.

A thin shim over `pneumonia-cxr train` (same flags); install the package first (`make install`).
"""

import sys

from pneumonia_cxr.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
