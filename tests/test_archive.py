"""Scoring an archive: streamed rows, SIGKILL then --resume, changed files, shards and merge."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_runs import train_tiny_model

from pneumonia_cxr.archive import PROGRESS_SUFFIX, ArchiveError, Shard, read_table, walk_files
from pneumonia_cxr.cli import main
from pneumonia_cxr.data.discovery import list_images
from pneumonia_cxr.faults import FAULT_ENV
from pneumonia_cxr.model.outputs import PNEUMONIA, table_columns


@pytest.fixture(scope="module")
def model(session_tiny_model: Path) -> Path:
    return session_tiny_model


@pytest.fixture(scope="module")
def archive(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every synthetic image linked three times in two sub-folders, plus one unreadable file."""
    root = tmp_path_factory.mktemp("archive") / "pacs"
    for copy in range(3):
        for record in list_images(tiny_synthetic):
            target = root / f"batch{copy % 2}" / f"c{copy}_{record.path.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(record.path)
    (root / "batch0" / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")
    return root


def _predict(model: Path, archive: Path, output: Path, *extra: str, fault: str = "") -> int:
    """`pneumonia-cxr predict`; with a fault in its own process, which kills itself there."""
    args = ["predict", str(archive), "--model_path", str(model), "--output", str(output)]
    args += ["--batch_size", "8", "--no_progress", *extra]
    if not fault:
        return main(args)
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV} | {FAULT_ENV: fault}
    command = [sys.executable, "-m", "pneumonia_cxr.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, timeout=300).returncode


@pytest.fixture(scope="module")
def unbroken(model: Path, archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("unbroken") / "all.csv"
    assert _predict(model, archive, output) == 0
    return output


def test_rows_stream_in_listing_order_with_bad_files_as_rows(unbroken: Path, archive: Path):
    lines = unbroken.read_text().splitlines()
    assert lines[0] == ",".join(table_columns([PNEUMONIA]))
    assert lines[0].startswith("path,state,probability,label,out_of_distribution,reason,")
    listed = [str(p) for p in walk_files([archive])]
    assert [line.split(",")[0] for line in lines[1:]] == listed
    broken = [line for line in lines if "zz_broken" in line]
    cells = broken[0].split(",")
    assert len(broken) == 1 and cells[1:3] == ["unreadable", ""]  # no probability, an error


FAULTS = ("archive:batch3", "archive:batch5:rows")  # after a flush; rows out, records not


@pytest.fixture(scope="module")
def killed(model: Path, archive: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Both killed runs at once (each is its own process): fault -> (exit code, its output)."""
    from concurrent.futures import ThreadPoolExecutor

    outputs = {fault: tmp_path_factory.mktemp("killed") / "all.csv" for fault in FAULTS}
    with ThreadPoolExecutor(max_workers=2) as pool:
        codes = {
            fault: pool.submit(_predict, model, archive, outputs[fault], fault=fault)
            for fault in FAULTS
        }
        return {fault: (codes[fault].result(), outputs[fault]) for fault in FAULTS}


@pytest.mark.parametrize("fault", FAULTS)
def test_sigkill_then_resume_gives_every_file_once_and_the_same_rows(
    model: Path, archive: Path, unbroken: Path, killed: dict, fault: str
) -> None:
    code, output = killed[fault]
    assert code == -signal.SIGKILL
    partial = output.read_text().splitlines()
    assert 1 < len(partial) < len(unbroken.read_text().splitlines())
    assert _predict(model, archive, output, "--resume") == 0
    assert output.read_text() == unbroken.read_text()  # every file once, same numbers


def test_a_changed_file_is_rescored_and_another_models_output_refused(
    model: Path, archive: Path, tiny_synthetic: Path, tmp_path: Path, capsys
) -> None:
    copy = tmp_path / "pacs"
    copy.mkdir()
    for path in sorted(archive.glob("batch0/*"))[:6]:
        (copy / path.name).write_bytes(path.read_bytes())
    output = tmp_path / "out.csv"
    assert _predict(model, copy, output) == 0
    first = output.read_text().splitlines()
    changed = sorted(copy.iterdir())[1]
    changed.write_bytes(sorted(copy.iterdir())[2].read_bytes())  # new content, new mtime
    assert _predict(model, copy, output, "--resume") == 0
    rows = {line.split(",")[0]: line for line in output.read_text().splitlines()[1:]}
    assert len(rows) == len(first) - 1  # each file once
    assert rows[str(changed)].split(",")[1] == rows[str(sorted(copy.iterdir())[2])].split(",")[1]
    other = train_tiny_model(tiny_synthetic, tmp_path / "other")
    assert main(["predict", str(copy), "--model_path", str(other), "--output", str(output),
                 "--resume", "--no_progress"]) == 2  # fmt: skip
    assert "another model" in capsys.readouterr().err


def test_two_shards_merged_equal_the_unsharded_output(
    model: Path, archive: Path, unbroken: Path, tmp_path: Path
) -> None:
    shards = [tmp_path / f"shard{i}.csv" for i in range(2)]
    for i, shard in enumerate(shards):
        assert _predict(model, archive, shard, "--shard", f"{i}/2") == 0
    merged = tmp_path / "merged.csv"
    assert main(["merge-predictions", *map(str, shards), "--output", str(merged)]) == 0
    assert merged.read_text() == unbroken.read_text()
    assert (tmp_path / ("merged.csv" + PROGRESS_SUFFIX)).is_file()


@pytest.mark.parametrize("spec", ["3/2", "0/0", "x", "1/-2"])
def test_a_bad_shard_spec_is_a_clear_error(spec: str) -> None:
    with pytest.raises(ArchiveError, match="shard"):
        Shard.parse(spec)


def test_file_lists_in_txt_and_csv(archive: Path, tmp_path: Path) -> None:
    files = [str(p) for p in walk_files([archive])][:5]
    (tmp_path / "list.txt").write_text("\n".join(files) + "\n")
    (tmp_path / "list.csv").write_text(
        "id,path\n" + "".join(f"{i},{f}\n" for i, f in enumerate(files))
    )
    for name in ("list.txt", "list.csv"):
        assert [str(p) for p in walk_files([], tmp_path / name)] == files


@pytest.mark.slow
def test_two_ddp_processes_through_run_sh_write_the_rows_of_one_process(
    model: Path, archive: Path, tmp_path: Path
) -> None:
    """`bash run/run.sh predict ...` (its scoring mode, no Slurm) with Lightning's prediction
    loop on 2 CPU processes (gloo): every file once, in order, with the single-process rows
    (PyTorch on both sides; the batches differ, so equal to 2e-6)."""
    single = tmp_path / "single.csv"
    assert main(["predict", str(archive), "--model_path", str(model), "--engine", "torch",
                 "--output", str(single), "--no_progress"]) == 0  # fmt: skip
    ddp = tmp_path / "ddp.csv"
    root = Path(__file__).resolve().parents[1]
    command = ["bash", str(root / "run" / "run.sh"), "predict", str(archive)]
    command += ["--model_path", str(model), "--output", str(ddp), "--devices", "2"]
    command += ["--accelerator", "cpu", "--strategy", "ddp", "--batch_size", "8"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PYTHON"] = sys.executable
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = read_table(single)
    got = read_table(ddp)
    assert [r["path"] for r in got] == [r["path"] for r in expected]
    for a, b in zip(got, expected, strict=True):
        assert (a["label"], a["error"]) == (b["label"], b["error"])
        if b["probability"]:
            assert abs(float(a["probability"]) - float(b["probability"])) <= 2e-6
    assert not list(tmp_path.glob(".*.part"))  # the per-rank parts are gone


def test_the_progress_bar_knows_the_total_and_the_summary_counts(
    model: Path, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "bar.csv"
    args = ["predict", str(archive), "--model_path", str(model), "--output", str(output)]
    assert main([*args, "--shard", "1/3"]) == 0
    mine = [p.name for p in walk_files([archive])][1::3]
    total, broken = len(mine), int("zz_broken.png" in mine)
    err = capsys.readouterr().err
    assert f"{total}/{total}" in err and "img/s" in err  # a total, hence an ETA
    rows = read_table(output)
    states = [row["state"] for row in rows]
    assert len(rows) == total and states.count("unreadable") == broken
    positives = sum(row["label"] == "PNEUMONIA" for row in rows)
    assessed, refused = states.count("assessed"), states.count("not assessed")
    assert (
        f"{total} image(s) -> {output}: {assessed} assessed ({positives} PNEUMONIA), "
        f"{refused} not assessed, {broken} unreadable\n"
    ) in err


@pytest.fixture(scope="module")
def odd_tree(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Hidden folders, dotfiles, a symlink loop, a link to a file of the tree, a named pipe, a
    name that is not valid UTF-8, spaces and upper-case extensions."""
    images = [r.path for r in list_images(tiny_synthetic)][:8]
    root = tmp_path_factory.mktemp("odd") / "tree"
    (root / "sub dir").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "sub dir" / "a film.JPEG").write_bytes(images[0].read_bytes())
    (root / "b.Png").write_bytes(images[1].read_bytes())
    (root / ".dotfile.jpeg").write_bytes(images[2].read_bytes())
    (root / ".hidden" / "c.jpeg").write_bytes(images[3].read_bytes())
    (root / "sub dir" / "loop").symlink_to(root, target_is_directory=True)
    (root / "link_to_b.png").symlink_to(root / "b.Png")
    (root / "outside.jpeg").symlink_to(images[4])
    (root / "raw").mkdir()
    (root / "raw" / "scan.bin").write_bytes(images[6].read_bytes())  # not listed by its name
    (root / "scan.jpeg").symlink_to(root / "raw" / "scan.bin")
    os.mkfifo(root / "pipe.jpeg")
    (Path(os.fsdecode(bytes(root)) + os.fsdecode(b"/caf\xe9.jpeg"))).write_bytes(
        images[5].read_bytes()
    )
    return root


def test_every_predict_mode_scores_the_same_files_of_an_odd_tree(
    session_tiny_model: Path,
    odd_tree: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
) -> None:
    """`predict DIR`, `predict DIR --output x.csv` and `predict DIR --devices 1 --output y.csv`:
    the one listing (`data.walk`): no hidden entry, the loop walked once, the linked file once,
    the pipe skipped and named (never opened: the test would hang), the non-UTF-8 name scored
    and written with its byte escaped."""
    archive_csv, ddp_csv = tmp_path / "x.csv", tmp_path / "y.csv"
    base = ["predict", str(odd_tree), "--model_path", str(session_tiny_model), "--no_progress"]
    assert main(base) == 0  # the table on stdout
    plain = capsys.readouterr().out
    assert main([*base, "--output", str(archive_csv)]) == 0
    environment = dict(os.environ)
    assert main([*base, "--output", str(ddp_csv), "--devices", "1", "--accelerator", "cpu"]) == 0
    assert dict(os.environ) == environment  # no MASTER_PORT left for a later DDP run to inherit
    named = ("sub dir/a film.JPEG", "b.Png", "outside.jpeg", "scan.jpeg")
    expected = [*(str(odd_tree / name) for name in named), str(odd_tree) + "/caf\\xe9.jpeg"]
    modes = {
        "plain": [r["path"] for r in csv.DictReader(io.StringIO(plain))],
        "archive": [r["path"] for r in read_table(archive_csv)],
        "ddp": [r["path"] for r in read_table(ddp_csv)],
    }
    for mode, paths in modes.items():
        assert sorted(paths) == sorted(expected), mode
    for table in (archive_csv, ddp_csv):
        assert all(r["probability"] and not r["error"] for r in read_table(table))
    assert "pipe.jpeg: not a regular file" in caplog.text
    capsys.readouterr()
    assert main([*base[:1], str(odd_tree / "pipe.jpeg"), *base[2:]]) == 1  # named: a row, no hang
    assert "not a regular file" in capsys.readouterr().out


def test_an_odd_tree_resumes_in_place_with_its_non_utf8_name_and_heatmaps(
    session_tiny_model: Path, odd_tree: Path, tmp_path: Path
) -> None:
    """The progress file keeps a non-UTF-8 name's own bytes: `--resume` finds the file again
    (not rescored, rows in the same order); its heatmap column is escaped like its path."""
    table, cams = tmp_path / "x.csv", tmp_path / "cams"
    base = ["predict", str(odd_tree), "--model_path", str(session_tiny_model), "--no_progress"]
    base += ["--output", str(table), "--gradcam", str(cams), "--batch_size", "2"]
    assert main(base) == 0
    first = table.read_text(encoding="utf-8")
    row = next(r for r in read_table(table) if r["path"].endswith("caf\\xe9.jpeg"))
    assert row["heatmap"].endswith("caf\\xe9_gradcam.png") and row["probability"]
    assert main([*base, "--resume"]) == 0
    assert table.read_text(encoding="utf-8") == first
