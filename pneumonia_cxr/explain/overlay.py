"""Heatmap overlays and the paper-style Grad-CAM figure (one panel pair per example).

Figures are drawn on a `matplotlib.figure.Figure` directly, never through pyplot, so a
long-running service or a test session accumulates no global figure state.

Importable without PyTorch: the light install draws its heatmaps from the ONNX graph's own
Grad-CAM outputs (`graph_cams`, `graph_overlays`) with numpy and Pillow only; PyTorch,
pytorch-grad-cam and matplotlib are imported by the functions that need them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from pneumonia_cxr import CLASS_NAMES
from pneumonia_cxr.model.decision import decide
from pneumonia_cxr.storage import atomic_write

if TYPE_CHECKING:
    import torch

    from pneumonia_cxr.inference.engines import OnnxEngine
    from pneumonia_cxr.inference.predictor import Predictor

GROUPS: tuple[str, ...] = ("TP", "FP", "TN", "FN")
"""Confusion-matrix groups, in the order figures show them."""


def _as_gray_uint8(gray: np.ndarray | torch.Tensor) -> np.ndarray:
    array = gray.detach().cpu().numpy() if hasattr(gray, "detach") else np.asarray(gray)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"gray must be a (H, W) or (1, H, W) image, got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(
            f"gray must be the original uint8 image, got {array.dtype}: pass the loaded "
            "pixels, not the normalized model input"
        )
    return array


def _resize_cam(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a [0, 1] map to the image size (maps come at model input size)."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f"cam must be a (H, W) map, got shape {cam.shape}")
    if cam.shape != (height, width):
        cam = np.asarray(Image.fromarray(cam).resize((width, height), Image.Resampling.BILINEAR))
    return np.clip(cam, 0.0, 1.0)


def overlay_heatmap(
    gray: np.ndarray | torch.Tensor, cam: np.ndarray, alpha: float = 0.4
) -> np.ndarray:
    """Blend a jet-coloured CAM over the original grayscale X-ray.

    Args:
        gray: the original image, uint8 (H, W) or (1, H, W), any size: the map is resized to
            it, so a heatmap computed at 224 px can be shown on the full-resolution film.
        cam: map in [0, 1], any size.
        alpha: weight of the heatmap (0 = image only, 1 = heatmap only).

    Returns:
        RGB uint8 (H, W, 3).
    """
    from pytorch_grad_cam.utils.image import show_cam_on_image

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    image = _as_gray_uint8(gray)
    mask = _resize_cam(cam, *image.shape)
    rgb = np.repeat((image.astype(np.float32) / 255.0)[..., None], 3, axis=2)
    return show_cam_on_image(rgb, mask, use_rgb=True, image_weight=1.0 - alpha)


def jet(values: np.ndarray) -> np.ndarray:
    """MATLAB's jet, as OpenCV's COLORMAP_JET draws it (piecewise linear: blue at 0, red at 1):
    values in [0, 1] -> RGB uint8, shape (..., 3). The page's `jet` (browser.js) is the same."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., None]
    offsets = np.array([3.0, 2.0, 1.0], dtype=np.float32)  # red, green, blue
    return np.round(255 * np.clip(1.5 - np.abs(4 * v - offsets), 0.0, 1.0)).astype(np.uint8)


def overlay_jet(gray: np.ndarray, cam: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """`overlay_heatmap` with numpy and Pillow only (no PyTorch, no OpenCV): the same jet
    colours and the same blend as pytorch-grad-cam's `show_cam_on_image` (weighted sum, then
    divided by its maximum). RGB uint8 at the original's size."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    image = _as_gray_uint8(gray)
    mask = _resize_cam(cam, *image.shape)
    rgb = np.repeat((image.astype(np.float32) / 255.0)[..., None], 3, axis=2)
    blend = alpha * (jet(mask).astype(np.float32) / 255.0) + (1.0 - alpha) * rgb
    return np.uint8(255 * blend / max(float(blend.max()), 1e-7))


def scale_cams(maps: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """Raw maps (N, h, w) onto [0, 1] each, as pytorch-grad-cam scales its own
    (`scale_cam_image`: minus the minimum, over 1e-7 + the maximum), then resized bilinearly
    to `size` = (width, height) when given. float32 (N, height, width)."""
    scaled = []
    for raw in np.asarray(maps, dtype=np.float32):
        cam = raw - raw.min()
        cam = cam / (1e-7 + cam.max())
        if size is not None and cam.shape[::-1] != tuple(size):
            cam = np.asarray(Image.fromarray(cam, "F").resize(size, Image.Resampling.BILINEAR))
        scaled.append(np.asarray(cam, dtype=np.float32))
    if not scaled:
        return np.zeros((0, *(size[::-1] if size else (0, 0))), dtype=np.float32)
    return np.stack(scaled)


def has_graph_cam(engine: object, target: str = "pneumonia") -> bool:
    """Whether `engine` is an ONNX engine whose graph carries the Grad-CAM map of `target`."""
    from pneumonia_cxr.inference.engines import OnnxEngine
    from pneumonia_cxr.model.outputs import OUTPUTS

    output = {o.name: o for o in OUTPUTS}.get(target)
    return (
        output is not None
        and isinstance(engine, OnnxEngine)
        and output.cam_output in engine.graph_outputs()
    )


def graph_cams(engine: OnnxEngine, inputs: np.ndarray, target: str = "pneumonia") -> np.ndarray:
    """Heatmaps from the ONNX graph's own Grad-CAM outputs (`cam`, `type_cam`: the closed-form
    Grad-CAM of `export.head_gradcam`, which the `web` page draws too), each scaled onto
    [0, 1] and resized to the model's input size: (N, size, size), no PyTorch needed."""
    from pneumonia_cxr.model.outputs import OUTPUTS

    outputs = {o.name: o for o in OUTPUTS}
    if target not in outputs:
        raise ValueError(f"target must be one of {sorted(outputs)}, not {target!r}")
    array = np.asarray(inputs)
    maps = engine.cams(array, outputs[target].cam_output)
    return scale_cams(maps, (array.shape[-1], array.shape[-2]))


def graph_overlays(
    engine: OnnxEngine,
    inputs: np.ndarray,
    originals: Sequence[np.ndarray],
    *,
    target: str = "pneumonia",
) -> list[np.ndarray]:
    """`gradcam_overlays` without PyTorch: the graph's maps (`graph_cams`) drawn on each
    original (`overlay_jet`)."""
    cams = graph_cams(engine, inputs, target)
    return [overlay_jet(original, cam) for original, cam in zip(originals, cams, strict=True)]


def gradcam_overlays(
    predictor: Predictor,
    inputs: torch.Tensor,
    originals: Sequence[np.ndarray | torch.Tensor],
    *,
    method: str = "gradcam",
    target: str = "pneumonia",
) -> list[np.ndarray]:
    """The one overlay path: maps of a batch of model inputs, each drawn on its original image
    (RGB uint8, the original's resolution). predict, the service and evaluate call it."""
    from pneumonia_cxr.explain.gradcam import predictor_cams

    cams = predictor_cams(predictor, inputs, method=method, target=target)
    return [overlay_heatmap(original, cam) for original, cam in zip(originals, cams, strict=True)]


@dataclass
class CamExample:
    """One figure cell: the original image, its map and the model's verdict."""

    image: np.ndarray
    cam: np.ndarray
    label: int
    probability: float
    threshold: float
    title: str | None = None

    @property
    def group(self) -> str:
        """TP/FP/TN/FN; positive prediction when probability >= threshold."""
        predicted = int(decide(self.probability, self.threshold))
        return ("T" if predicted == int(self.label) else "F") + ("P" if predicted else "N")


def pick_examples(
    y_true: Sequence[int] | np.ndarray,
    y_prob: Sequence[float] | np.ndarray,
    threshold: float,
    per_group: int = 2,
    seed: int = 0,
) -> dict[str, list[int]]:
    """Indices of the most confident examples of each confusion-matrix group.

    Most confident first (largest |probability - threshold|), because a figure should show
    what the model is surest of, and its surest mistakes are the ones worth looking at.
    `seed` only breaks ties (a seeded shuffle before a stable sort), so the choice is
    reproducible. A prediction is positive when probability >= threshold. Groups with no
    members get an empty list.
    """
    truth = np.asarray(y_true).astype(int).ravel()
    prob = np.asarray(y_prob, dtype=np.float64).ravel()
    if truth.shape != prob.shape:
        raise ValueError(f"y_true has {truth.size} values but y_prob has {prob.size}")
    if not np.isin(truth, (0, 1)).all():
        raise ValueError(f"y_true must hold 0 ({CLASS_NAMES[0]}) or 1 ({CLASS_NAMES[1]})")
    if per_group < 0:
        raise ValueError(f"per_group must be >= 0, got {per_group}")
    predicted = decide(prob, threshold)
    members = {
        "TP": (truth == 1) & (predicted == 1),
        "FP": (truth == 0) & (predicted == 1),
        "TN": (truth == 0) & (predicted == 0),
        "FN": (truth == 1) & (predicted == 0),
    }
    order = np.random.default_rng(seed).permutation(truth.size)
    order = order[np.argsort(-np.abs(prob[order] - threshold), kind="stable")]
    return {
        group: [int(i) for i in order[mask[order]][:per_group]] for group, mask in members.items()
    }


def _cell_title(example: CamExample) -> str:
    truth = CLASS_NAMES[int(example.label)]
    verdict = f"p={example.probability:.2f} (t={example.threshold:.2f})"
    text = f"{example.group} · true {truth}\n{verdict}"
    return f"{example.title}\n{text}" if example.title else text


def save_gradcam_grid(
    examples: Sequence[CamExample],
    path: str | Path,
    ncols: int = 4,
    title: str = "Grad-CAM",
) -> Path:
    """Write a figure of original + overlay pairs, `ncols` examples per row, as PNG.

    Each pair is titled with its group (TP/FP/TN/FN), true label and probability, so the
    figure can be read without the table it came from. The parent folder is created.
    """
    if not examples:
        raise ValueError("no examples to draw: pick at least one with pick_examples")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    from matplotlib.figure import Figure

    path = Path(path)
    cols = min(ncols, len(examples))
    rows = math.ceil(len(examples) / cols)
    figure = Figure(figsize=(2 * cols * 2.0, rows * 2.5 + 0.6), layout="constrained")
    figure.suptitle(title)
    axes = figure.subplots(rows, 2 * cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for index, example in enumerate(examples):
        row, col = divmod(index, cols)
        gray = _as_gray_uint8(example.image)
        original, overlay = axes[row, 2 * col], axes[row, 2 * col + 1]
        original.imshow(gray, cmap="gray", vmin=0, vmax=255)
        overlay.imshow(overlay_heatmap(gray, example.cam))
        original.set_title(_cell_title(example), fontsize=8, loc="left")
        overlay.set_title("overlay", fontsize=8)
    return atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=100))
