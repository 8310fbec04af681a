"""One path from a model file (.pt or .onnx) to probabilities, decisions and OOD flags."""
