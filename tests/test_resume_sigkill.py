"""A run killed with SIGKILL at any moment and resumed ends bit-identical to an unbroken run.

Each run is `pneumonia-cxr train` in a subprocess with the CLI's defaults (2 loader workers,
augmentation, shuffling, class weights, early stopping, plateau LR, both stages, the threshold
fit), on tiny images and 3 batches per epoch. The process kills itself with SIGKILL at a named
point (`pneumonia_cxr.faults`), or the test kills it from outside; then `--resume` finishes it.

Two runs are killed at the named points in turn (each kill resumed by the next step's
process; one also meets a damaged checkpoint, the other a kill from outside) beside an
unbroken run: 11 processes on two lanes, one per core, one intra-op thread each (the same for
every run, so bit-identity is between equal settings).
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from pneumonia_cxr.faults import FAULT_ENV

pytestmark = pytest.mark.slow  # about a minute: 11 training processes

FINAL = "final_pneumonia_model.pt"
TRAIN_FLAGS = [
    "--backbone", "resnet18", "--weights", "none", "--image_size", "48", "--batch_size", "8",
    "--val_fraction", "0.25", "--stage1_epochs", "2", "--stage2_epochs", "2",
    "--limit_train_batches", "3", "--seed", "7", "--patience", "5",
]  # fmt: skip
ROW_KEYS = ("stage", "epoch", "train_loss", "val_loss", "val_auc", "lr")


def _train(
    args: list[str], fault: str | None = None, output: int = subprocess.PIPE
) -> subprocess.Popen:
    """`output=DEVNULL` for a caller that does not read the pipe while the run goes on."""
    # Outside pytest's environment, as a user runs it (libraries print differently under pytest).
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV and not k.startswith("PYTEST")}
    env["OMP_NUM_THREADS"] = "1"  # two runs share the two cores (see the module docstring)
    if fault:
        env[FAULT_ENV] = fault
    command = [sys.executable, "-m", "pneumonia_cxr.cli", "train", *args]
    return subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, text=True)


def _run(args: list[str], fault: str | None = None) -> tuple[int, str]:
    """Exit code and everything the run printed."""
    process = _train(args, fault)
    output, _ = process.communicate(timeout=600)
    if process.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(output[-3000:])
    return process.returncode, output


def _new_run(data: Path, out: Path, name: str) -> list[str]:
    return ["--dataset_path", str(data), *TRAIN_FLAGS, "--output_dir", str(out), "--run_name", name]


def _state(run: Path) -> dict[str, torch.Tensor]:
    payload = torch.load(run / FINAL, map_location="cpu", weights_only=True)
    return {
        f"{i}.{k}": v for i, m in enumerate(payload["members"]) for k, v in m["state_dict"].items()
    } | {"threshold": torch.tensor(payload["threshold"])}


def _rows(run: Path) -> list[tuple[str, ...]]:
    with (run / "metrics.csv").open(newline="") as handle:
        return [tuple(row[k] for k in ROW_KEYS) for row in csv.DictReader(handle)]


FAULTS = [
    "stage1:epoch1:batch1",  # in the middle of a stage-1 epoch
    "after_stage1",  # between the two stages
    "stage2:epoch1:batch1",  # in the middle of a stage-2 epoch
    "checkpoint:stage2:epoch0",  # right after a checkpoint lands
    "checkpoint:stage2:epoch1",  # right after the last stage-2 checkpoint lands
    f"write:{FINAL}",  # while the final model file is being written
]


# Two runs, each killed at its points in turn, in the order a run meets them; each kill is
# resumed by the next step's process. Run 1 also meets a damaged checkpoint: after its kill in
# stage 2 its last.ckpt is cut in half, so the resume that finishes it falls back to best.ckpt;
# then both checkpoints are garbage and the final file gone, and the resume must refuse. Run 2
# starts with a kill from outside.
FIRST = [FAULTS[0], FAULTS[1], FAULTS[3], FAULTS[2]]
SECOND = [FAULTS[4], FAULTS[5]]


def _killed_at(args: list[str], fault: str, run: Path) -> dict:
    return {"killed": _run(args, fault)[0], "final": (run / FINAL).exists()}


def _first_run(data: Path, out: Path) -> dict:
    """Killed at FIRST's points; last.ckpt damaged; finished by falling back; then refused."""
    run = out / "run"
    outcome: dict = {"run": run}
    for step, fault in enumerate(FIRST):
        args = _new_run(data, out, "run") if step == 0 else ["--resume", str(run)]
        outcome[fault] = _killed_at(args, fault, run)
    stage2 = run / "checkpoints" / "stage2"
    last = stage2 / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated
    process = _train(["--resume", str(run)])
    fell_back, _ = process.communicate(timeout=600)
    outcome["resumed"], outcome["fell_back"] = process.returncode, fell_back
    outcome["state"], outcome["rows"] = _state(run), _rows(run)
    for name in ("last.ckpt", "best.ckpt"):
        (stage2 / name).write_bytes(b"garbage")
    (run / FINAL).unlink()
    progress = (run / "progress.json").read_text().replace('"done": true', '"done": false')
    (run / "progress.json").write_text(progress)
    process = _train(["--resume", str(run)])
    refused, _ = process.communicate(timeout=600)
    outcome["refused"] = (process.returncode, refused)
    return outcome


def _second_run(data: Path, out: Path) -> dict:
    """Killed from outside in stage 1, then at SECOND's points, then finished."""
    run = out / "run"
    process = _train(_new_run(data, out, "run"), output=subprocess.DEVNULL)
    landed = run / "checkpoints" / "stage1" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not landed.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # somewhere in the next epoch
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    outcome: dict = {"run": run, "outside": process.returncode}
    for fault in SECOND:
        outcome[fault] = _killed_at(["--resume", str(run)], fault, run)
    outcome["resumed"] = _run(["--resume", str(run)])[0]
    outcome["state"], outcome["rows"] = _state(run), _rows(run)
    return outcome


@pytest.fixture(scope="module")
def scenarios(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every run of this module on two lanes (one per core): the first killed run on one; the
    unbroken run, then the second killed run, on the other (6 and 5 processes)."""
    first, second = (tmp_path_factory.mktemp(name) for name in ("first", "second"))

    def unbroken_then_second() -> dict:
        out = tmp_path_factory.mktemp("unbroken")
        code, output = _run(_new_run(tiny_synthetic, out, "run"))
        unbroken = {"run": out / "run", "code": code, "output": output}
        return {"unbroken": unbroken, "second": _second_run(tiny_synthetic, second)}

    with ThreadPoolExecutor(max_workers=2) as pool:
        one = pool.submit(_first_run, tiny_synthetic, first)
        rest = pool.submit(unbroken_then_second)
        return {"first": one.result(), **rest.result()}


@pytest.fixture(scope="module")
def unbroken_run(scenarios: dict[str, dict]) -> tuple[Path, str]:
    result = scenarios["unbroken"]
    assert result["code"] == 0
    return result["run"], result["output"]


@pytest.fixture(scope="module")
def unbroken(unbroken_run: tuple[Path, str]) -> Path:
    return unbroken_run[0]


def test_training_output_has_no_library_noise(unbroken_run: tuple[Path, str]) -> None:
    """One progress bar and our own lines: no Lightning tips, banners or stop notices."""
    _, output = unbroken_run
    for noise in ("Tip", "GPU available", "TPU available", "Trainer.fit` stopped", "LOCAL_RANK"):
        assert noise not in output, f"{noise!r} in the training output:\n{output[-2000:]}"
    assert "run folder:" in output


def _assert_identical(state: dict, rows: list, unbroken: Path) -> None:
    expected = _state(unbroken)
    assert expected.keys() == state.keys()
    different = [k for k in expected if not torch.equal(expected[k], state[k])]
    assert not different, f"{len(different)} of {len(expected)} tensors differ: {different[:5]}"
    assert rows == _rows(unbroken)  # no duplicated or missing epoch, same numbers
    assert len(rows) == 4


@pytest.mark.parametrize("fault", FAULTS)
def test_sigkill_then_resume_is_bit_identical(
    fault: str, unbroken: Path, scenarios: dict[str, dict]
) -> None:
    result = scenarios["first" if fault in FIRST else "second"]
    assert result[fault]["killed"] == -signal.SIGKILL
    assert not result[fault]["final"]
    assert result["resumed"] == 0
    _assert_identical(result["state"], result["rows"], unbroken)
    assert any((result["run"] / "logs" / "stage1").glob("attempt*/metrics.csv"))  # logs kept


def test_external_sigkill_then_resume_is_bit_identical(
    unbroken: Path, scenarios: dict[str, dict]
) -> None:
    second = scenarios["second"]
    assert second["outside"] == -signal.SIGKILL
    assert second["resumed"] == 0
    _assert_identical(second["state"], second["rows"], unbroken)


def test_damaged_last_checkpoint_falls_back_then_refuses_clearly(
    unbroken: Path, scenarios: dict[str, dict]
) -> None:
    first = scenarios["first"]
    assert first["resumed"] == 0 and "last.ckpt is damaged" in first["fell_back"]
    _assert_identical(first["state"], first["rows"], unbroken)
    code, output = first["refused"]
    stage2 = first["run"] / "checkpoints" / "stage2"
    assert code == 2
    assert f"rm -r {stage2}" in output and not (first["run"] / FINAL).exists()
