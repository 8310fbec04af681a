"""The shortcut audit: which pixels each view keeps, and the audit inside `evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_runs import train_tiny_model

from pneumonia_cxr.evaluation.audit import FRAME, LUNG_BOX, VIEWS, edit
from pneumonia_cxr.evaluation.evaluate import evaluate_model


def _image() -> torch.Tensor:
    return torch.arange(100 * 80, dtype=torch.int64).reshape(1, 100, 80).remainder(251).byte()


def test_each_view_keeps_its_region_and_fills_the_rest_with_the_images_mean() -> None:
    gray = _image()
    fill = round(float(gray.float().mean()))
    top, left = round(FRAME * 100), round(FRAME * 80)
    bottom, right = round((1 - FRAME) * 100), round((1 - FRAME) * 80)
    centre = (slice(None), slice(top, bottom), slice(left, right))
    frame_only = edit("frame_only", gray)
    assert (frame_only[centre] == fill).all()
    assert torch.equal(frame_only[:, :top], gray[:, :top])  # the frame itself is untouched
    neutral = edit("frame_neutralised", gray)
    assert torch.equal(neutral[centre], gray[centre])
    assert (neutral[:, :top] == fill).all() and (neutral[:, :, right:] == fill).all()
    lung = edit("lung_region_only", gray)
    t, lo, b, r = (round(v * n) for v, n in zip(LUNG_BOX, (100, 80, 100, 80), strict=True))
    assert torch.equal(lung[:, t:b, lo:r], gray[:, t:b, lo:r])
    assert (lung[:, :t] == fill).all() and (lung[:, b:] == fill).all()
    assert frame_only.dtype == torch.uint8 and frame_only.shape == gray.shape
    with pytest.raises(ValueError, match="unknown view"):
        edit("lungs", gray)


def test_evaluate_with_audit_writes_every_view_the_energy_and_the_report(
    tiny_synthetic: Path, tmp_path: Path
) -> None:
    model = train_tiny_model(tiny_synthetic, tmp_path / "run")
    result = evaluate_model(
        model,
        tiny_synthetic,
        output_dir=tmp_path / "eval",
        n_resamples=20,
        explain_images=0,
        audit=True,
    )
    audit = json.loads((tmp_path / "eval" / "metrics.json").read_text())["audit"]
    assert set(audit["views"]) == set(VIEWS)
    for view in audit["views"].values():
        assert view["n"] == result.metrics["n"]
        auc = view["roc_auc"]
        assert auc["ci_low"] <= auc["value"] <= auc["ci_high"]  # a measured view, with its CI
    energy = audit["gradcam_frame_energy"]
    assert 0.4 < energy["uniform_map_share"] < 0.6
    assert set(energy["per_class"]) == {"NORMAL", "PNEUMONIA"}
    report = (tmp_path / "eval" / "report.html").read_text()
    assert "Shortcut audit" in report and "frame only" in report
    assert (tmp_path / "eval" / "shortcut_audit.png").stat().st_size > 5_000
