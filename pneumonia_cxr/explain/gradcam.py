"""Class activation maps for the single-logit pneumonia classifier, through pytorch-grad-cam.

The CAM math is the library's (`pytorch_grad_cam`); this module only adds what the library
leaves to the caller: the right target for a one-logit head, batching, and leaving the model
exactly as it was found (training mode, parameter `.grad`, hooks, `requires_grad`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from pneumonia_cxr.explain import CAM_METHODS
from pneumonia_cxr.model.outputs import OUTPUTS

if TYPE_CHECKING:
    from pytorch_grad_cam.base_cam import BaseCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from pneumonia_cxr.inference.predictor import Predictor


POSITIVE_LOGIT = 0
"""Index of the PNEUMONIA logit in the (N, 1) model output."""


def cam_class(method: str) -> type[BaseCAM]:
    """The pytorch-grad-cam class for a method name; the error lists the valid names."""
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {', '.join(CAM_METHODS)}")
    # Imported here: the CLI reads CAM_METHODS for its choices without paying for the library.
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM

    return {
        "gradcam": GradCAM,  # Selvaraju et al. 2017
        "gradcam++": GradCAMPlusPlus,  # Chattopadhay et al. 2018
        "hirescam": HiResCAM,  # Draelos & Carin 2020: element-wise, faithful to the logit
        "eigencam": EigenCAM,  # Muhammad & Yeasin 2020: gradient-free, class-agnostic
    }[method]


def positive_logit_target() -> ClassifierOutputTarget:
    """The target that explains the PNEUMONIA logit of a single-logit head.

    The library applies a target to each sample's output, shape (1,). `ClassifierOutputTarget(0)`
    returns `output[0]`, a scalar: exactly the positive logit. `BinaryClassifierOutputTarget(1)`
    would return the whole (1,) vector instead; it happens to work for one logit but silently
    sums every logit of a wider head, so we do not use it.
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return ClassifierOutputTarget(POSITIVE_LOGIT)


@contextmanager
def _model_state_preserved(model: nn.Module) -> Iterator[None]:
    """Restore every module's train/eval flag and every parameter's `.grad` on exit.

    Why: the library calls `model.eval()` and `model.zero_grad()` and its backward pass fills
    `.grad`; an explanation run in the middle of training must not change what training sees.
    Flags are restored per module because a partly frozen model can mix modes (frozen
    BatchNorm in eval inside a backbone in train).
    """
    modes = [(module, module.training) for module in model.modules()]
    grads = [(param, param.grad) for param in model.parameters()]
    requires = [(param, param.requires_grad) for param in model.parameters()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        for param, grad in grads:
            param.grad = grad
        for param, flag in requires:
            param.requires_grad_(flag)


def _check_inputs(images: torch.Tensor, batch_size: int) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor of shape (N, C, H, W), got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a normalized float tensor, got dtype {images.dtype}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")


def _cams_for_batch(cam: BaseCAM, batch: torch.Tensor) -> np.ndarray:
    """One library call on one batch, with the input made a leaf that requires grad.

    Why requires_grad: the library records gradients with a tensor hook on the target layer's
    output and silently skips it when that output does not require grad, which is the case
    when every parameter up to the target layer is frozen. A grad-requiring input keeps the
    graph alive through a frozen backbone without touching its parameters.
    """
    leaf = batch.detach().clone().requires_grad_(True)
    targets = [positive_logit_target() for _ in range(len(leaf))]
    cam.outputs = None  # set by the library's forward, before the targets are applied
    try:
        maps = cam(input_tensor=leaf, targets=targets)
    except IndexError:
        # A target indexing a malformed output fails here; say what is wrong with the model.
        _check_logits(cam.outputs)
        raise
    _check_logits(cam.outputs)
    return maps


def _check_logits(outputs: torch.Tensor | None) -> None:
    """Reject a head that is not one logit per image, which the target would misread."""
    if outputs is not None and (outputs.ndim != 2 or outputs.shape[1] != 1):
        raise ValueError(
            "the model must return one PNEUMONIA logit per image, shape (N, 1); "
            f"got {tuple(outputs.shape)}: explain a single-logit head"
        )


def compute_cams(
    model: nn.Module,
    target_layer: nn.Module | Sequence[nn.Module],
    images: torch.Tensor,
    *,
    method: str = "gradcam",
    batch_size: int = 16,
) -> np.ndarray:
    """Heatmaps of the PNEUMONIA logit for a batch of model-ready images.

    Args:
        model: maps a normalized float batch (N, C, H, W) to logits (N, 1).
        target_layer: the module inside `model` whose activations are explained, usually the
            last convolutional block (the backbone registry knows it).
        images: normalized input, on any device (moved to the model's device batch by batch).
        method: one of `CAM_METHODS`.
        batch_size: images per forward/backward pass, to bound memory.

    Returns:
        float32 array (N, H, W) in [0, 1] at the input's spatial size, each map min-max scaled
        by the library (so maps show where, not how much; compare models with care).

    Raises:
        ValueError: unknown method, malformed images, a target layer outside the model, or a
            model that does not return (N, 1).
    """
    cam_cls = cam_class(method)
    _check_inputs(images, batch_size)
    layers = list(target_layer) if isinstance(target_layer, Sequence) else [target_layer]
    for layer in layers:
        if not any(module is layer for module in model.modules()):
            raise ValueError(
                f"target layer {type(layer).__name__} is not inside {type(model).__name__}: "
                "take it from the model being explained (the backbone registry names it)"
            )
    n, _, height, width = images.shape
    if n == 0:
        return np.zeros((0, height, width), dtype=np.float32)

    chunks: list[np.ndarray] = []
    failure: IndexError | None = None
    # inference_mode(False) + enable_grad: the caller may hold either mode off; CAMs need autograd.
    with (
        _model_state_preserved(model),
        torch.inference_mode(False),
        torch.enable_grad(),
        cam_cls(model=model, target_layers=layers) as cam,
    ):
        try:
            for start in range(0, n, batch_size):
                chunks.append(_cams_for_batch(cam, images[start : start + batch_size]))
        except IndexError as exc:
            # BaseCAM.__exit__ prints and swallows IndexError; keep it and re-raise below so
            # the caller never gets a silently truncated result. Hooks are released either way.
            failure = exc
        finally:
            cam.outputs = None  # drop the retained autograd graph of the last batch
    if failure is not None:
        raise failure
    maps = np.concatenate(chunks, axis=0).astype(np.float32, copy=False)
    # Defensive: the library's min-max scaling keeps [0, 1], but a NaN from a degenerate
    # gradient (gradcam++ on a dead layer) must not reach an overlay or a metric.
    return np.clip(np.nan_to_num(maps, nan=0.0), 0.0, 1.0)


CAM_TARGETS: tuple[str, ...] = tuple(output.name for output in OUTPUTS)
"""Which answer a map explains (`model.outputs`): the PNEUMONIA logit, or the logit of an answer
after it (the type's VIRAL-vs-BACTERIAL, ...), by name."""


class AnswerLogit(nn.Module):
    """A model seen through the head of one answer after P(PNEUMONIA) (`model.outputs`, by
    name): (N, 1) logits, members averaged, so the one single-logit CAM path explains that
    question on the same layers."""

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        if any(member.answer_head(name) is None for member in model.members):
            raise ValueError(
                f"this model has no {name!r} head: a heatmap of that answer needs a model "
                "trained to give it"
            )
        self.model, self.name = model, name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = [m.answer_head(self.name)(m.features(images)) for m in self.model.members]
        return torch.stack(logits).mean(dim=0)


def model_cams(
    model: nn.Module,
    images: torch.Tensor,
    *,
    method: str = "gradcam",
    batch_size: int = 16,
    fine: bool = False,
    target: str = "pneumonia",
) -> np.ndarray:
    """`compute_cams` on the model's own target layers: one for a network, one per member of
    an ensemble (the library averages the members' scaled maps into one); `fine`: the stride-16
    layers instead of the last ones; `target` "type" explains the type logit."""
    targets = [output.name for output in OUTPUTS]  # the registry as it is now
    if target not in targets:
        raise ValueError(f"unknown heatmap target {target!r}; choose from {targets}")
    layers = model.cam_fine_layers if fine else model.cam_target_layers
    explained = model if target == "pneumonia" else AnswerLogit(model, target)
    return compute_cams(explained, layers, images, method=method, batch_size=batch_size)


def predictor_cams(
    predictor: Predictor,
    inputs: torch.Tensor | np.ndarray,
    *,
    method: str = "gradcam",
    target: str = "pneumonia",
) -> np.ndarray:
    """Maps of a batch of model inputs (the predictor's arrays, or tensors) from an opened
    PyTorch predictor: on its device, in its memory layout (mixed layouts are ~3x slower)."""
    if predictor.bundle is None:
        raise ValueError("Grad-CAM needs the PyTorch model file (.pt), not an ONNX export")
    images = (
        torch.as_tensor(inputs).to(predictor.device).contiguous(memory_format=torch.channels_last)
    )
    return model_cams(
        predictor.bundle.model, images, method=method, batch_size=len(images), target=target
    )
