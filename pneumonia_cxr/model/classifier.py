"""The reference classifier: backbone -> GAP -> 512 -> 256 -> 1 logit, with stage-wise freezing."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from pneumonia_cxr.model.backbones import get_backbone


def _type_head(num_features: int, hidden: int, dropout: float) -> nn.Sequential:
    """P(VIRAL | PNEUMONIA) from the same pooled features: one hidden layer, because a linear
    probe of the frozen features already separates the types (AUC ~0.88, issue 27) and a small
    hidden layer lets the fine-tuned features combine non-linearly without the 512-unit
    layer's capacity to memorise 3,875 images."""
    return nn.Sequential(
        nn.Dropout(dropout),
        nn.Linear(num_features, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, 1),
    )


class LinearProbe(nn.Module):
    """A logistic regression on standardised features, as a layer: ((x - mean) / scale) w + b.

    What `adapt` fits with scikit-learn on a frozen network's multi-layer features
    (`site.probe`); kept inside the network so that every engine, the ONNX export and both
    pages run it as they run any head."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("scale", torch.ones(width))
        self.linear = nn.Linear(width, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features - self.mean) / self.scale)

    def input_gradient(self) -> torch.Tensor:
        """d logit / d features (1, width): the same for every image (a linear head); a
        constant (detached), as the exported graph needs it."""
        return (self.linear.weight / self.scale).detach()


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
        type_head: int | None = None,
        further_outputs: tuple[str, ...] = (),
        probe_layers: tuple[str, ...] = (),
    ) -> None:
        """`type_head`: width of the bacterial-vs-viral head's hidden layer; None = no type
        head (the binary model every file before issue 27 holds). `further_outputs`: names of
        registry outputs (`model.outputs`) beyond these two, each with the head its entry
        builds on the same pooled features. `probe_layers`: backbone layers whose mean-pooled
        maps, concatenated, are the features and whose head is a `LinearProbe` (what `adapt`
        writes; `head_dims` then unused)."""
        super().__init__()
        spec = get_backbone(backbone)
        self.backbone_name = backbone
        self.backbone = spec.build(weights)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.probe_layers = tuple(probe_layers)
        if self.probe_layers:
            self.head_dims, self.head_dropouts = (), ()
            self.probe_widths = self._probe_widths()
            self.num_features = sum(self.probe_widths)
            self.head: nn.Module = LinearProbe(self.num_features)
            drop2 = 0.0
        else:
            self.head_dims, self.head_dropouts = tuple(head_dims), tuple(head_dropouts)
            self.num_features = spec.num_features
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
        self.type_head_width = type_head
        self.type_head: nn.Module | None = None
        if type_head is not None:  # a probe's type head is a probe too (`adapt`; width 0)
            self.type_head = (
                LinearProbe(self.num_features)
                if self.probe_layers
                else _type_head(self.num_features, type_head, drop2)
            )
        self.further_heads = nn.ModuleDict()
        for name in further_outputs:
            self.add_output(name)

    def add_output(self, name: str) -> None:
        """Give the network a registry output's head (`ModelOutput.build_head`)."""
        from pneumonia_cxr.model.outputs import output_named

        output = output_named(name)
        if output.build_head is None:
            raise ValueError(f"output {name!r} has no generic head (the classifier names it)")
        self.further_heads[name] = output.build_head(self.num_features)

    @property
    def further_outputs(self) -> tuple[str, ...]:
        return tuple(self.further_heads)

    def answer_head(self, name: str) -> nn.Module | None:
        """The head of a registry answer after P(PNEUMONIA) (`model.outputs`), by name: the
        type's own, or a further one; None when this network does not give that answer."""
        if name == "type":
            return self.type_head
        return self.further_heads[name] if name in self.further_heads else None  # noqa: SIM401 (ModuleDict has no .get)

    @property
    def has_type_head(self) -> bool:
        return self.type_head is not None

    @property
    def cam_target_layer_name(self) -> str:
        """The backbone's last map, or a probe's deepest layer (the last map the head reads)."""
        if self.probe_layers:
            return self.probe_layers[-1]
        return get_backbone(self.backbone_name).cam_target_layer

    @property
    def cam_target_layer(self) -> nn.Module:
        return self.backbone.get_submodule(self.cam_target_layer_name)

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

    def _probe_widths(self) -> tuple[int, ...]:
        """Channels of each probed layer, from one small forward pass in eval mode (in train
        mode it would move the BatchNorm statistics of pretrained weights)."""
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            with torch.no_grad():
                _, taps = self._run_with_taps(torch.zeros(1, 3, 64, 64), self.probe_layers)
        finally:
            self.backbone.train(was_training)
        return tuple(int(taps[name].shape[1]) for name in self.probe_layers)

    def _run_with_taps(
        self, images: torch.Tensor, layers: tuple[str, ...]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The backbone's output and the maps of the named layers, from one pass (forward
        hooks, removed before returning; they trace into ONNX)."""
        taps: dict[str, torch.Tensor] = {}
        handles = [
            self.backbone.get_submodule(name).register_forward_hook(
                lambda _m, _i, output, name=name: taps.__setitem__(name, output)
            )
            for name in dict.fromkeys(layers)
        ]
        try:
            output = self.backbone(images)
        finally:
            for handle in handles:
                handle.remove()
        return output, taps

    def _head_input(self, output: torch.Tensor, taps: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self.probe_layers:
            return self.pool(output)
        return torch.cat([self.pool(taps[name]) for name in self.probe_layers], dim=1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """What the head sees (N, F), and what the OOD score models: the pooled last map, or a
        probe's concatenated mean-pooled layers."""
        output, taps = self._run_with_taps(images, self.probe_layers)
        return self._head_input(output, taps)

    def features_with_taps(
        self, images: torch.Tensor, layers: tuple[str, ...]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`features` and the `model.guard.pooled_stats` of each named backbone layer, from
        one pass."""
        from pneumonia_cxr.model.guard import pooled_stats

        output, taps = self._run_with_taps(images, (*layers, *self.probe_layers))
        return self._head_input(output, taps), [pooled_stats(taps[name]) for name in layers]

    def backbone_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    def _pooled(self, images: torch.Tensor) -> torch.Tensor:
        """A fully frozen backbone runs without autograd while training: cheaper."""
        no_grad = self.training and self.backbone_frozen()
        with torch.no_grad() if no_grad else contextlib.nullcontext():
            return self.features(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """PNEUMONIA logits (N, 1): what every consumer of a binary model sees."""
        return self.head(self._pooled(images))

    def both_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(PNEUMONIA logits (N, 1), VIRAL-vs-BACTERIAL logits (N, 1) or None) in one pass."""
        pooled = self._pooled(images)
        kind = self.type_head(pooled) if self.type_head is not None else None
        return self.head(pooled), kind

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
