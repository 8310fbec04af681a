"""One path from a model file (.pt or .onnx) to probabilities, decisions and OOD flags.

Only constants live here, so the CLI can offer them as choices without importing torch.
"""

ENGINES: tuple[str, ...] = ("auto", "torch", "onnx")
"""`Predictor.open` engines: auto (ONNX Runtime on CPU, PyTorch on GPU or for Grad-CAM)."""
