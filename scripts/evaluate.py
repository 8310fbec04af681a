"""The reference's entry point: `python scripts/evaluate.py --model_path M [--split test ...]`.

A thin shim over `pneumonia-cxr evaluate` (same flags); install the package first (`make install`).
"""

import sys

from pneumonia_cxr.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
