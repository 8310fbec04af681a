"""Study 4's validation audit, as its plan names it: runs `results/study/val_audit.py --study 4`
(the script studies 4 and 5 share)."""

import runpy
import sys
from pathlib import Path

shared = Path(__file__).resolve().parent.parent / "study"
sys.path.insert(0, str(shared))
sys.argv = [str(shared / "val_audit.py"), "--study", "4"]
runpy.run_path(sys.argv[0], run_name="__main__")
