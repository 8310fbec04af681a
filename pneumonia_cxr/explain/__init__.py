"""Grad-CAM heatmaps, overlays and their sanity checks.

Only constants live here, so the CLI can offer them as choices without importing torch.
"""

CAM_METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "hirescam", "eigencam")
"""Method names accepted by `gradcam.compute_cams`, in the order we recommend trying them."""

EXPLAIN_IMAGES_IN_EVALUATE = 8
"""Images per heatmap sanity check inside `evaluate` (0 skips the checks): a cheap figure;
`explain-check` runs more."""
