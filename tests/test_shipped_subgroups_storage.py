"""The shipped-model guard, subgroup sensitivities, atomic writes, and the demo's run folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pneumonia_cxr.data.discovery import ImageRecord
from pneumonia_cxr.data.split import file_sha256
from pneumonia_cxr.demo import _run_name
from pneumonia_cxr.errors import ModelFileError
from pneumonia_cxr.evaluation.metrics import subgroup_sensitivity
from pneumonia_cxr.model import shipped
from pneumonia_cxr.storage import atomic_write, atomic_write_text


def test_shipped_model_is_checked_against_its_pinned_sha256(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / shipped.SHIPPED_MODEL_FILE
    model.write_bytes(b"weights")
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(shipped, "SHIPPED_MODEL_SHA256", file_sha256(model))
    assert shipped.default_model_path() == model
    model.write_bytes(b"weights, replaced")
    with pytest.raises(ModelFileError, match="sha256"):
        shipped.default_model_path()
    model.unlink()
    with pytest.raises(ModelFileError, match="missing"):
        shipped.default_model_path()


def test_subgroup_sensitivity_per_pneumonia_type_with_wilson_intervals() -> None:
    names = ["person1_bacteria_1", "person2_bacteria_2", "person3_virus_3", "IM-0001-0001"]
    records = [
        ImageRecord(Path(f"{n}.jpeg"), "test", 0 if n.startswith("IM") else 1) for n in names
    ]
    labels = np.array([r.label for r in records])
    result = subgroup_sensitivity(records, labels, np.array([1, 0, 1, 1]))
    assert set(result) == {"bacteria", "virus"}
    assert result["bacteria"]["n"] == 2 and result["bacteria"]["sensitivity"]["value"] == 0.5
    low, high = result["virus"]["sensitivity"]["ci_low"], result["virus"]["sensitivity"]["ci_high"]
    assert 0.0 < low < 1.0 and high == pytest.approx(1.0)  # Wilson: 1/1 is not certainty
    assert subgroup_sensitivity(records[3:], labels[3:], np.array([1])) == {}


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "metrics.json", "old")

    def half_then_crash(handle) -> None:
        handle.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_crash)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_demo_never_deletes_a_previous_run_unless_asked(tmp_path: Path) -> None:
    assert _run_name(tmp_path, overwrite=False) == "demo"
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "model.pt").write_text("x")
    assert _run_name(tmp_path, overwrite=False).startswith("demo-")
    assert (tmp_path / "demo" / "model.pt").exists()
    assert _run_name(tmp_path, overwrite=True) == "demo" and not (tmp_path / "demo").exists()


def test_predict_uses_the_shipped_model_by_default(
    tiny_synthetic: Path, capsys: pytest.CaptureFixture
) -> None:
    from pneumonia_cxr.cli import main

    image = next((tiny_synthetic / "test" / "PNEUMONIA").iterdir())
    assert main(["predict", str(image), "--engine", "torch", "--no_progress"]) == 0
    out, err = capsys.readouterr()
    assert "shipped with pneumonia-cxr" in err and shipped.SHIPPED_MODEL_FILE in err
    header = "path,state,probability,label,p_viral,pneumonia_type,out_of_distribution,reason,"
    assert out.splitlines()[0].startswith(header)


@pytest.mark.slow
@pytest.mark.realdata
def test_shipped_model_reproduces_the_committed_test_confusion(
    real_data_root: Path, tmp_path: Path
) -> None:
    """`pneumonia-cxr evaluate --dataset_path ...` on a fresh clone: the same counts."""
    import json

    from pneumonia_cxr.evaluation.evaluate import evaluate_model

    committed = json.loads(
        (Path(__file__).parents[1] / "results/kermany_test/metrics.json").read_text()
    )
    result = evaluate_model(
        None, real_data_root, output_dir=tmp_path, n_resamples=50, explain_images=0
    )
    at = result.metrics["at_threshold"]
    assert at["confusion"] == committed["at_threshold"]["confusion"]
    assert result.metrics["ood"]["n_flagged"] == committed["ood"]["n_flagged"]
