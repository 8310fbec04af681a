"""`python -m pneumonia_cxr.cli`, as run/run.sh, the tests and the benchmarks start the command."""

import sys

from pneumonia_cxr.cli import main

if __name__ == "__main__":
    sys.exit(main())
