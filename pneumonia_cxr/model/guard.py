"""The applicability guard's feature part: is this image like the training X-rays, at several
depths of the network?

For each guarded layer (`BackboneSpec.guard_layers`) an image is summarised by the mean and the
standard deviation of each channel over the image (a 2C vector); the training images' vectors
are modelled by one Gaussian with a Ledoit-Wolf shrunk covariance (sklearn), and the image's
squared Mahalanobis distance, divided by the dimension, is its layer score (Lee et al. 2018 use
several layers the same way). Each layer score is standardised by the mean and std of held-out
training images' scores, and the guard score is the sum over layers: a photo, another
hospital's film or an adult's differs at some depth, and the sum needs no weights to fit.
The cut-off is a quantile of the validation images' guard scores (`DEFAULT_GUARD_QUANTILE`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

DEFAULT_GUARD_QUANTILE = 0.975
"""2.5% of validation images are flagged by construction: a site of the same kind loses few
images, and the measured gap to other sites is wide (issue 25: AUROC 0.995-0.998)."""
DEFAULT_GUARD_FIT_IMAGES = 1500
DEFAULT_GUARD_NORM_IMAGES = 800


def pooled_stats(activation: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 2C): each channel's spatial mean, then its spatial std."""
    flat = activation.float().flatten(2)
    mean = flat.mean(dim=2)
    std = (flat - mean[..., None]).pow(2).mean(dim=2).clamp_min(1e-12).sqrt()
    return torch.cat([mean, std], dim=1)


class LayerDensity(nn.Module):
    """Squared Mahalanobis distance / D of (N, D) vectors under one fitted Gaussian."""

    def __init__(self, mean: torch.Tensor, precision: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("precision", precision.float())

    @classmethod
    def fit(cls, vectors: np.ndarray) -> LayerDensity:
        from sklearn.covariance import LedoitWolf

        model = LedoitWolf().fit(np.asarray(vectors, dtype=np.float64))
        return cls(torch.from_numpy(model.location_), torch.from_numpy(model.precision_))

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        centred = vectors.float() - self.mean
        return ((centred @ self.precision) * centred).sum(dim=1) / self.mean.numel()


class LayerGuard(nn.Module):
    """Per-layer densities, their score normalisation and the cut-off (flag: score > cutoff)."""

    def __init__(
        self,
        layers: Sequence[str],
        densities: Sequence[LayerDensity],
        score_mean: torch.Tensor,
        score_std: torch.Tensor,
        cutoff: float,
        quantile: float,
        fitted_on: str = "",
    ) -> None:
        super().__init__()
        if len(layers) != len(densities):
            raise ValueError(f"{len(densities)} guard densities for {len(layers)} layers")
        self.layers = tuple(layers)
        self.densities = nn.ModuleList(densities)
        self.register_buffer("score_mean", score_mean.float().reshape(-1))
        self.register_buffer("score_std", score_std.float().reshape(-1))
        self.cutoff, self.quantile, self.fitted_on = float(cutoff), float(quantile), fitted_on

    def layer_scores(self, taps: Sequence[torch.Tensor]) -> torch.Tensor:
        """(N, L) raw layer scores of the tapped `pooled_stats` vectors."""
        return torch.stack([d(t) for d, t in zip(self.densities, taps, strict=True)], dim=1)

    def forward(self, taps: Sequence[torch.Tensor]) -> torch.Tensor:
        z = (self.layer_scores(taps) - self.score_mean) / self.score_std
        return z.sum(dim=1)

    def check_matches(self, network: nn.Module) -> None:
        """Every guarded layer exists and has the channels its statistics were fitted on."""
        for name, density in zip(self.layers, self.densities, strict=True):
            try:
                module = network.backbone.get_submodule(name)
            except AttributeError as error:
                raise ValueError(f"guard layer {name!r} is not in the network") from error
            channels = _out_channels(module)
            if channels is not None and 2 * channels != density.mean.numel():
                raise ValueError(
                    f"guard statistics of layer {name!r} have {density.mean.numel()} values, "
                    f"the layer gives {2 * channels}"
                )
            if density.precision.shape != (density.mean.numel(),) * 2:
                raise ValueError(f"guard precision of layer {name!r} has the wrong shape")
        if self.score_mean.numel() != len(self.layers) or self.score_std.numel() != len(
            self.layers
        ):
            raise ValueError("guard score normalisation does not match its layer count")

    def to_payload(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers),
            "densities": [
                {k: v.detach().cpu() for k, v in d.state_dict().items()} for d in self.densities
            ],
            "score_mean": self.score_mean.detach().cpu(),
            "score_std": self.score_std.detach().cpu(),
            "cutoff": self.cutoff,
            "quantile": self.quantile,
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> LayerGuard:
        densities = [LayerDensity(**state) for state in payload["densities"]]
        return cls(
            payload["layers"],
            densities,
            payload["score_mean"],
            payload["score_std"],
            payload["cutoff"],
            payload["quantile"],
            str(payload.get("fitted_on", "")),
        )

    @classmethod
    def fit(
        cls,
        layers: Sequence[str],
        fit_vectors: Sequence[np.ndarray],
        norm_vectors: Sequence[np.ndarray],
        fitted_on: str,
    ) -> LayerGuard:
        """Densities on `fit_vectors` (one array per layer); the score normalisation on other
        images' vectors (in-sample distances are biased low). The cut-off is set later, on
        validation (`set_cutoff`)."""
        densities = [LayerDensity.fit(v) for v in fit_vectors]
        guard = cls(
            layers,
            densities,
            torch.zeros(len(layers)),
            torch.ones(len(layers)),
            float("inf"),
            DEFAULT_GUARD_QUANTILE,
            fitted_on,
        )
        with torch.inference_mode():
            raw = guard.layer_scores([torch.from_numpy(np.asarray(v)) for v in norm_vectors])
        guard.score_mean.copy_(raw.mean(dim=0))
        guard.score_std.copy_(raw.std(dim=0).clamp_min(1e-6))
        return guard

    def set_cutoff(self, validation_scores: np.ndarray, quantile: float | None = None) -> None:
        self.quantile = float(quantile if quantile is not None else self.quantile)
        self.cutoff = float(np.quantile(np.asarray(validation_scores), self.quantile))

    def fingerprint(self) -> str:
        import hashlib

        digest = hashlib.sha256(f"{self.cutoff}:{self.quantile}:{self.layers}".encode())
        for tensor in self.state_dict().values():
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]


def _out_channels(module: nn.Module) -> int | None:
    """Channels a block outputs: its last BatchNorm's or convolution's (None if unknown)."""
    last = None
    for sub in module.modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            last = sub.num_features
        elif isinstance(sub, nn.Conv2d):
            last = sub.out_channels
    return last
