"""`pneumonia-cxr calibrate`: a site's images, patient folds, the calibration record, refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from pneumonia_cxr.cli import main
from pneumonia_cxr.data.discovery import ImageRecord, list_images
from pneumonia_cxr.data.patients import patient_id
from pneumonia_cxr.data.site import list_site_images, read_patients_csv, site_folds
from pneumonia_cxr.data.split import file_sha256
from pneumonia_cxr.model.model_file import load_model


@pytest.fixture(scope="module")
def model_file(session_tiny_model: Path) -> Path:
    return session_tiny_model


@pytest.fixture(scope="module")
def site(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A flat NORMAL/PNEUMONIA folder of 36 images per class (every split of the tiny set)."""
    root = tmp_path_factory.mktemp("site") / "hospital"
    for record in list_images(tiny_synthetic):
        target = root / record.class_name / record.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(record.path)
    return root


def _calibrate(model: Path, site: Path, output: Path, *extra: str) -> int:
    paths = ["--model_path", str(model), "--dataset_path", str(site), "--output", str(output)]
    return main(["calibrate", *paths, "--device", "cpu", *extra])


def test_folds_keep_each_patient_whole_and_both_classes_in_each(site: Path) -> None:
    records = list_site_images(site)
    folds = site_folds(records, 2, seed=1)
    assert sorted(r.path.name for f in folds for r in f) == sorted(r.path.name for r in records)
    owners = [{patient_id(r.path.name) for r in fold} for fold in folds]
    assert not owners[0] & owners[1]
    for fold in folds:
        counts = [sum(r.label == c for r in fold) for c in (0, 1)]
        assert min(counts) >= 12, counts


def test_folds_without_patient_ids_split_by_image_and_say_so(tmp_path: Path) -> None:
    records = [ImageRecord(tmp_path / f"scan{i}.png", "site", i % 2) for i in range(20)]
    with pytest.warns(UserWarning, match="split by image"):
        folds = site_folds(records, 2)
    assert sorted(len(f) for f in folds) == [10, 10]
    (tmp_path / "patients.csv").write_text(
        "file,patient\n" + "".join(f"scan{i}.png,p{i // 4}\n" for i in range(20))
    )
    patients = read_patients_csv(tmp_path)
    folds = site_folds(records, 2, patients=patients)
    owners = [{patients[r.path.name] for r in fold} for fold in folds]
    assert not owners[0] & owners[1]


def test_calibrate_writes_a_file_that_records_its_site(
    model_file: Path, site: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "site.pt"
    # The tiny model barely separates its synthetic classes: --force writes the file anyway.
    assert _calibrate(model_file, site, output, "--min_sensitivity", "0.9", "--force") == 0
    printed = capsys.readouterr().out
    assert "site: 72 images (36 NORMAL, 36 PNEUMONIA)" in printed
    assert "CI width" in printed and "the model as it is" in printed
    assert "verdict: NOT useful here" in printed
    parent, calibrated = load_model(model_file), load_model(output)
    record = calibrated.extra["calibration"]
    assert not record["verdict"]["useful"] and record["verdict"]["site_auc_ci"][0] < 0.75
    assert record["forced"]
    assert record["parent_sha256"] == file_sha256(model_file)
    assert record["images"] == {"NORMAL": 36, "PNEUMONIA": 36}
    assert record["min_sensitivity"] == 0.9 and record["site_sensitivity"] >= 0.9
    assert calibrated.threshold_rule == "max_specificity_at_sensitivity"
    for name, tensor in parent.model.state_dict().items():  # the weights stay as they are
        assert torch.equal(tensor, calibrated.model.state_dict()[name])


def test_held_out_fold_is_measured_as_evaluate_measures_a_test_split(
    model_file: Path, site: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """One held-out measure: the figures printed and written for the held-out fold are
    `evaluate_predictions`' bootstrap over that fold's own labels and probabilities."""
    import json

    from pneumonia_cxr.evaluation.metrics import Estimate, evaluate_predictions
    from pneumonia_cxr.site.held_out import format_interval

    output, figures = tmp_path / "site.pt", tmp_path / "check.json"
    extra = ("--check_fold", "1", "--force", "--check_output", str(figures))
    assert _calibrate(model_file, site, output, *extra) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("held-out"))
    held = json.loads(figures.read_text())
    assert len(held["labels"]) == held["n"] == len(held["probabilities"]) < 72
    expected = evaluate_predictions(
        held["labels"], held["probabilities"], load_model(output).threshold, "site"
    )
    assert held["roc_auc"] == expected["roc_auc"] and held["threshold"] == expected["threshold"]
    for name in ("sensitivity", "specificity"):
        assert held[name] == expected["at_threshold"][name]
        assert f"{name} {format_interval(Estimate.from_dict(held[name]))}" in line
    assert line.startswith(f"held-out fold 1 ({held['n']} images of other patients): ROC AUC")
    assert held["verdict"]["site_auc"] == expected["roc_auc"]["value"]


@pytest.mark.parametrize("case", ["one class", "empty class", "too few", "unreadable"])
def test_bad_sites_are_refused_and_nothing_is_written(
    model_file: Path, site: Path, tmp_path: Path, capsys: pytest.CaptureFixture, case: str
) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(site, bad, symlinks=True)
    expected = {
        "one class": "PNEUMONIA",
        "empty class": "holds no images",
        "too few": "--force",
        "unreadable": "broken.png",
    }[case]
    if case == "one class":
        shutil.rmtree(bad / "PNEUMONIA")
    elif case == "empty class":
        for path in (bad / "NORMAL").iterdir():
            path.unlink()
    elif case == "too few":
        for path in sorted((bad / "NORMAL").iterdir())[10:]:
            path.unlink()
    else:
        (bad / "NORMAL" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    output = tmp_path / "site.pt"
    assert _calibrate(model_file, bad, output) == 2
    assert expected in capsys.readouterr().err
    assert not output.exists()


def test_init_from_fine_tunes_the_parent_network_on_a_site_folder(
    model_file: Path, site: Path, tmp_path: Path
) -> None:
    """LR 0 in stage 1 (backbone frozen, BatchNorm statistics frozen): the run's model is the
    parent's network exactly, so the parent's weights were the starting point."""
    args = ["train", "--init_from", str(model_file), "--dataset_path", str(site)]
    args += ["--stage1_epochs", "1", "--stage2_epochs", "0", "--stage1_lr", "0"]
    args += ["--batch_size", "16", "--num_workers", "0", "--output_dir", str(tmp_path)]
    assert main([*args, "--run_name", "tuned"]) == 0
    run = tmp_path / "tuned"
    config = load_model(run / "final_pneumonia_model.pt").config
    assert config["model"]["init_from"] == str(model_file.resolve())
    assert config["model"]["backbone"] == "resnet18" and config["data"]["image_size"] == 48
    parent = load_model(model_file).model.state_dict()
    tuned = load_model(run / "final_pneumonia_model.pt").model.state_dict()
    assert all(torch.equal(parent[k], tuned[k]) for k in parent)
    split = (run / "split.csv").read_text()
    assert ",site," in split  # a fresh patient split of the site's own images


def test_init_from_refuses_an_ensemble_and_a_foreign_file(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from pneumonia_cxr.model.ensemble import PneumoniaEnsemble
    from pneumonia_cxr.model.model_file import save_model

    bundle = load_model(model_file)
    bundle.model = PneumoniaEnsemble([bundle.model, load_model(model_file).model])
    ensemble = save_model(bundle, tmp_path / "ensemble.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    for path, message in ((ensemble, "ensemble of 2"), (foreign, "not a pneumonia-cxr")):
        assert main(["train", "--init_from", str(path), "--output_dir", str(tmp_path)]) == 2
        assert message in capsys.readouterr().err


def test_a_site_where_the_model_is_at_chance_gets_no_file_without_force(
    model_file: Path, site: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import numpy as np

    shuffled = tmp_path / "shuffled"
    files = sorted(site.rglob("*.png"))
    classes = np.random.default_rng(3).permutation([0, 1] * (len(files) // 2))
    for path, label in zip(files, classes, strict=True):
        target = shuffled / ("NORMAL", "PNEUMONIA")[label] / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path.resolve())
    output = tmp_path / "site.pt"
    assert _calibrate(model_file, shuffled, output) == 2
    err = capsys.readouterr().err
    assert "NOT useful here" in err and "pneumonia-cxr adapt" in err and str(shuffled) in err
    assert "--init_from" not in err  # one suggestion: `adapt`, which fine-tunes and checks
    assert not output.exists()
    assert _calibrate(model_file, shuffled, output, "--force") == 0
    assert "NOT useful here" in capsys.readouterr().out
    record = load_model(output).extra["calibration"]
    assert not record["verdict"]["useful"] and record["forced"]


def test_the_shipped_model_is_useful_on_kermany_test_images_used_as_a_site(
    real_data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    site = tmp_path / "kermany_site"
    for name in ("NORMAL", "PNEUMONIA"):
        (site / name).mkdir(parents=True)
        for path in sorted((real_data_root / "test" / name).iterdir())[:40]:
            (site / name / path.name).symlink_to(path)
    output = tmp_path / "site.pt"
    code = main(["calibrate", "--dataset_path", str(site), "--output", str(output)])
    assert code == 0, capsys.readouterr().err
    assert "verdict: useful here" in capsys.readouterr().out
    calibrated = load_model(output)
    record = calibrated.extra["calibration"]
    assert record["verdict"]["useful"] and not record["forced"]
    assert record["guard"]["images"]["cutoff"] == 26 and calibrated.guard.cutoff == pytest.approx(
        record["guard"]["cutoff"]
    )
    from pneumonia_cxr.inference.predictor import Predictor
    from pneumonia_cxr.predict import predict_paths

    rows = predict_paths(Predictor.open(output, engine="torch"), sorted(site.rglob("*.jpeg")))
    assert sum(bool(r.out_of_distribution) for r in rows) <= 16  # its own site: few flagged
