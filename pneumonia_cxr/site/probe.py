"""A new head on a frozen network's multi-layer features, fitted and estimated on a site's own
images by cross-validation by patient (`adapt`'s probe recipes; house style 23).

Features: the mean-pooled maps of several layers of a frozen network, concatenated (Lee et al.
2018's multi-layer features), extracted once per recipe and cached in the work folder batch by
batch, so a killed run resumes where it stopped. Head: a logistic regression on standardised
features (scikit-learn), its inverse regularisation C chosen by cross-validated ROC AUC.

Honesty: `choose` scores every image by a head that never saw its patient (one C in every
fold); `nested_cross_fit` also makes the choice of recipe and C inside the other folds only,
which shows how much the choice flatters the estimate. The final head is fitted on all images
with the recipe and C that `choose` picks.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pneumonia_cxr.config import Preprocessing
from pneumonia_cxr.data.discovery import ImageRecord
from pneumonia_cxr.data.fingerprint import records_fingerprint
from pneumonia_cxr.errors import EvaluationInputError
from pneumonia_cxr.faults import kill_if
from pneumonia_cxr.model.backbones import get_backbone, preprocessing_for
from pneumonia_cxr.model.classifier import LinearProbe, PneumoniaNet
from pneumonia_cxr.model.model_file import ModelBundle
from pneumonia_cxr.storage import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

C_GRID = tuple(float(c) for c in np.logspace(-4, 1, 11))
"""Inverse regularisation strengths tried (per standardised feature): strong to weak."""


@dataclass(frozen=True)
class ProbeRecipe:
    """Which frozen network's which layers feed the new head."""

    name: str
    backbone: str | None
    """A registry backbone with its ImageNet weights; None: the parent model's own network."""
    layers: tuple[str, ...] | None
    """Probed layers; None: the backbone's guard layers (`BackboneSpec.guard_layers`)."""


PROBE_RECIPES: dict[str, ProbeRecipe] = {
    recipe.name: recipe
    for recipe in (
        ProbeRecipe("probe_parent", None, None),
        ProbeRecipe("probe_imagenet_lite0", "efficientnet_lite0", None),
        ProbeRecipe("probe_imagenet_resnet50", "resnet50_keras", ("layer4",)),
    )
}


def feature_network(recipe: ProbeRecipe, parent: ModelBundle) -> tuple[PneumoniaNet, Preprocessing]:
    """The recipe's frozen network (with an untrained probe head) and its input contract.

    Raises:
        FileNotFoundError, ImportError: the recipe's ImageNet weights are not installed.
    """
    member = parent.model.members[0]
    backbone = recipe.backbone or member.backbone_name
    layers = (
        recipe.layers
        or get_backbone(backbone).guard_layers
        or (get_backbone(backbone).cam_target_layer,)
    )
    if recipe.backbone is None:
        network = PneumoniaNet(backbone, weights="none", probe_layers=layers)
        network.backbone.load_state_dict(member.backbone.state_dict())
        preprocessing = parent.preprocessing
    else:
        network = PneumoniaNet(backbone, weights="imagenet", probe_layers=layers)
        size = int(parent.preprocessing.image_size)
        preprocessing = preprocessing_for(backbone, size, "imagenet")
    return network.eval(), preprocessing


def _save_array(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


@torch.inference_mode()
def extract_features(
    bundle: ModelBundle,
    records: Sequence[ImageRecord],
    cache: Path,
    *,
    batch_size: int = 32,
    device: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """`bundle`'s probe features (N, F) of `records`, cached in `cache` (.npy) and written
    every batch, so that a run killed mid-way resumes after the last batch it saved; a cache
    of other images (site fingerprint in its sidecar) is started afresh."""
    from pneumonia_cxr.inference.predictor import Predictor

    network = bundle.model.members[0]
    key = {"site": records_fingerprint(records, "site"), "n": len(records)}
    sidecar = cache.with_suffix(".json")
    done = np.zeros((0, network.num_features), dtype=np.float32)
    if cache.is_file() and sidecar.is_file() and json.loads(sidecar.read_text()) == key:
        done = np.load(cache)
    else:
        atomic_write_text(sidecar, json.dumps(key))
    if len(done) >= len(records):
        return done[: len(records)]
    if progress is not None:
        progress(len(done))
    predictor = Predictor.from_bundle(bundle, device, source=f"{cache.stem} features")
    parts = [done]
    rest = [r.path for r in records[len(done) :]]
    for number, batch in enumerate(predictor.iter_inputs(rest, batch_size=batch_size)):
        if batch["image"] is None or batch["errors"]:
            named = "; ".join(f"{rest[i]}: {e}" for i, e in dict(batch["errors"]).items())
            raise EvaluationInputError(
                f"site image(s) cannot be read ({named or 'a whole batch'}); fix or remove them"
            )
        images = torch.as_tensor(batch["image"]).to(predictor.device)
        parts.append(network.features(images).float().cpu().numpy())
        _save_array(cache, np.concatenate(parts))
        kill_if(f"features:{cache.stem}:batch{number}")
        if progress is not None:
            progress(len(images))
    return np.concatenate(parts)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of scores (logits or probabilities) against 0/1 labels."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def _fit(features: np.ndarray, labels: np.ndarray, c: float) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    head = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=c, class_weight="balanced", max_iter=2000),
    )
    return head.fit(features, labels)


def _logits(head: Any, features: np.ndarray) -> np.ndarray:
    return head.decision_function(features)


def out_of_fold_logits(
    features: np.ndarray, labels: np.ndarray, folds: np.ndarray, c: float
) -> np.ndarray:
    """Every image's logit from a head (strength `c`) fitted on the other folds."""
    pooled = np.zeros(len(labels))
    for fold in np.unique(folds):
        held = folds == fold
        pooled[held] = _logits(_fit(features[~held], labels[~held], c), features[held])
    return pooled


@dataclass
class Choice:
    """The recipe and C a rule picked, the cross-validated AUC it picked them by, and the
    out-of-fold logits at that choice (one C in every fold: one logit scale, the final
    head's)."""

    recipe: str
    c: float
    cv_auc: float
    candidates: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per recipe: its best C and that C's cross-validated AUC."""
    logits: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    """Per recipe: the out-of-fold logits at its best C."""


def choose(
    features: dict[str, np.ndarray],
    labels: np.ndarray,
    folds: np.ndarray,
    grid: Sequence[float] = C_GRID,
) -> Choice:
    """The rule, stated before measuring: the recipe and C with the highest ROC AUC of the
    pooled out-of-fold logits over `folds` (ties: the earlier recipe, the stronger
    regularisation)."""
    candidates: dict[str, dict[str, float]] = {}
    logits: dict[str, np.ndarray] = {}
    for name, matrix in features.items():
        best: tuple[float, float, np.ndarray] | None = None
        for c in grid:
            pooled = out_of_fold_logits(matrix, labels, folds, c)
            score = auc(labels, pooled)
            if best is None or score > best[0]:
                best = (score, c, pooled)
        assert best is not None
        candidates[name] = {"c": best[1], "cv_auc": best[0]}
        logits[name] = best[2]
    name = max(candidates, key=lambda n: candidates[n]["cv_auc"])
    return Choice(name, candidates[name]["c"], candidates[name]["cv_auc"], candidates, logits)


@dataclass
class CrossFit:
    """Out-of-fold logits of the whole procedure and what each outer fold chose."""

    logits: np.ndarray
    chosen: list[dict[str, Any]]
    per_recipe: dict[str, np.ndarray]
    """Each recipe's own out-of-fold logits (its C chosen inside), for the candidates' table."""
    decisions: np.ndarray
    """Each image's decision at an operating point fitted inside the other folds too: what
    the threshold rule achieves on patients it never saw."""


def nested_cross_fit(
    features: dict[str, np.ndarray],
    labels: np.ndarray,
    folds: np.ndarray,
    *,
    rule: str,
    min_sensitivity: float | None,
    on_fold: Callable[[int, dict[str, Any]], None] | None = None,
    done: dict[int, dict[str, Any]] | None = None,
) -> CrossFit:
    """Every image scored by a head fitted on the other folds, with the recipe, C and the
    operating point (`rule`, `min_sensitivity`: temperature and threshold on the other folds'
    own out-of-fold logits) chosen on those folds alone. `done`: folds already finished
    (resume), each as `on_fold` received it."""
    from pneumonia_cxr.evaluation.threshold import fit_operating_point
    from pneumonia_cxr.model.decision import decide, probability

    logits = np.zeros(len(labels))
    decisions = np.zeros(len(labels), dtype=np.int64)
    per_recipe = {name: np.zeros(len(labels)) for name in features}
    chosen = []
    for fold in (int(f) for f in np.unique(folds)):
        held = folds == fold
        result = (done or {}).get(fold)
        if result is None:
            inner = choose({n: m[~held] for n, m in features.items()}, labels[~held], folds[~held])
            result = {
                "chosen": {"recipe": inner.recipe, "c": inner.c, "cv_auc": inner.cv_auc},
                "per_recipe": {},
            }
            for name, matrix in features.items():
                c = inner.candidates[name]["c"]
                head = _fit(matrix[~held], labels[~held], c)
                result["per_recipe"][name] = _logits(head, matrix[held]).tolist()
            result["logits"] = result["per_recipe"][inner.recipe]
            point = fit_operating_point(
                labels[~held],
                inner.logits[inner.recipe],
                rule=rule,
                min_sensitivity=min_sensitivity,
            )
            held_probabilities = probability(np.asarray(result["logits"]), point.temperature)
            result["decisions"] = decide(held_probabilities, point.threshold).tolist()
            if on_fold is not None:
                on_fold(fold, result)
        logits[held] = result["logits"]
        decisions[held] = result["decisions"]
        for name in features:
            per_recipe[name][held] = result["per_recipe"][name]
        chosen.append({"fold": fold, **result["chosen"]})
    return CrossFit(logits, chosen, per_recipe, decisions)


def fit_probe(probe: LinearProbe, features: np.ndarray, labels: np.ndarray, c: float) -> None:
    """Fit the head on all images and write it into `probe`."""
    head = _fit(features, labels, c)
    scaler, regression = head[0], head[-1]
    with torch.no_grad():
        probe.mean.copy_(torch.as_tensor(scaler.mean_, dtype=torch.float32))
        probe.scale.copy_(torch.as_tensor(scaler.scale_, dtype=torch.float32))
        probe.linear.weight.copy_(torch.as_tensor(regression.coef_, dtype=torch.float32))
        probe.linear.bias.copy_(torch.as_tensor(regression.intercept_, dtype=torch.float32))
