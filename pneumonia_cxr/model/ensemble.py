"""Several trained networks as one model with one logit (the mean of the members' logits).

Averaging logits rather than probabilities keeps the ensemble a plain classifier: one
threshold and one temperature are fitted on validation for the whole, and every consumer
(evaluate, predict, export, Grad-CAM, the service) sees one `nn.Module` returning (N, 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pneumonia_cxr.model.classifier import PneumoniaNet


class PneumoniaEnsemble(nn.Module):
    """Members run on the same input (one shared preprocessing); logits are averaged."""

    def __init__(self, members: Sequence[PneumoniaNet]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.nets = nn.ModuleList(members)

    @property
    def members(self) -> list[PneumoniaNet]:
        return list(self.nets)

    @property
    def backbone_names(self) -> tuple[str, ...]:
        return tuple(member.backbone_name for member in self.nets)

    @property
    def backbone_name(self) -> str:
        names = sorted(set(self.backbone_names))
        return f"ensemble of {len(self.nets)} ({', '.join(names)})"

    @property
    def cam_target_layers(self) -> list[nn.Module]:
        """One layer per member: pytorch-grad-cam averages the members' scaled maps."""
        return [member.cam_target_layer for member in self.nets]

    @property
    def cam_fine_layers(self) -> list[nn.Module]:
        return [layer for member in self.nets for layer in member.cam_fine_layers]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(images) for member in self.nets]).mean(dim=0)
