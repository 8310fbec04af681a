"""The PyTorch engine: a `.pt` model file on the CPU or a GPU (Grad-CAM needs its gradients).
The full install only; the ONNX engines (`inference.engines`) score without PyTorch."""

from __future__ import annotations

import numpy as np
import torch

from pneumonia_cxr.inference.engines import EngineOutput
from pneumonia_cxr.model.model_file import ModelBundle
from pneumonia_cxr.model.outputs import answers_after_first


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The one device policy: the device asked for, else the GPU when there is one, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TorchEngine:
    """A loaded `.pt` model file in eval mode on one device, channels_last (the fast layout)."""

    def __init__(self, bundle: ModelBundle, device: str | torch.device | None = None) -> None:
        self.bundle = bundle
        self.device = resolve_device(device)
        self.preprocessing, self.decision = bundle.preprocessing, bundle.decision
        self.backbone_name = bundle.backbone_name
        self.data_fingerprint = bundle.data_fingerprint
        self.intended_use = bundle.intended_use
        self.scoring = bundle.scoring_model().to(
            device=self.device, memory_format=torch.channels_last
        )
        self.scoring.eval()

    @property
    def backbone_names(self) -> tuple[str, ...]:
        return self.bundle.backbone_names

    def score(self, images: np.ndarray | torch.Tensor) -> EngineOutput:
        images = torch.as_tensor(images).to(self.device, non_blocking=True)
        images = images.contiguous(memory_format=torch.channels_last)
        # Full float32 on GPU too (no TF32): a probability next to the threshold must get the
        # label it gets on the CPU, where the threshold may have been fitted.
        with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            logits, ood, kinds, guard, *further = self.scoring(images)
        # The scoring pass's outputs by answer name (`model.outputs`): the second answer's
        # logit sits in the third slot, further answers after the guard's.
        by_name = {"type": kinds, **dict(zip(self.scoring.further, further, strict=True))}
        guarded = self.decision.guard_cutoff is not None
        return EngineOutput(
            logits[:, 0].float().cpu().numpy(),
            ood.float().cpu().numpy().reshape(-1),
            guard.float().cpu().numpy().reshape(-1) if guarded else None,
            {
                o.name: by_name[o.name].float().cpu().numpy().reshape(-1)
                for o in answers_after_first(self.decision)
            },
        )

    def fingerprint(self) -> str:
        return self.bundle.fingerprint()
