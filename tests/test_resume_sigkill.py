"""A run killed with SIGKILL at any moment and resumed ends bit-identical to an unbroken run.

Each run is `pneumonia-cxr train` in a subprocess with the CLI's defaults (2 loader workers,
augmentation, shuffling, class weights, early stopping, plateau LR, both stages, the threshold
fit), on tiny images and 3 batches per epoch. The process kills itself with SIGKILL at a named
point (`pneumonia_cxr.faults`), or the test kills it from outside; then `--resume` finishes it.

One run is killed at every named point in turn (each kill resumed by the next step's
process, the last resume finishing it), so seven processes cover six points; it runs beside
the unbroken run, the outside kill and the damaged checkpoints (two lanes, one per core, one
intra-op thread each: the same for every run, so bit-identity is between equal settings).
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

pytestmark = pytest.mark.slow  # about a minute: 13 training processes

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


# In the order a run meets them, so that one run is killed at each point in turn: each kill
# is resumed by the next step's process, the last resume finishes the run.
CHAIN = [FAULTS[0], FAULTS[1], FAULTS[3], FAULTS[2], FAULTS[4], FAULTS[5]]


def _killed_at_each_point_in_turn(data: Path, out: Path) -> dict:
    """One run killed at every fault point, each time resumed (by the next step, which
    is then killed at the next point), then finished: fault -> outcome, and the run."""
    outcome: dict = {"run": out / "run"}
    for step, fault in enumerate(CHAIN):
        args = _new_run(data, out, "run") if step == 0 else ["--resume", str(out / "run")]
        outcome[fault] = {"killed": _run(args, fault)[0], "final": (out / "run" / FINAL).exists()}
    outcome["resumed"] = _run(["--resume", str(out / "run")])[0]
    return outcome


def _killed_from_outside(data: Path, out: Path) -> dict:
    process = _train(_new_run(data, out, "run"), output=subprocess.DEVNULL)
    landed = out / "run" / "checkpoints" / "stage1" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not landed.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # somewhere in the next epoch
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    return {"run": out / "run", "resumed": _run(["--resume", str(out / "run")])[0]}


def _damaged_then_resumed(data: Path, out: Path) -> dict:
    """Killed in stage 2; last.ckpt truncated: the resume falls back to best.ckpt. Then both
    checkpoints garbage and the final file gone: the resume refuses, naming the fix."""
    run = out / "run"
    killed = _run(_new_run(data, out, "run"), "stage2:epoch1:batch1")[0]
    stage2 = run / "checkpoints" / "stage2"
    last = stage2 / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated
    process = _train(["--resume", str(run)])
    fell_back, _ = process.communicate(timeout=600)
    outcome = {"run": run, "killed": killed, "fell_back": (process.returncode, fell_back)}
    outcome["state_after_fallback"] = _state(run), _rows(run)
    for name in ("last.ckpt", "best.ckpt"):
        (stage2 / name).write_bytes(b"garbage")
    (run / FINAL).unlink()
    progress = (run / "progress.json").read_text().replace('"done": true', '"done": false')
    (run / "progress.json").write_text(progress)
    process = _train(["--resume", str(run)])
    refused, _ = process.communicate(timeout=600)
    outcome["refused"] = (process.returncode, refused)
    return outcome


@pytest.fixture(scope="module")
def scenarios(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every run of this module on two lanes (one per core): the chain of kills on one, the
    unbroken run, the outside kill and the damaged checkpoints on the other."""
    chain, outside, damaged = (tmp_path_factory.mktemp(n) for n in ("chain", "outside", "damaged"))

    def unbroken() -> dict:
        out = tmp_path_factory.mktemp("unbroken")
        code, output = _run(_new_run(tiny_synthetic, out, "run"))
        return {"run": out / "run", "code": code, "output": output}

    def other_lane() -> dict:
        return {
            "unbroken": unbroken(),
            "outside": _killed_from_outside(tiny_synthetic, outside),
            "damaged": _damaged_then_resumed(tiny_synthetic, damaged),
        }

    with ThreadPoolExecutor(max_workers=2) as pool:
        chained = pool.submit(_killed_at_each_point_in_turn, tiny_synthetic, chain)
        rest = pool.submit(other_lane)
        return {"chain": chained.result(), **rest.result()}


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


def _assert_identical(run: Path, unbroken: Path) -> None:
    expected, got = _state(unbroken), _state(run)
    assert expected.keys() == got.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, f"{len(different)} of {len(expected)} tensors differ: {different[:5]}"
    assert _rows(run) == _rows(unbroken)  # no duplicated or missing epoch, same numbers
    assert len(_rows(run)) == 4


@pytest.mark.parametrize("fault", FAULTS)
def test_sigkill_then_resume_is_bit_identical(
    fault: str, unbroken: Path, scenarios: dict[str, dict]
) -> None:
    chain = scenarios["chain"]
    assert chain[fault]["killed"] == -signal.SIGKILL
    assert not chain[fault]["final"]
    assert chain["resumed"] == 0
    run = chain["run"]
    _assert_identical(run, unbroken)
    assert any((run / "logs" / "stage1").glob("attempt*/metrics.csv"))  # earlier logs kept


def test_external_sigkill_then_resume_is_bit_identical(
    unbroken: Path, scenarios: dict[str, dict]
) -> None:
    assert scenarios["outside"]["resumed"] == 0
    _assert_identical(scenarios["outside"]["run"], unbroken)


def test_damaged_last_checkpoint_falls_back_then_refuses_clearly(
    unbroken: Path, scenarios: dict[str, dict]
) -> None:
    damaged = scenarios["damaged"]
    assert damaged["killed"] != 0
    code, output = damaged["fell_back"]
    assert code == 0 and "last.ckpt is damaged" in output
    state, rows = damaged["state_after_fallback"]
    expected = _state(unbroken)
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert rows == _rows(unbroken) and len(rows) == 4
    code, output = damaged["refused"]
    stage2 = damaged["run"] / "checkpoints" / "stage2"
    assert code == 2
    assert f"rm -r {stage2}" in output and not (damaged["run"] / FINAL).exists()
