"""The evaluate job on a tiny trained model: files, honest numbers, refusals, one-line errors."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pneumonia_cxr import CLASS_NAMES
from pneumonia_cxr.cli import main
from pneumonia_cxr.data.discovery import list_images
from pneumonia_cxr.data.fingerprint import records_fingerprint
from pneumonia_cxr.errors import EvaluationInputError, ModelFileError
from pneumonia_cxr.evaluation.evaluate import PLOT_FILES, TYPE_ROC, EvaluationResult, evaluate_model
from pneumonia_cxr.evaluation.metrics import RATE_NAMES
from pneumonia_cxr.model.model_file import load_model

REPO = Path(__file__).resolve().parents[1]
FAST = {"n_resamples": 200, "explain_images": 0}


def edited_model(source: Path, target: Path, edit) -> Path:
    """A copy of a model file whose payload `edit` changed (as a user or a bug might)."""
    payload = torch.load(source, map_location="cpu", weights_only=True)
    edit(payload)
    torch.save(payload, target)
    return target


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def model_file(session_tiny_model: Path) -> Path:
    return session_tiny_model


def _corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])  # a truncated PNG


@pytest.fixture(scope="module")
def data_with_a_bad_file(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny set with one unreadable test image, which evaluation must skip and count."""
    data = tmp_path_factory.mktemp("bad_file") / "data"
    shutil.copytree(tiny_synthetic, data)
    _corrupt(sorted((data / "test" / "NORMAL").glob("*.png"))[0])
    return data


@pytest.fixture(scope="module")
def evaluation(
    model_file: Path, data_with_a_bad_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[EvaluationResult, str]:
    """One full evaluation (with the sanity checks), and the model file's hash before it."""
    before = _sha256(model_file)
    with pytest.warns(UserWarning, match="skipping unreadable"):
        result = evaluate_model(
            model_file,
            data_with_a_bad_file,
            output_dir=tmp_path_factory.mktemp("eval"),
            n_resamples=300,
            explain_images=4,
        )
    return result, before


def test_metrics_json_has_the_required_keys(
    evaluation: tuple[EvaluationResult, str], model_file: Path, data_with_a_bad_file: Path
) -> None:
    result, _ = evaluation
    metrics = json.loads((result.output_dir / "metrics.json").read_text())
    required = {
        "n",
        "threshold",
        "threshold_rule",
        "at_threshold",
        "at_0.5",
        "roc_auc",
        "average_precision",
        "brier",
        "ece",
        "model_fingerprint",
        "data_fingerprint",
        "split",
        "dataset",
        "model_path",
        "temperature",
        "skipped_files",
    }
    assert required <= set(metrics)
    assert metrics["split"] == "test" and metrics["dataset"] == str(data_with_a_bad_file)
    records = list_images(data_with_a_bad_file, ["test"])
    bad = str(sorted((data_with_a_bad_file / "test" / "NORMAL").glob("*.png"))[0])
    assert metrics["skipped_files"] == 1 and metrics["skipped_paths"] == [bad]
    evaluated = [r for r in records if str(r.path) != bad]
    assert metrics["n"] == len(evaluated) == len(records) - 1
    assert metrics["data_fingerprint"] == records_fingerprint(evaluated, "test")
    assert metrics["model_fingerprint"] == load_model(model_file).fingerprint()
    assert "calibration" not in metrics  # temperature 1: nothing was calibrated
    for block in ("at_threshold", "at_0.5"):
        assert set(metrics[block]["confusion"]) == {"tp", "fp", "tn", "fn"}
        assert sum(metrics[block]["confusion"].values()) == metrics["n"]


def test_confidence_intervals_contain_their_point_estimates(
    evaluation: tuple[EvaluationResult, str],
) -> None:
    metrics = evaluation[0].metrics
    entries = [metrics[block][name] for block in ("at_threshold", "at_0.5") for name in RATE_NAMES]
    entries += [metrics["roc_auc"], metrics["average_precision"]]
    checked = 0
    for entry in entries:
        if entry["value"] is None or entry["ci_low"] is None:
            continue  # undefined (0/0), e.g. precision when nothing is called positive
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], entry
        checked += 1
    assert checked >= 8


def test_evaluation_never_changes_the_threshold(
    evaluation: tuple[EvaluationResult, str], model_file: Path
) -> None:
    result, before = evaluation
    bundle = load_model(model_file)
    assert result.metrics["threshold"] == bundle.threshold
    assert result.metrics["threshold_rule"] == bundle.threshold_rule
    assert _sha256(model_file) == before  # the model file itself is untouched


BINARY_PLOTS = [name for name in PLOT_FILES.values() if name != TYPE_ROC]


@pytest.mark.parametrize("name", [*BINARY_PLOTS, "metrics.md", "explain_check.json"])
def test_every_output_file_is_written(evaluation: tuple[EvaluationResult, str], name: str) -> None:
    path = evaluation[0].output_dir / name
    assert path.is_file() and path.stat().st_size > 0
    if name.endswith(".png"):
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) >= 200


def test_report_is_self_contained_and_complete(evaluation: tuple[EvaluationResult, str]) -> None:
    text = evaluation[0].report.read_text(encoding="utf-8")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text)
    assert text.count('src="data:image/png;base64,') == len(BINARY_PLOTS)
    for phrase in ("patient-level", "untouched", "Randomization test", "Pointing game"):
        assert phrase in text, phrase


def test_predictions_csv_agrees_with_the_metrics(evaluation: tuple[EvaluationResult, str]) -> None:
    result = evaluation[0]
    with (result.output_dir / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:5] == ["path", "true_class", "counted_as", "state", "probability"]
    threshold = result.metrics["threshold"]
    counts = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    for row in rows:
        number = float(row["probability"] or row["unassessed_probability"])
        predicted = CLASS_NAMES[int(number >= threshold)]
        # Rounded to 6 digits in the file: only a probability within 1e-6 may disagree.
        assert row["counted_as"] == predicted or abs(number - threshold) < 1e-6
        assert row["label"] == (row["counted_as"] if row["state"] == "assessed" else "")
        positive, truth = row["counted_as"] == CLASS_NAMES[1], row["true_class"] == CLASS_NAMES[1]
        counts[("t" if positive == truth else "f") + ("p" if positive else "n")] += 1
    assert counts == result.metrics["at_threshold"]["confusion"]


def _set_mean(payload: dict) -> None:
    payload["preprocessing"]["mean"] = [0.5, 0.5, 0.5]


def _swap_classes(payload: dict) -> None:
    payload["class_names"] = list(reversed(payload["class_names"]))


def _one_channel(payload: dict) -> None:
    payload["preprocessing"]["channels"] = 1


@pytest.mark.parametrize(
    ("edit", "message"),
    [(_set_mean, "mean"), (_swap_classes, "class names"), (_one_channel, "channels")],
)
def test_refuses_a_model_whose_preprocessing_does_not_match(
    model_file: Path, tiny_synthetic: Path, tmp_path: Path, edit, message: str
) -> None:
    bad = edited_model(model_file, tmp_path / "edited.pt", edit)
    with pytest.raises(ModelFileError, match=message):
        evaluate_model(bad, tiny_synthetic, output_dir=tmp_path / "out", **FAST)
    assert not (tmp_path / "out" / "metrics.json").exists()


def _set_temperature(payload: dict) -> None:
    payload["temperature"] = 2.0


def test_cli_evaluate_uses_the_stored_temperature_and_writes_next_to_the_model(
    model_file: Path, tiny_synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    warm = edited_model(model_file, tmp_path / "t2.pt", _set_temperature)
    args = ["--dataset_path", str(tiny_synthetic), "--n_resamples", "100"]
    assert main(["evaluate", "--model_path", str(warm), *args, "--explain_images", "0"]) == 0
    out = capsys.readouterr().out
    default_dir = tmp_path / "eval_test"
    assert str(default_dir / "report.html") in out and "ROC AUC" in out
    metrics = json.loads((default_dir / "metrics.json").read_text())
    assert metrics["temperature"] == 2.0
    calibration = metrics["calibration"]
    assert calibration["ece_after"] == metrics["ece"]
    # Recomputed from predictions.csv (P after T = 2, 6 decimals): the stored ECE is that of
    # these probabilities, and ece_before that of the untempered ones, sigmoid(2 * logit(P)).
    with (default_dir / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    labels = np.array([CLASS_NAMES.index(row["true_class"]) for row in rows])
    tempered = np.array(
        [float(row["probability"] or row["unassessed_probability"]) for row in rows]
    )
    clipped = np.clip(tempered, 1e-6, 1 - 1e-6)
    untempered = 1 / (1 + np.exp(-2 * np.log(clipped / (1 - clipped))))
    assert calibration["ece_after"] == pytest.approx(_binned_ece(labels, tempered), abs=1e-4)
    assert calibration["ece_before"] == pytest.approx(_binned_ece(labels, untempered), abs=1e-4)
    assert calibration["ece_before"] != pytest.approx(calibration["ece_after"], abs=1e-3)


def _binned_ece(labels: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Binary ECE written out: per equal-width bin, |share positive - mean P|, weighted by size."""
    total = 0.0
    for b in range(n_bins):
        low, high = b / n_bins, (b + 1) / n_bins
        inside = (probs >= low) & ((probs < high) if b < n_bins - 1 else (probs <= high))
        if inside.any():
            total += inside.sum() / len(probs) * abs(labels[inside].mean() - probs[inside].mean())
    return total


def test_cli_refuses_a_mismatched_model_in_one_line(
    model_file: Path, tiny_synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = edited_model(model_file, tmp_path / "edited.pt", _set_mean)
    assert main(["evaluate", "--model_path", str(bad), "--dataset_path", str(tiny_synthetic)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "edited.pt" in err and "\n" not in err


def test_one_class_absent_is_a_clear_one_line_error(
    model_file: Path, tiny_synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_synthetic, data)
    for path in (data / "test" / "NORMAL").glob("*.png"):
        _corrupt(path)
    with pytest.warns(UserWarning), pytest.raises(EvaluationInputError, match="only class"):
        evaluate_model(model_file, data, output_dir=tmp_path / "out", **FAST)
    with pytest.warns(UserWarning):
        code = main(["evaluate", "--model_path", str(model_file), "--dataset_path", str(data)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "\n" not in err
    assert "only class PNEUMONIA" in err


def test_scripts_evaluate_shim_runs() -> None:
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "evaluate.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "--model_path" in completed.stdout and "--n_resamples" in completed.stdout
