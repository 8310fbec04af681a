"""One path from a model file (.pt or .onnx) to probabilities, decisions and OOD flags.

Only constants live here, so the CLI can offer them as choices without importing torch.
"""

ENGINES: tuple[str, ...] = ("auto", "torch", "onnx", "openvino")
"""`Predictor.open` engines: auto (on CPU the first of `AUTO_CPU_ENGINES` that opens; PyTorch
on a GPU or for Grad-CAM), torch, onnx (ONNX Runtime), openvino (OpenVINO, float32)."""

AUTO_CPU_ENGINES: tuple[str, ...] = ("openvino", "onnx")
"""What "auto" tries on CPU, in order. OpenVINO float32 gives the labels of PyTorch float32 and
is the fastest here (benchmarks/inference_throughput.py); ONNX Runtime is the fallback."""
