"""What `calibrate` refits on a site beside the operating point: the applicability guard, and
the type threshold where the site's images say which pneumonia is which."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia_cxr.data.discovery import ImageRecord
from pneumonia_cxr.inference.predictor import RecordScores
from pneumonia_cxr.model.model_file import ModelBundle
from pneumonia_cxr.model.outputs import TYPE


def refit_site_guard(
    bundle: ModelBundle,
    records: Sequence[ImageRecord],
    device: str | None,
    batch_size: int,
    seed: int = 0,
) -> dict[str, Any]:
    """The applicability guard refitted on the site's own images (a third each: densities,
    score normalisation, cut-off at the guard's quantile), so that the calibrated model accepts
    its own site and still flags what is unlike it. Returns what the record keeps."""
    from pneumonia_cxr.training.guard_fit import fit_guard

    order = np.random.default_rng(seed).permutation(len(records))
    third = max(len(records) // 3, 1)
    cut_part = [records[i] for i in order[:third]]
    fit_part = [records[i] for i in order[third:]]
    guard = fit_guard(
        bundle,
        fit_part,
        cut_part,
        fitted_on=f"the calibration site ({len(records)} images)",
        fit_images=max(len(fit_part) // 2, 1),
        norm_images=len(fit_part),
        batch_size=batch_size,
        device=device,
    )
    if guard is None:
        return {"layers": [], "why": f"{bundle.backbone_name} has no guard layers"}
    return {
        "layers": list(guard.layers),
        "cutoff": guard.cutoff,
        "quantile": guard.quantile,
        "images": {
            "fit": len(fit_part) - len(fit_part) // 2,
            "normalise": len(fit_part) // 2,
            "cutoff": len(cut_part),
        },
    }


def refit_site_type(
    bundle: ModelBundle, scored: RecordScores, site: str | Path | None
) -> dict[str, Any] | None:
    """The type threshold refitted by the training rule when the site's pneumonia images carry
    both types (names, type folders or a labels.csv); left alone otherwise. None: no type
    head."""
    if bundle.type_decision is None or scored.scores.answers.get(TYPE.name) is None:
        return None
    from pneumonia_cxr.data.pneumonia_types import read_labels_csv, type_labels
    from pneumonia_cxr.training.operating_point import fit_type_decision

    listed = read_labels_csv(site) if site is not None else {}
    types = np.asarray(type_labels(scored.kept, listed))
    if len(set(types[types >= 0].tolist())) < 2:
        return {"refitted": False, "why": "the site's pneumonia images do not carry both types"}
    parent = bundle.type_decision.threshold
    bundle.type_decision = fit_type_decision(
        types, scored.scores.answers.get(TYPE.name), "the calibration site"
    )
    return {"refitted": True, "threshold": bundle.type_decision.threshold, "parent": parent}
