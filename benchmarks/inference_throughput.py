"""Inference images/s of one model on this CPU, every technique side by side in one run.

Variants, each timed in its own fresh process (so peak memory is its own, and one variant's
thread pools or compiled kernels cannot help the next):

- eager          PyTorch eager fp32, NCHW: the baseline, what reference-style code gets.
- channels_last  the same model and input in channels_last memory format.
- jit_freeze     torch.jit.trace + freeze + optimize_for_inference (conv-BN folding, oneDNN).
- compile        torch.compile (inductor, freezing on); compile time is reported, not timed.
- ort_basic      ONNX Runtime fp32, basic graph optimizations only.
- ort_all        ONNX Runtime fp32, all optimizations: `pneumonia_cxr.inference.engines.OnnxEngine`.
- ort_int8       ONNX Runtime static int8 (QDQ, per-channel weights, convolutions only),
                 calibrated on training-split images, never on the benchmark images.
- ov_f32         OpenVINO fp32 on the same .onnx: `pneumonia_cxr.inference.engines.OpenVinoEngine`.
- ov_bf16        OpenVINO bfloat16 (its own default on CPUs with bf16 units, AMX/AVX512-BF16):
                 reduced precision, only used when asked for; the table shows its label agreement.
- gradcam        Grad-CAM images/s (`model_cams`: the model's own target layers, batch 16).

The timed batches are real test-split images (load_xray + the model's own transforms), so the
label check uses the very outputs that were timed. Only the model is timed, not decoding.
Without --model_path an untrained ResNet-50 is used (speed does not depend on the weights); its
probabilities barely differ between images, so its threshold is set to the median baseline
probability: half the images sit close to the boundary, the strictest label check there is.

Run: `.venv/bin/python benchmarks/inference_throughput.py [--model_path M] [--repeats 3]
[--variants eager ort_all ...]`. Timings are medians over --repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pneumonia_cxr.config import Preprocessing
from pneumonia_cxr.data.transforms import build_transforms
from pneumonia_cxr.export import export_onnx
from pneumonia_cxr.inference.engines import available_cpus
from pneumonia_cxr.inference.predictor import load_input
from pneumonia_cxr.model.classifier import PneumoniaNet
from pneumonia_cxr.model.decision import decide
from pneumonia_cxr.model.model_file import ModelBundle, load_model, save_model

Runner = Callable[[torch.Tensor], np.ndarray]
"""Normalized NCHW float32 batch -> logits (N,)."""

VARIANTS: tuple[str, ...] = (
    "eager",
    "channels_last",
    "jit_freeze",
    "compile",
    "ort_basic",
    "ort_all",
    "ort_int8",
    "ov_f32",
    "ov_bf16",
)
BASELINE = "eager"
REDUCED_PRECISION = ("ort_int8", "ov_bf16")
GOAL_SPEEDUP = 3.0
"""Issue 5: the default predict path at batch 32 at least 3x the baseline's images/s."""
LABELS = {
    "eager": "PyTorch eager fp32 NCHW (baseline)",
    "channels_last": "PyTorch eager fp32 channels_last",
    "jit_freeze": "TorchScript trace+freeze+optimize_for_inference",
    "compile": "torch.compile (inductor, freezing)",
    "ort_basic": "ONNX Runtime fp32, basic graph opts",
    "ort_all": "ONNX Runtime fp32, all graph opts",
    "ort_int8": "ONNX Runtime int8 static (QDQ, per-channel)",
    "ov_f32": "OpenVINO fp32",
    "ov_bf16": "OpenVINO bf16 (reduced precision)",
}


# --- the workers: one variant per process ---------------------------------------------------


def _torch_runner(model: torch.nn.Module, channels_last: bool) -> Runner:
    def run(batch: torch.Tensor) -> np.ndarray:
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return model(batch)[:, 0].float().numpy()

    return run


def _jit_freeze(model: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still works
        traced = torch.jit.trace(model, example)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


def _compiled(model: torch.nn.Module) -> torch.nn.Module:
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # fold weights as constants: conv-BN folding, prepacking
    return torch.compile(model.to(memory_format=torch.channels_last), dynamic=False)


def _ort_runner(path: Path, level: str, threads: int) -> Runner:
    import onnxruntime as ort

    from pneumonia_cxr.export import INPUT_NAME, LOGIT_OUTPUT
    from pneumonia_cxr.inference.engines import OnnxEngine

    if level == "all":
        return OnnxEngine(path, num_threads=threads).logits
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(batch: torch.Tensor) -> np.ndarray:
        feed = {INPUT_NAME: batch.contiguous().numpy()}
        return session.run([LOGIT_OUTPUT], feed)[0].reshape(-1)

    return run


def _build_runner(variant: str, work: Path, threads: int) -> Runner:
    if variant.startswith("ov_"):
        from pneumonia_cxr.inference.engines import OpenVinoEngine

        precision = variant.removeprefix("ov_")
        return OpenVinoEngine(work / "model.onnx", num_threads=threads, precision=precision).logits
    if variant.startswith("ort_"):
        name = "model_int8.onnx" if variant == "ort_int8" else "model.onnx"
        return _ort_runner(work / name, "basic" if variant == "ort_basic" else "all", threads)
    model = load_model(work / "model.pt").model.eval()
    if variant == "eager":
        return _torch_runner(model, channels_last=False)
    if variant == "channels_last":
        return _torch_runner(model.to(memory_format=torch.channels_last), channels_last=True)
    if variant == "jit_freeze":
        example = torch.load(work / "images.pt")[:1]
        return _torch_runner(_jit_freeze(model, example), channels_last=False)
    if variant == "compile":
        return _torch_runner(_compiled(model), channels_last=True)
    raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


def _rate(run: Runner, batches: list[torch.Tensor]) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    outputs = [run(batch) for batch in batches]
    elapsed = time.perf_counter() - started
    return sum(len(b) for b in batches) / elapsed, np.concatenate(outputs)


def _time_variant(run: Runner, images: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    """Median images/s at batch 1 and 32 after one warm-up pass per shape; logits of the last."""
    result: dict[str, Any] = {}
    single = [images[i : i + 1] for i in range(min(args.batch1_images, len(images)))]
    full = [images[i : i + 32] for i in range(0, len(images), 32)]
    for name, batches in (("batch1", single), ("batch32", full)):
        started = time.perf_counter()
        run(batches[0])  # warm-up: oneDNN primitive creation, compilation, arena growth
        result[f"{name}_warmup_s"] = time.perf_counter() - started
        rates = []
        for _ in range(args.repeats):
            rate, logits = _rate(run, batches)
            rates.append(rate)
        result[f"{name}_rates"] = rates
        result[name] = statistics.median(rates)
    result["logits"] = logits.tolist()
    return result


def _gradcam_rate(work: Path, images: torch.Tensor, repeats: int) -> dict[str, Any]:
    from pneumonia_cxr.explain.gradcam import model_cams

    model = load_model(work / "model.pt").model.eval()
    batch = images[:16]
    model_cams(model, batch[:2], batch_size=16)  # warm-up
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        model_cams(model, batch, batch_size=16)
        rates.append(len(batch) / (time.perf_counter() - started))
    return {"batch16": statistics.median(rates), "batch16_rates": rates}


def _peak_rss_mb() -> float:
    """This process's own peak resident memory.

    Not `getrusage().ru_maxrss`: Linux carries it across fork+exec, so every worker would
    report at least the parent's peak. VmHWM belongs to the process's own address space.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> None:
    """Time one variant and write its JSON; runs in a fresh process started by `main`."""
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    images = torch.load(work / "images.pt")
    started = time.perf_counter()
    if args.worker == "gradcam":
        result = _gradcam_rate(work, images, args.repeats)
    else:
        run = _build_runner(args.worker, work, args.threads)
        result = {"setup_s": time.perf_counter() - started}
        result |= _time_variant(run, images, args)
    result["peak_rss_mb"] = _peak_rss_mb()
    (work / f"{args.worker}.json").write_text(json.dumps(result))


# --- the parent: data, model files, and the table ---------------------------------------------


def _real_images(root: Path, split: str, n: int) -> list[Path]:
    """n images, half NORMAL and half PNEUMONIA, first by name: the same every run."""
    per_class = [sorted((root / split / c).glob("*.jpeg")) for c in ("NORMAL", "PNEUMONIA")]
    if not all(per_class):
        raise SystemExit(f"{root / split}: no NORMAL/PNEUMONIA JPEGs; pass --data")
    half = n // 2
    return per_class[0][:half] + per_class[1][: n - half]


def _load_tensor(paths: list[Path], preprocessing: Preprocessing) -> torch.Tensor:
    transform = build_transforms(preprocessing)
    size = preprocessing.image_size
    return torch.from_numpy(
        np.stack([load_input(p, transform, size, keep_original=True)[0] for p in paths])
    )


def _bundle(args: argparse.Namespace) -> ModelBundle:
    if args.model_path:
        return load_model(args.model_path)
    torch.manual_seed(0)
    model = PneumoniaNet("resnet50", weights="none").eval()
    return ModelBundle(model=model, preprocessing=Preprocessing(image_size=224))


def _quantize_int8(fp32: Path, target: Path, calibration: torch.Tensor) -> float:
    """Static int8 of the convolutions; the head and the sigmoid stay fp32 (tiny, and a
    quantized probability would have only 256 levels). Returns seconds spent."""
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                [{"image": calibration[i : i + 8].numpy()} for i in range(0, len(calibration), 8)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    started = time.perf_counter()
    prepared = target.with_name("model_prepared.onnx")
    # ONNX Runtime's symbolic shape inference cannot follow an ensemble's graph ("Incomplete
    # symbolic shape inference"); ONNX's own shape inference is enough for Conv-only
    # quantization. Both steps may write scratch files into the working folder: keep them in
    # the benchmark's temporary folder, not wherever the user ran it.
    with contextlib.chdir(target.parent):
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        _quantize(prepared, target, Reader())
    return time.perf_counter() - started


def _quantize(prepared: Path, target: Path, reader: Any) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(
        str(prepared),
        str(target),
        reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv"],
        per_channel=True,
        # No AVX-512 VNNI: u8*s8 products can saturate int16 on AVX2, so use 7-bit weights.
        reduce_range=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = next(
            line
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        ).split()
        isa = [
            f
            for f in (
                "avx2",
                "fma",
                "avx512f",
                "avx512_vnni",
                "avx512_bf16",
                "avx_vnni",
                "amx_bf16",
            )
            if f in flags
        ]
    except (OSError, StopIteration):
        isa = []
    import onnxruntime

    return (
        f"{cpu} ({', '.join(isa) or 'ISA unknown'}), {available_cpus()} cores usable, "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}"
    )


def _spawn(variant: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--worker",
        variant,
        "--work",
        str(work),
        "--threads",
        str(args.threads),
        "--repeats",
        str(args.repeats),
        "--batch1_images",
        str(args.batch1_images),
    ]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.variant_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.variant_timeout} s"}
    output = work / f"{variant}.json"
    if done.returncode != 0 or not output.is_file():
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {done.returncode}: {tail[:160]}"}
    result = json.loads(output.read_text())
    result["wall_s"] = time.perf_counter() - started
    return result


def _prepare(args: argparse.Namespace, work: Path) -> ModelBundle:
    bundle = _bundle(args)
    save_model(bundle, work / "model.pt")
    images = _load_tensor(_real_images(args.data, "test", args.images), bundle.preprocessing)
    torch.save(images, work / "images.pt")
    started = time.perf_counter()
    export_onnx(bundle, work / "model.onnx")
    print(f"ONNX export: {time.perf_counter() - started:.1f} s")
    if "ort_int8" in args.variants:
        calibration = _load_tensor(
            _real_images(args.data, "train", args.calibration_images), bundle.preprocessing
        )
        seconds = _quantize_int8(work / "model.onnx", work / "model_int8.onnx", calibration)
        n = len(calibration)
        print(f"int8 quantization ({n} train-split calibration images): {seconds:.1f} s")
    return bundle


def _agreement(results: dict[str, dict[str, Any]], bundle: ModelBundle, stress: bool) -> float:
    """Fill label agreement and max |Δprobability| against the baseline; return the threshold."""
    base = torch.tensor(results[BASELINE]["logits"])
    base_p = bundle.probabilities(base).numpy()
    threshold = float(np.median(base_p)) if stress else float(bundle.threshold)
    base_labels = decide(base_p, threshold)
    margin = float(np.min(np.abs(base_p - threshold)))
    rule = "median baseline probability, untrained model" if stress else bundle.threshold_rule
    print(
        f"threshold {threshold:.6g} ({rule}); "
        f"closest baseline probability is {margin:.2e} from it; "
        f"probabilities range {base_p.min():.4f}..{base_p.max():.4f}"
    )
    for result in results.values():
        if "logits" in result:
            p = bundle.probabilities(torch.tensor(result["logits"])).numpy()
            result["agree"] = int(np.sum(decide(p, threshold) == base_labels))
            result["max_dp"] = float(np.max(np.abs(p - base_p)))
    return threshold


def _setup_s(result: dict[str, Any]) -> float:
    """Build time plus both warm-up passes: where torch.compile spends its compile time."""
    return sum(result.get(k, 0.0) for k in ("setup_s", "batch1_warmup_s", "batch32_warmup_s"))


def _table(results: dict[str, dict[str, Any]], n_images: int) -> str:
    base = results[BASELINE]
    rows = [
        "| variant | batch 1 img/s | batch 32 img/s | × baseline (b32) | setup s | peak RSS MB | "
        f"labels = baseline ({n_images} imgs) | max abs Δp |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for variant in VARIANTS:
        r = results.get(variant)
        if r is None:
            continue
        if "error" in r:
            rows.append(f"| {LABELS[variant]} | failed: {r['error']} | | | | | | |")
            continue
        rows.append(
            f"| {LABELS[variant]} | {r['batch1']:.2f} | {r['batch32']:.2f} | "
            f"{r['batch32'] / base['batch32']:.2f}× | {_setup_s(r):.0f} | "
            f"{r['peak_rss_mb']:.0f} | {r['agree']}/{n_images} | {r['max_dp']:.1e} |"
        )
    cam = results.get("gradcam")
    if cam is not None:
        value = cam.get("error") or f"{cam['batch16']:.2f} (batch 16)"
        rows.append(
            f"| Grad-CAM, eager (compute_cams) | | {value} | | | "
            f"{cam.get('peak_rss_mb', float('nan')):.0f} | | |"
        )
    return "\n".join(rows)


def _verdict(results: dict[str, dict[str, Any]], n_images: int) -> str:
    """The fastest full-precision variant at batch 32 whose labels all equal the baseline's,
    against the goal. Reduced precision (int8, bf16) is never a default, whatever its labels
    on these few images: its probabilities move by up to a tenth or more."""
    same = {
        v: r["batch32"]
        for v, r in results.items()
        if "agree" in r and r["agree"] == n_images and v not in REDUCED_PRECISION
    }
    best = max(same, key=same.__getitem__)
    ratio = same[best] / results[BASELINE]["batch32"]
    goal = "meets" if ratio >= GOAL_SPEEDUP else "misses"
    return (
        f"fastest full-precision variant with identical labels at batch 32: {LABELS[best]}, "
        f"{ratio:.2f}x the baseline "
        f"({goal} the {GOAL_SPEEDUP:g}x goal); its probabilities differ from the baseline's "
        f"by up to {results[best]['max_dp']:.1e}"
    )


def main(args: argparse.Namespace) -> None:
    print(f"machine: {_machine()}")
    print(f"threads per variant: {args.threads}; repeats: {args.repeats} (median reported)")
    if BASELINE not in args.variants:
        args.variants = [BASELINE, *args.variants]
    with tempfile.TemporaryDirectory(prefix="inference_bench_") as tmp:
        work = Path(tmp)
        bundle = _prepare(args, work)
        source = args.model_path or "untrained (weights none), seed 0"
        print(
            f"model: {bundle.model.backbone_name} at {bundle.preprocessing.image_size} px, "
            f"{source}; {args.images} test images"
        )
        results: dict[str, dict[str, Any]] = {}
        for variant in [*args.variants, *([] if args.no_gradcam else ["gradcam"])]:
            results[variant] = _spawn(variant, work, args)
            r = results[variant]
            summary = r.get("error") or ", ".join(
                f"{k} {r[k]:.2f}" for k in ("batch1", "batch32", "batch16") if k in r
            )
            print(
                f"  {variant:<14} {summary}  (setup {_setup_s(r):.1f} s, "
                f"process {r.get('wall_s', 0):.0f} s)",
                flush=True,
            )
    if "error" in results[BASELINE]:
        raise SystemExit(f"baseline failed: {results[BASELINE]['error']}")
    _agreement(results, bundle, stress=not args.model_path)
    print()
    print(_table(results, args.images))
    print()
    print(_verdict(results, args.images))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "kermany_224"
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model_path", help="a model file (.pt); default an untrained ResNet-50 at 224"
    )
    parser.add_argument("--data", type=Path, default=shared, help="the kermany_224 folder")
    parser.add_argument("--images", type=int, default=32, help="test images timed at batch 32")
    parser.add_argument(
        "--batch1_images", type=int, default=4, help="images timed one by one per repeat"
    )
    parser.add_argument("--calibration_images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=available_cpus())
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--no_gradcam", action="store_true")
    parser.add_argument("--variant_timeout", type=int, default=600, help="seconds per variant")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.images < 32 or args.images % 32:
        parser.error("--images must be a multiple of 32: a smaller last batch would recompile")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.worker:
        worker(arguments)
    else:
        main(arguments)
