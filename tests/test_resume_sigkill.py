"""A run killed with SIGKILL at any moment and resumed ends bit-identical to an unbroken run.

Each run is `pneumonia-cxr train` in a subprocess with the CLI's defaults (2 loader workers,
augmentation, shuffling, class weights, early stopping, plateau LR, both stages, the threshold
fit), on tiny images and 3 batches per epoch. The process kills itself with SIGKILL at a named
point (`pneumonia_cxr.faults`), or the test kills it from outside; then `--resume` finishes it.

The scenarios are independent processes, so one module fixture runs them two at a time (one
per core, one intra-op thread each: the same for every run, the unbroken one included, so
bit-identity is still between equal settings); each test then checks its own scenario.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from pneumonia_cxr.faults import FAULT_ENV

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


def _killed_then_resumed(data: Path, out: Path, fault: str) -> dict:
    killed = _run(_new_run(data, out, "run"), fault)[0]
    final_after_kill = (out / "run" / FINAL).exists()
    return {
        "run": out / "run",
        "killed": killed,
        "final_after_kill": final_after_kill,
        "resumed": _run(["--resume", str(out / "run")])[0],
    }


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


@pytest.fixture(scope="module")
def scenarios(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every run of this module, two at a time: name -> its outcome."""
    jobs: dict[str, Callable[[], dict]] = {}

    def unbroken() -> dict:
        out = tmp_path_factory.mktemp("unbroken")
        code, output = _run(_new_run(tiny_synthetic, out, "run"))
        return {"run": out / "run", "code": code, "output": output}

    jobs["unbroken"] = unbroken
    for fault in FAULTS:
        out = tmp_path_factory.mktemp("killed")
        jobs[fault] = lambda out=out, fault=fault: _killed_then_resumed(tiny_synthetic, out, fault)
    outside = tmp_path_factory.mktemp("outside")
    jobs["outside"] = lambda: _killed_from_outside(tiny_synthetic, outside)
    damaged = tmp_path_factory.mktemp("damaged")
    jobs["damaged"] = lambda: {
        "run": damaged / "run",
        "killed": _run(_new_run(tiny_synthetic, damaged, "run"), "stage2:epoch1:batch1")[0],
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


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
    result = scenarios[fault]
    assert result["killed"] == -signal.SIGKILL
    assert not result["final_after_kill"]
    assert result["resumed"] == 0
    run = result["run"]
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
    assert scenarios["damaged"]["killed"] != 0
    run = scenarios["damaged"]["run"]
    stage2 = run / "checkpoints" / "stage2"
    last = stage2 / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated
    process = _train(["--resume", str(run)])
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0 and "last.ckpt is damaged" in output
    _assert_identical(run, unbroken)

    for name in ("last.ckpt", "best.ckpt"):
        (stage2 / name).write_bytes(b"garbage")
    (run / FINAL).unlink()
    progress = (run / "progress.json").read_text().replace('"done": true', '"done": false')
    (run / "progress.json").write_text(progress)
    process = _train(["--resume", str(run)])
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 2
    assert f"rm -r {stage2}" in output and not (run / FINAL).exists()
