"""The command line: `data --json` on the real data, shims, run.sh, clear one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pneumonia_cxr.cli import main

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = {
    "train": {"NORMAL": 1341, "PNEUMONIA": 3875},
    "val": {"NORMAL": 8, "PNEUMONIA": 8},
    "test": {"NORMAL": 234, "PNEUMONIA": 390},
}


@pytest.mark.realdata
def test_data_json_on_real_data(real_data_root: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "--dataset_path", str(real_data_root), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"] == OFFICIAL
    assert sum(sum(c.values()) for c in summary["counts"].values()) == 5856
    for key in ("patients", "cross_split_patients", "cross_split_duplicates", "unreadable"):
        assert key in summary
    assert summary["unreadable"] == []
    assert summary["cross_split_duplicates"] == []


def test_data_text_summary_on_synthetic(tiny_synthetic: Path, capsys) -> None:
    assert main(["data", "--dataset_path", str(tiny_synthetic)]) == 0
    out = capsys.readouterr().out
    assert "NORMAL" in out and "PNEUMONIA" in out


def test_wrong_layout_is_one_clear_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "train" / "NORMAL").mkdir(parents=True)
    assert main(["data", "--dataset_path", str(tmp_path), "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path) in err and "Traceback" not in err


def test_train_shim_help() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--stage1_epochs" in result.stdout and "--dataset_path" in result.stdout


@pytest.mark.slow
def test_run_sh_on_a_workstation(tiny_synthetic: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "STAGE1_EPOCHS": "1", "STAGE2_EPOCHS": "0"}
    args = ["--dataset_path", str(tiny_synthetic), "--backbone", "resnet18", "--weights", "none"]
    args += ["--image_size", "48", "--num_workers", "0", "--output_dir", str(tmp_path)]
    args += ["--run_name", "sh"]
    result = subprocess.run(
        ["bash", str(ROOT / "run" / "run.sh"), *args], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "sh" / "final_pneumonia_model.pt").exists()


def test_resume_of_a_folder_that_is_not_a_run(tmp_path: Path, capsys) -> None:
    assert main(["train", "--resume", str(tmp_path), "--stage2_epochs", "1"]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_train_refuses_to_overwrite_a_run(tmp_path: Path, capsys) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text("{}")
    args = ["train", "--output_dir", str(tmp_path), "--run_name", "old", "--weights", "none"]
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err


def _other_value(action, default):
    """A value unlike the default, as the flag's text."""
    if action.choices:
        return next(str(c) for c in action.choices if c != default)
    if action.nargs == 2:
        return [str(type(v)(v * 2 + 1)) for v in default]
    if isinstance(default, float) or action.type is float:
        return str((default or 0.0) + 0.25)
    if isinstance(default, int) or action.type is int:
        return str((default or 0) + 3)
    return f"x_{action.dest}"


def test_every_training_field_is_a_flag_and_reaches_the_config() -> None:
    """Each data/model/train field of RunConfig is set by the flag of its name (the config's
    defaults when absent), so the CLI keeps no second copy of the config."""
    from dataclasses import fields

    from pneumonia_cxr.cli import (
        CONFIG_SECTIONS,
        INVERTED_FLAGS,
        NOT_FROM_FLAGS,
        _flag_name,
        build_parser,
        config_from_args,
    )
    from pneumonia_cxr.config import RunConfig

    parser = build_parser()
    train_parser = parser._subparsers._group_actions[0].choices["train"]
    actions = {a.dest: a for a in train_parser._actions}
    defaults = RunConfig()
    assert config_from_args(parser.parse_args(["train"])).to_dict() == defaults.to_dict()
    argv, expected = ["train"], RunConfig()
    for section in CONFIG_SECTIONS:
        for item in fields(getattr(defaults, section)):
            if item.name in NOT_FROM_FLAGS:
                continue
            flag = _flag_name(item.name)
            assert flag in actions, f"{section}.{item.name} has no flag --{flag}"
            default = getattr(getattr(defaults, section), item.name)
            action = actions[flag]
            if item.name in INVERTED_FLAGS or action.nargs == 0:  # store_true
                argv.append(f"--{flag}")
                value = not default
            else:
                text = _other_value(action, default)
                argv += [f"--{flag}", *([text] if isinstance(text, str) else text)]
                value = action.type(text) if action.type and isinstance(text, str) else text
                if isinstance(default, tuple):
                    value = tuple(type(default[0])(v) for v in text)
            setattr(getattr(expected, section), item.name, value)
    got = config_from_args(parser.parse_args(argv))
    for key in ("limit_train_batches", "limit_val_batches"):
        limit = getattr(expected.train, key)
        setattr(expected.train, key, int(limit) if limit >= 1 else limit)
    assert got.to_dict() == expected.to_dict()
