"""ONNX export: ONNX Runtime must give PyTorch's numbers and carry the model file's metadata."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pneumonia_cxr import export as export_module
from pneumonia_cxr.config import Preprocessing
from pneumonia_cxr.data.loader import load_xray
from pneumonia_cxr.data.transforms import build_transforms
from pneumonia_cxr.errors import ModelFileError
from pneumonia_cxr.export import METADATA_KEY, export_onnx
from pneumonia_cxr.inference.engines import OnnxEngine, OpenVinoEngine, cached_onnx_engine
from pneumonia_cxr.inference.predictor import Predictor
from pneumonia_cxr.model.classifier import PneumoniaNet
from pneumonia_cxr.model.model_file import ModelBundle, load_model, save_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SIZE = 64
TOLERANCE = 1e-4


def _tiny_bundle(seed: int = 0) -> ModelBundle:
    """ResNet-18 at 64 px with non-trivial BatchNorm statistics, so folding them must be right."""
    torch.manual_seed(seed)
    model = PneumoniaNet("resnet18", weights="none")
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return ModelBundle(
        model=model.eval(),
        preprocessing=Preprocessing(image_size=SIZE),
        threshold=0.37,
        threshold_rule="max_specificity_at_sensitivity",
        temperature=1.6,
        data_fingerprint="abc123",
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelBundle, Path]:
    """A tiny model saved with save_model, reloaded, and exported once for the module."""
    folder = tmp_path_factory.mktemp("export")
    bundle = load_model(save_model(_tiny_bundle(), folder / "tiny.pt"))
    return bundle, export_onnx(bundle, folder / "tiny.onnx")


def _torch_outputs(bundle: ModelBundle, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        logits = bundle.model.eval()(images)[:, 0]
    return logits.numpy(), bundle.probabilities(logits).numpy()


RUNTIMES = {"onnxruntime": OnnxEngine, "openvino": OpenVinoEngine}


@pytest.mark.parametrize("runtime", list(RUNTIMES))
@pytest.mark.parametrize("batch", [1, 5])
def test_exported_graph_matches_pytorch_for_any_batch_size(
    exported, batch: int, runtime: str
) -> None:
    bundle, path = exported
    images = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))
    logits, probabilities = RUNTIMES[runtime](path).run(images)
    expected_logits, expected_probabilities = _torch_outputs(bundle, images)
    assert logits.shape == probabilities.shape == (batch,)
    np.testing.assert_allclose(logits, expected_logits, atol=TOLERANCE, rtol=0)
    # The temperature (1.6) is applied in the graph exactly as ModelBundle.probabilities does.
    np.testing.assert_allclose(probabilities, expected_probabilities, atol=TOLERANCE, rtol=0)


def test_numpy_and_channels_last_inputs_give_the_same_logits(exported) -> None:
    _, path = exported
    predictor = OnnxEngine(path, num_threads=1)
    images = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    reference = predictor.logits(images)
    np.testing.assert_array_equal(predictor.logits(images.numpy()), reference)
    channels_last = images.contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(predictor.logits(channels_last), reference)


def test_metadata_round_trips(exported) -> None:
    bundle, path = exported
    predictor = Predictor.open(path).engine
    assert isinstance(predictor, OnnxEngine)
    assert predictor.preprocessing == bundle.preprocessing
    assert predictor.decision == bundle.decision  # the one record, through the ONNX metadata
    assert predictor.decision.threshold == bundle.threshold != 0.5
    assert predictor.backbone_name == "resnet18"
    assert predictor.fingerprint() == bundle.fingerprint()
    assert predictor.metadata["data_fingerprint"] == "abc123"


def test_predictor_opens_a_pt_file_with_the_torch_engine(exported) -> None:
    bundle, path = exported
    pt = save_model(bundle, path.with_name("again.pt"))
    assert isinstance(Predictor.open(pt, engine="torch").bundle, ModelBundle)


def test_export_leaves_the_callers_model_untouched(tmp_path: Path) -> None:
    bundle = _tiny_bundle(seed=1)
    bundle.model.train()
    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    export_onnx(bundle, tmp_path / "m.onnx")
    assert bundle.model.training
    after = bundle.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_export_refuses_a_name_predict_would_not_recognize(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.onnx"):
        export_onnx(_tiny_bundle(), tmp_path / "model.pt")
    assert not list(tmp_path.iterdir())


def test_wrong_input_shape_is_a_clear_error(exported) -> None:
    _, path = exported
    with pytest.raises(ValueError, match=r"\(N, 3, 64, 64\)"):
        OnnxEngine(path).logits(torch.zeros(2, 3, SIZE + 1, SIZE + 1))


def _foreign_onnx(path: Path) -> None:
    """A valid ONNX graph (identity) without our metadata, as another program would write it."""
    import onnx
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [value], [out])
    onnx.save(helper.make_model(graph), str(path))


def _damage(kind: str, good: Path, target: Path) -> None:
    if kind == "truncated":
        target.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "random_bytes":
        target.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "empty":
        target.write_bytes(b"")
    elif kind == "foreign":
        _foreign_onnx(target)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("truncated", "not a readable ONNX model"),
        ("random_bytes", "not a readable ONNX model"),
        ("empty", "not a readable ONNX model"),
        ("foreign", "without pneumonia-cxr metadata"),
        ("missing", "not found"),
    ],
)
def test_bad_onnx_files_raise_model_file_error_naming_the_file(
    exported, tmp_path: Path, kind: str, message: str
) -> None:
    _, good = exported
    target = tmp_path / f"{kind}.onnx"
    _damage(kind, good, target)
    with pytest.raises(ModelFileError, match=message) as caught:
        Predictor.open(target)
    assert str(target) in str(caught.value)


def test_openvino_names_a_bad_file_and_auto_falls_back(exported, tmp_path: Path) -> None:
    _, good = exported
    target = tmp_path / "truncated.onnx"
    _damage("truncated", good, target)
    with pytest.raises(ModelFileError, match="OpenVINO cannot read") as caught:
        Predictor.open(target, engine="openvino")
    assert str(target) in str(caught.value)


def test_auto_prefers_openvino_float32_on_cpu_and_falls_back_to_onnx_runtime(
    exported, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, path = exported
    pt = path.with_suffix(".pt")
    engine = Predictor.open(pt, device="cpu").engine
    assert isinstance(engine, OpenVinoEngine) and engine.precision == "f32"
    monkeypatch.setitem(sys.modules, "openvino", None)  # not installed
    fallback = Predictor.open(pt, device="cpu").engine
    assert type(fallback) is OnnxEngine
    assert type(Predictor.open(path).engine) is OnnxEngine
    with pytest.raises(ImportError, match="openvino"):
        Predictor.open(pt, engine="openvino", device="cpu")


def test_reduced_precision_is_never_the_default(exported) -> None:
    _, path = exported
    assert OpenVinoEngine(path).precision == "f32"
    with pytest.raises(ValueError, match="precision"):
        OpenVinoEngine(path, precision="f16")


def test_metadata_is_stored_under_one_json_key(exported) -> None:
    import onnx

    _, path = exported
    proto = onnx.load(str(path), load_external_data=False)
    assert [entry.key for entry in proto.metadata_props] == [METADATA_KEY]
    assert [node.name for node in proto.graph.input] == ["image"]
    # (a one-network model with the reference head carries its Grad-CAM map too)
    outputs = ["logit", "probability", "ood_score", "cam"]
    assert [node.name for node in proto.graph.output] == outputs


def test_missing_onnx_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` raise ImportError
    with pytest.raises(ImportError, match=r"pneumonia-cxr\[full\]"):
        export_onnx(_tiny_bundle(), tmp_path / "m.onnx")


def test_cached_predictor_exports_once_per_model_and_metadata(
    exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle, _ = exported
    calls: list[Path] = []

    def counting_export(b: ModelBundle, path: Path, **kwargs) -> Path:
        calls.append(Path(path))
        return export_onnx(b, path, **kwargs)

    monkeypatch.setattr(export_module, "export_onnx", counting_export)
    first = cached_onnx_engine(bundle, tmp_path)
    again = cached_onnx_engine(bundle, tmp_path)
    assert len(calls) == 1 and first.path == again.path
    # Recalibrated: same weights, new threshold; the stale export must not be reused.
    recalibrated = cached_onnx_engine(dataclasses.replace(bundle, threshold=0.61), tmp_path)
    assert len(calls) == 2 and recalibrated.path != first.path
    assert recalibrated.decision.threshold == pytest.approx(0.61)


def test_cached_predictor_replaces_a_damaged_cache_entry(exported, tmp_path: Path) -> None:
    bundle, _ = exported
    path = cached_onnx_engine(bundle, tmp_path).path
    path.write_bytes(b"half a file")
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    logits = cached_onnx_engine(bundle, tmp_path).logits(images)
    np.testing.assert_allclose(logits, _torch_outputs(bundle, images)[0], atol=TOLERANCE, rtol=0)


@pytest.mark.realdata
def test_outputs_match_pytorch_on_32_real_images(exported, real_data_root: Path) -> None:
    bundle, path = exported
    files = [
        sorted((real_data_root / "test" / name).glob("*.jpeg"))[:16]
        for name in ("NORMAL", "PNEUMONIA")
    ]
    transform = build_transforms(bundle.preprocessing)
    images = torch.stack([transform(load_xray(f)) for f in files[0] + files[1]])
    assert images.shape == (32, 3, SIZE, SIZE)
    logits, probabilities = OnnxEngine(path).run(images)
    expected_logits, expected_probabilities = _torch_outputs(bundle, images)
    np.testing.assert_allclose(logits, expected_logits, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(probabilities, expected_probabilities, atol=TOLERANCE, rtol=0)
