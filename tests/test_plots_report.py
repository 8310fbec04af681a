"""Plots are real PNGs; the HTML report is one self-contained file; the Markdown is readable."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumonia_cxr.evaluation import plots
from pneumonia_cxr.evaluation.metrics import evaluate_predictions
from pneumonia_cxr.evaluation.report import metrics_markdown, write_html_report


@pytest.fixture(scope="module")
def scores() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    labels = (rng.random(120) < 0.6).astype(int)
    probs = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0.0, 1.0)
    return labels, probs


@pytest.fixture(scope="module")
def metrics(scores) -> dict:
    labels, probs = scores
    return evaluate_predictions(labels, probs, 0.42, "max_specificity_at_sensitivity", 200)


def _assert_png(path: Path, min_side: int = 300) -> None:
    assert path.is_file() and path.stat().st_size > 5_000
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min(image.size) >= min_side


def _learning_csv(path: Path) -> Path:
    """Two stages whose epoch counter restarts, a missing val_auc, an empty cell, no val_loss."""
    path.write_text(
        "epoch,stage,train_loss,val_auc\n"
        "0,1,0.69,0.70\n1,1,0.55,\n2,1,0.48,0.81\n"
        "0,2,0.40,0.86\n1,2,nan,0.88\n"
    )
    return path


PLOTTERS = {
    "confusion": lambda y, p, out: plots.plot_confusion_matrix(
        {"tp": 60, "fp": 9, "tn": 40, "fn": 11}, out
    ),
    "roc": lambda y, p, out: plots.plot_roc(y, p, 0.42, out),
    "pr": lambda y, p, out: plots.plot_pr(y, p, 0.42, out),
    "reliability": lambda y, p, out: plots.plot_reliability(y, p, out),
    "reliability_before_after": lambda y, p, out: plots.plot_reliability(
        y, p, out, y_prob_uncalibrated=p**3
    ),
    "histograms": lambda y, p, out: plots.plot_score_histograms(y, p, 0.42, out),
    "learning": lambda y, p, out: plots.plot_learning_curves(
        _learning_csv(out.parent.parent / "metrics.csv"), out
    ),
}


@pytest.mark.parametrize("name", PLOTTERS)
def test_plots_write_pngs_and_leave_no_pyplot_figure(name, scores, tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    labels, probs = scores
    before = plt.get_fignums()
    out = PLOTTERS[name](labels, probs, tmp_path / "sub" / f"{name}.png")
    assert out == tmp_path / "sub" / f"{name}.png"
    _assert_png(out)
    assert plt.get_fignums() == before


def test_learning_curves_lightning_style_rows(tmp_path):
    """CSVLogger writes train and val metrics of one epoch on separate rows, with a step column."""
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text(
        "epoch,step,train_loss_step,train_loss_epoch,val_loss,val_auc\n"
        "0,10,0.7,,,\n0,19,,0.65,,\n0,19,,,0.6,0.75\n"
        "1,39,,0.5,,\n1,39,,,0.52,0.83\n"
    )
    _assert_png(plots.plot_learning_curves(csv_path, tmp_path / "curves.png"))


@pytest.mark.parametrize(
    ("content", "error", "match"),
    [("epoch,train_loss\n", ValueError, "no rows"), (None, FileNotFoundError, "not found")],
)
def test_learning_curves_bad_csv(tmp_path, content, error, match):
    csv_path = tmp_path / "metrics.csv"
    if content is not None:
        csv_path.write_text(content)
    with pytest.raises(error, match=match):
        plots.plot_learning_curves(csv_path, tmp_path / "curves.png")


def test_confusion_matrix_requires_all_counts(tmp_path):
    with pytest.raises(ValueError, match="fn"):
        plots.plot_confusion_matrix({"tp": 1, "fp": 1, "tn": 1}, tmp_path / "cm.png")


def test_markdown_has_metric_names_and_intervals(metrics):
    text = metrics_markdown(metrics)
    for label in ("Accuracy", "Sensitivity", "Specificity", "Precision", "NPV", "F1", "ROC AUC",
                  "Average precision", "Brier", "ECE", "False negatives"):  # fmt: skip
        assert label in text
    sens = metrics["at_threshold"]["sensitivity"]
    expected = (
        f"{100 * sens['value']:.1f}% [{100 * sens['ci_low']:.1f}%, {100 * sens['ci_high']:.1f}%]"
    )
    assert expected in text
    auc = metrics["roc_auc"]
    assert f"{auc['value']:.3f} [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}]" in text
    assert "95% CI" in text
    assert str(metrics["at_0.5"]["confusion"]["fn"]) in text
    # a Markdown table: header separator and equal column counts per table row
    table = [line for line in text.splitlines() if line.startswith("| Metric")]
    assert table and table[0].count("|") == 4


def test_markdown_shows_undefined_as_na(scores):
    labels, probs = scores
    result = evaluate_predictions(labels, np.minimum(probs, 0.99), 1.0, "fixed", n_resamples=20)
    assert "| Precision (PPV) | n/a |" in metrics_markdown(result)


@pytest.fixture(scope="module")
def plot_files(tmp_path_factory, scores, metrics) -> dict[str, Path]:
    labels, probs = scores
    folder = tmp_path_factory.mktemp("plots")
    return {
        "ROC curve": plots.plot_roc(labels, probs, 0.42, folder / "roc.png"),
        "Confusion <matrix>": plots.plot_confusion_matrix(
            metrics["at_threshold"]["confusion"], folder / "cm.png"
        ),
    }


def _write_report(tmp_path: Path, metrics: dict, plot_files: dict, **overrides) -> Path:
    kwargs = {
        "title": "Test report <v1>",
        "metrics": metrics,
        "plots": plot_files,
        "data_counts": {
            "train": {"NORMAL": 1100, "PNEUMONIA": 3300},
            "test": {"NORMAL": 234, "PNEUMONIA": 390},
        },
        "protocol": {
            "Split": "patient-level <GroupShuffleSplit> & duplicates kept together",
            "Test set": "untouched until the final evaluation",
        },
        "extra_sections": {"Grad-CAM sanity": "<p>randomised-weights check: <b>passed</b></p>"},
    }
    kwargs.update(overrides)
    return write_html_report(tmp_path / "out" / "report.html", **kwargs)


def test_html_report_is_self_contained(tmp_path, metrics, plot_files):
    path = _write_report(tmp_path, metrics, plot_files)
    document = path.read_text(encoding="utf-8")
    for png in plot_files.values():
        encoded = base64.b64encode(png.read_bytes()).decode("ascii")
        assert f"data:image/png;base64,{encoded}" in document
    assert not re.search(r"https?://", document)
    assert not re.search(r"<link\b|<script\b", document, re.IGNORECASE)
    assert "<style>" in document


def test_html_report_sections_and_escaping(tmp_path, metrics, plot_files):
    document = _write_report(tmp_path, metrics, plot_files).read_text(encoding="utf-8")
    for heading in ("Data", "Protocol", "Metrics", "Plots", "Grad-CAM sanity"):
        assert f"<h2>{heading}</h2>" in document
    assert "&lt;GroupShuffleSplit&gt; &amp; duplicates" in document
    assert "<title>Test report &lt;v1&gt;</title>" in document
    assert "Confusion &lt;matrix&gt;" in document
    assert "<b>passed</b>" in document  # extra sections are HTML snippets, kept as given
    assert "<td>3300</td>" in document and "<td>390</td>" in document
    auc = metrics["roc_auc"]
    assert f"{auc['value']:.3f} [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}]" in document


@pytest.mark.parametrize(
    "snippet",
    ['<img src="https://example.org/x.png">', "<script src='//cdn.example/x.js'></script>"],
)
def test_html_report_refuses_external_resources(tmp_path, metrics, plot_files, snippet):
    with pytest.raises(ValueError, match="external resource"):
        _write_report(tmp_path, metrics, plot_files, extra_sections={"Bad": snippet})


def test_html_report_missing_plot(tmp_path, metrics, plot_files):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        _write_report(tmp_path, metrics, plot_files, plots={"ROC": tmp_path / "missing.png"})


def test_html_report_flat_data_counts(tmp_path, metrics, plot_files):
    path = _write_report(tmp_path, metrics, plot_files, data_counts={"test images": 624})
    assert "<td>test images</td><td>624</td>" in path.read_text(encoding="utf-8")
