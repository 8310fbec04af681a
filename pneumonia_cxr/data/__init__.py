"""Dataset discovery, patient-level splits, the one image loader, transforms, synthetic data.

Only constants live here, so the CLI can offer them as choices without importing torch.
"""

SPLITS: tuple[str, str, str] = ("train", "val", "test")
"""The official splits, each with NORMAL/ and PNEUMONIA/ class folders."""
