"""The end-to-end notebook is executed by the test suite, so it cannot silently rot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "Pneumonia Detection Pipeline.ipynb"
KERNEL_NAME = "pneumonia-cxr-test"
CELL_TIMEOUT_S = 600
# Must match the parameters cell of the notebook.
RUN_DIR = Path("outputs") / "notebook" / "notebook-run"


def _read() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def _parameters_index(notebook: nbformat.NotebookNode) -> int:
    tagged = [
        index
        for index, cell in enumerate(notebook.cells)
        if "parameters" in cell.get("metadata", {}).get("tags", [])
    ]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters'"
    return tagged[0]


def test_notebook_is_valid_and_stored_without_outputs() -> None:
    notebook = _read()
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for cell in code:
        assert cell.outputs == [], "clear the outputs before committing the notebook"
        assert cell.execution_count is None
    assert "SYNTHETIC" in notebook.cells[0].source, "the first cell must say the data is synthetic"


def test_parameters_cell_defaults_to_the_fast_synthetic_run() -> None:
    notebook = _read()
    source = notebook.cells[_parameters_index(notebook)].source
    for line in ("FAST = True", "DATASET_PATH = None"):
        assert line in source, f"parameters cell lacks {line!r}"


def _venv_kernel(root: Path) -> Path:
    """A kernelspec that runs this interpreter, so the kernel imports this checkout's package.

    A user-level "python3" kernelspec may point at another Python; a uniquely named spec under a
    private JUPYTER_PATH cannot.
    """
    from ipykernel.kernelspec import write_kernel_spec

    kernels = root / "kernels"
    kernels.mkdir(parents=True)
    write_kernel_spec(
        kernels / KERNEL_NAME,
        overrides={
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "pneumonia-cxr test kernel",
        },
    )
    return root


@pytest.mark.slow
def test_notebook_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient

    monkeypatch.setenv("JUPYTER_PATH", str(_venv_kernel(tmp_path / "jupyter")))
    monkeypatch.delenv("PNEUMONIA_CXR_DATA", raising=False)
    assert KernelSpecManager().get_kernel_spec(KERNEL_NAME).argv[0] == sys.executable

    notebook = _read()
    # Forced even if someone saved the notebook with FAST = False (papermill's convention).
    forced = nbformat.v4.new_code_cell(
        "FAST = True\nDATASET_PATH = None\n"
        "import sys\n"
        f"assert sys.executable == {sys.executable!r}, sys.executable"
    )
    forced.metadata["tags"] = ["injected-parameters"]
    notebook.cells.insert(_parameters_index(notebook) + 1, forced)

    work = tmp_path / "work"
    work.mkdir()
    client = NotebookClient(
        notebook,
        kernel_name=KERNEL_NAME,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(work)}},
    )
    client.execute()  # raises CellExecutionError, with the traceback, on the first failing cell

    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    assert not [output for output in outputs if output.output_type == "error"]
    run_dir = work / RUN_DIR
    assert (run_dir / "final_pneumonia_model.pt").is_file()
    assert (run_dir / "learning_curves.png").is_file()
    metrics = json.loads((run_dir / "eval_test" / "metrics.json").read_text())
    assert metrics["split"] == "test"
    assert metrics["roc_auc"]["value"] > 0.6  # trained, not chance (FAST: about 0.8 here)
    assert (run_dir / "eval_test" / "report.html").is_file()
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) >= 6, "samples, curves, confusion, ROC, Grad-CAM grid and overlay shown"
    printed = "".join(
        output.get("text", "") for output in outputs if output.output_type == "stream"
    )
    corrupt_rows = [line for line in printed.splitlines() if "corrupt_copy_of_" in line]
    assert corrupt_rows, "the prediction table lists the corrupt copy"
    worded = all("unreadable: " in line and "truncated" in line for line in corrupt_rows)
    assert worded, corrupt_rows
