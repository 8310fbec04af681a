"""The reference classifier: backbone -> GAP -> 512 -> 256 -> 1 logit, with stage-wise freezing."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from pneumonia_cxr.model.backbones import get_backbone


def parameter_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that own parameters directly, in registration (= forward) order: our "layer".

    Owning (not leaf) matters: timm's BatchNormAct2d has parameter-free children.
    """
    return [
        (name, m)
        for name, m in module.named_modules()
        if any(True for _ in m.parameters(recurse=False))
    ]


class PneumoniaNet(nn.Module):
    """Backbone features, global average pooling and the reference's two-layer head."""

    def __init__(
        self,
        backbone: str = "resnet50",
        weights: str = "none",
        head_dims: tuple[int, int] = (512, 256),
        head_dropouts: tuple[float, float] = (0.5, 0.3),
    ) -> None:
        super().__init__()
        spec = get_backbone(backbone)
        self.backbone_name = backbone
        self.head_dims, self.head_dropouts = tuple(head_dims), tuple(head_dropouts)
        self.backbone = spec.build(weights)
        self.num_features = spec.num_features
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        hidden1, hidden2 = head_dims
        drop1, drop2 = head_dropouts
        self.head = nn.Sequential(
            nn.Linear(spec.num_features, hidden1),
            nn.ReLU(inplace=True),
            nn.Dropout(drop1),
            nn.Linear(hidden1, hidden2),
            nn.ReLU(inplace=True),
            nn.Dropout(drop2),
            nn.Linear(hidden2, 1),
        )

    @property
    def cam_target_layer(self) -> nn.Module:
        return self.backbone.get_submodule(get_backbone(self.backbone_name).cam_target_layer)

    @property
    def cam_target_layers(self) -> list[nn.Module]:
        """The layers Grad-CAM explains (one here; one per member in an ensemble)."""
        return [self.cam_target_layer]

    @property
    def cam_fine_layers(self) -> list[nn.Module]:
        """The stride-16 layers (`BackboneSpec.cam_fine_layer`): finer, less class-specific."""
        return [self.backbone.get_submodule(get_backbone(self.backbone_name).cam_fine_layer)]

    @property
    def members(self) -> list[PneumoniaNet]:
        """A single network is an ensemble of one: model files and exports treat both alike."""
        return [self]

    @property
    def backbone_names(self) -> tuple[str, ...]:
        return (self.backbone_name,)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (N, F): what the head sees, and what the OOD score models."""
        return self.pool(self.backbone(images))

    def backbone_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, 1). A fully frozen backbone runs without autograd while training: cheaper."""
        no_grad = self.training and self.backbone_frozen()
        with torch.no_grad() if no_grad else contextlib.nullcontext():
            features = self.backbone(images)
        return self.head(self.pool(features))

    def freeze_backbone(self) -> None:
        """Stage 1: only the head learns; backbone BatchNorm statistics are frozen too."""
        self.backbone.requires_grad_(False)
        self.train(self.training)

    def unfreeze_top_layers(self, n_layers: int) -> list[str]:
        """Stage 2: unfreeze the top `n_layers` parameter layers (-1: all); returns their names."""
        layers = parameter_layers(self.backbone)
        chosen = layers if n_layers < 0 else layers[len(layers) - min(n_layers, len(layers)) :]
        self.backbone.requires_grad_(False)
        for _, module in chosen:
            module.requires_grad_(True)
        self.train(self.training)
        return [name for name, _ in chosen]

    def train(self, mode: bool = True) -> PneumoniaNet:
        """Frozen BatchNorm layers stay in eval mode so their running statistics never move."""
        super().train(mode)
        if mode:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                    p.requires_grad for p in module.parameters()
                ):
                    module.eval()
        return self
