"""Out-of-distribution score: how far an image's features lie from the training images'.

Each member's pooled backbone features of the training images are modelled by a Gaussian with
a probabilistic-PCA covariance C = U diag(lambda) U^T + sigma^2 (I - U U^T) (Tipping & Bishop
1999, sklearn's `PCA.noise_variance_`); the score is the squared Mahalanobis distance
d^2 = sum_i z_i^2 / lambda_i + |r|^2 / sigma^2 (z: coordinates on the top components,
r: the residual off them), divided by the feature count so that training images score about 1.
A photo, a drawing or noise lands far off the X-ray feature manifold, mostly in r.
The cut-off is a quantile of the validation images' scores (99%: 1% of in-distribution
images are flagged by construction).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

DEFAULT_COMPONENTS = 64
DEFAULT_QUANTILE = 0.99


class FeatureDensity(nn.Module):
    """Squared Mahalanobis distance / F of features (N, F) under one member's PPCA Gaussian."""

    def __init__(
        self,
        mean: torch.Tensor,
        components: torch.Tensor,
        variances: torch.Tensor,
        noise_variance: torch.Tensor,
    ) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("components", components.float())
        self.register_buffer("variances", variances.float())
        self.register_buffer("noise_variance", noise_variance.float().reshape(()))

    @classmethod
    def fit(cls, features: np.ndarray, n_components: int = DEFAULT_COMPONENTS) -> FeatureDensity:
        from sklearn.decomposition import PCA

        features = np.asarray(features, dtype=np.float64)
        n_components = min(n_components, features.shape[0] - 1, features.shape[1] - 1)
        pca = PCA(n_components=n_components, svd_solver="full").fit(features)
        # Floor relative to the spectrum: with few images the residual variance is ~0 and
        # float32 round-off would dominate the score.
        floor = 1e-6 * float(np.mean(pca.explained_variance_))
        return cls(
            torch.from_numpy(pca.mean_),
            torch.from_numpy(pca.components_),
            torch.from_numpy(pca.explained_variance_),
            torch.tensor(max(float(pca.noise_variance_), floor, 1e-12)),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        centred = features.float() - self.mean
        z = centred @ self.components.T
        off_plane = centred - z @ self.components
        residual = (off_plane * off_plane).sum(dim=1)
        distance = (z * z / self.variances).sum(dim=1) + residual / self.noise_variance
        return distance / self.mean.numel()

    def state(self) -> dict[str, torch.Tensor]:
        return {name: buffer.detach().cpu() for name, buffer in self.named_buffers()}


class OodScorer(nn.Module):
    """The members' distances averaged; `cutoff` is the flagging threshold (score > cutoff)."""

    def __init__(self, densities: Sequence[FeatureDensity], cutoff: float, quantile: float):
        super().__init__()
        self.densities = nn.ModuleList(densities)
        self.cutoff, self.quantile = float(cutoff), float(quantile)

    def check_matches(self, classifier: nn.Module) -> None:
        """One density per member, of that member's feature size; else a ValueError."""
        members = classifier.members
        if len(members) != len(self.densities):
            raise ValueError(
                f"{len(self.densities)} OOD densities for {len(members)} member network(s)"
            )
        for member, density in zip(members, self.densities, strict=True):
            expected = member.num_features
            if density.mean.numel() != expected:
                raise ValueError(
                    f"OOD density of {density.mean.numel()} features for a member with {expected}"
                )

    def forward(self, member_features: Sequence[torch.Tensor]) -> torch.Tensor:
        scores = [density(f) for density, f in zip(self.densities, member_features, strict=True)]
        return torch.stack(scores).mean(dim=0)

    def fingerprint(self) -> str:
        """A short hash of the statistics (part of the ONNX export's cache key)."""
        import hashlib

        digest = hashlib.sha256(f"{self.cutoff}:{self.quantile}".encode())
        for density in self.densities:
            for tensor in density.state().values():
                digest.update(tensor.contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def to_payload(self) -> dict[str, Any]:
        return {
            "cutoff": self.cutoff,
            "quantile": self.quantile,
            "members": [density.state() for density in self.densities],
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> OodScorer:
        densities = [FeatureDensity(**state) for state in payload["members"]]
        return cls(densities, payload["cutoff"], payload["quantile"])


class ScoringModel(nn.Module):
    """A classifier (one network or an ensemble) plus its OOD scorer and applicability guard,
    in one forward pass: images -> (logit (N, 1), ood_score (N,), type_logit (N,),
    guard_score (N,)). What a model lacks is NaN: the OOD score without a scorer, the type
    logit without a type head on every member, the guard score without a guard (which taps
    the first member's layers)."""

    def __init__(self, classifier: nn.Module, ood: OodScorer | None = None, guard=None) -> None:
        super().__init__()
        self.classifier, self.ood, self.guard = classifier, ood, guard
        self.typed = all(m.has_type_head for m in classifier.members)
        self.further = classifier.members[0].further_outputs
        if any(m.further_outputs != self.further for m in classifier.members):
            raise ValueError("every member must carry the same further outputs")

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(logit, ood_score, type_logit, guard_score, *one logit (N,) per further output)."""
        members = self.classifier.members
        if self.ood is None and not self.typed and self.guard is None and not self.further:
            logits = self.classifier(images)
            nan = torch.full_like(logits[:, 0], float("nan"))
            return logits, nan, nan, nan
        guard_score = None
        if self.guard is not None:
            first, taps = members[0].features_with_taps(images, self.guard.layers)
            features = [first, *(member.features(images) for member in members[1:])]
            guard_score = self.guard(taps)
        else:
            features = [member.features(images) for member in members]
        logits = torch.stack(
            [member.head(f) for member, f in zip(members, features, strict=True)]
        ).mean(dim=0)
        nan = torch.full_like(logits[:, 0], float("nan"))
        ood = self.ood(features) if self.ood is not None else nan
        kind = nan
        if self.typed:
            kinds = [member.type_head(f) for member, f in zip(members, features, strict=True)]
            kind = torch.stack(kinds).mean(dim=0)[:, 0]
        further = [
            torch.stack(
                [m.further_heads[name](f) for m, f in zip(members, features, strict=True)]
            ).mean(dim=0)[:, 0]
            for name in self.further
        ]
        return logits, ood, kind, guard_score if guard_score is not None else nan, *further


@torch.inference_mode()
def member_features(classifier: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Pooled features of every member, for fitting the densities."""
    return [member.features(images).float().cpu() for member in classifier.members]
