"""Make a model work at a new site (`pneumonia-cxr adapt`): a new head on frozen multi-layer
features, chosen and estimated on all of the site's labelled images by cross-fitting by patient.

Why this recipe (issue 35): at a hospital whose films the shipped model does not understand, a
logistic regression on a frozen network's mean-pooled layer maps separated other patients far
better than fine-tuning (AUC 0.91 against 0.71-0.78 on 485 films), in seconds after one pass of
feature extraction, and its cross-validated AUC inside the fitting images predicted the
held-out figure within 0.01. Which network's features serve best differs by site, so the
command tries the recipes of `site.probe.PROBE_RECIPES` and lets the site's own images choose.

The steps: the site's images are split into `folds` by patient. The model as it is is measured
on all of them (it never saw them). For each recipe and regularisation strength C of a stated
grid, every image gets an out-of-fold logit from a head fitted on the other folds; the recipe
and C whose pooled out-of-fold ROC AUC is highest are chosen (`probe.choose`, a rule stated
before measuring). Those out-of-fold predictions (one C in every fold, so one logit scale, the
final head's) are the estimate of how the adapted model does at the site, and the threshold and
temperature are fitted on them, never on in-sample scores. Beside it, a nested cross-fit
(`probe.nested_cross_fit`: recipe and C chosen inside each fold's other folds) shows how much
the choice flatters the estimate; on small sites it reads low, because its folds' heads differ
in C and so in logit scale, which pooling penalises (measured: docs/adapt.md). The final head
is fitted on all images; the applicability guard is refitted on the site (densities,
normalisation and cut-off on separate thirds). The file is written whatever the verdict, and
carries it; the exit status says it. Only what the data cannot support is refused, before any work.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia_cxr import TYPE_NAMES
from pneumonia_cxr.config import ADAPT_MIN_SENSITIVITY
from pneumonia_cxr.data.discovery import ImageRecord
from pneumonia_cxr.data.site import list_site_images, patient_of, read_patients_csv, site_folds
from pneumonia_cxr.errors import EvaluationInputError
from pneumonia_cxr.evaluation.metrics import Estimate
from pneumonia_cxr.evaluation.threshold import fit_operating_point
from pneumonia_cxr.model.decision import probability
from pneumonia_cxr.model.model_file import ModelBundle, load_model
from pneumonia_cxr.site import (
    DEFAULT_ADAPT_RECIPES,
    MIN_IMAGES_PER_CLASS,
    MIN_PATIENTS_PER_CLASS,
)
from pneumonia_cxr.site.calibrate import class_counts
from pneumonia_cxr.site.finetune import FINETUNE, cross_fit_finetune, final_finetune
from pneumonia_cxr.site.held_out import (
    HeldOut,
    format_held_out,
    format_interval,
    held_out_figures,
    held_out_measure,
    write_site_model,
)
from pneumonia_cxr.site.probe import (
    PROBE_RECIPES,
    auc,
    choose,
    extract_features,
    feature_network,
    fit_probe,
    nested_cross_fit,
)
from pneumonia_cxr.site.refit import refit_site_guard
from pneumonia_cxr.storage import atomic_write_text

log = logging.getLogger(__name__)

IMAGES_PER_SECOND = {"efficientnet_lite0": 20.0, "resnet50_keras": 9.0}
"""Feature extraction speed measured on 2 CPU cores at 224 px (issue 35): the time estimate
`adapt` prints before the long part (other backbones: the slower figure)."""


@dataclass
class AdaptOutcome:
    """What `adapt_site` measured and wrote."""

    before: HeldOut
    after: HeldOut
    record: dict[str, Any]
    output: Path
    report: dict[str, Any]

    @property
    def useful(self) -> bool:
        return bool(self.after.verdict["useful"])


def _patients(records: Sequence[ImageRecord], patients: dict[str, str]) -> list[str]:
    return [patient_of(r, patients) or f"image:{i}" for i, r in enumerate(records)]


def site_counts(records: Sequence[ImageRecord], patients: Sequence[str]) -> dict[str, Any]:
    """Images and patients per class (a patient with films of both classes counts in both)."""
    counts = class_counts(records)
    owners = {
        name: len({p for r, p in zip(records, patients, strict=True) if r.class_name == name})
        for name in counts
    }
    return {"images": counts, "patients": owners}


def check_site(counts: dict[str, Any], folds: int, force: bool) -> None:
    """Refuse only what the data cannot support, with the numbers: a class missing, fewer
    than `folds` patients of a class (a fold without it), or, unless `force`, fewer than
    `MIN_IMAGES_PER_CLASS` images or `MIN_PATIENTS_PER_CLASS` patients of a class."""
    if folds < 3:
        raise EvaluationInputError(
            f"--folds {folds}: at least 3 are needed (the nested estimate chooses inside the "
            "other folds, which must be at least two)"
        )
    images, patients = counts["images"], counts["patients"]
    missing = [name for name, n in images.items() if n == 0]
    if missing:
        raise EvaluationInputError(
            f"the site has no {' or '.join(missing)} image ({images}); adapting needs labelled "
            "images of both classes"
        )
    few = {name: n for name, n in patients.items() if n < folds}
    if few:
        raise EvaluationInputError(
            f"the site has too few patients to cross-fit {folds} folds: {few} (images "
            f"{images}); every fold needs each class. Add patients or lower --folds"
        )
    small = {name: n for name, n in images.items() if n < MIN_IMAGES_PER_CLASS}
    thin = {name: n for name, n in patients.items() if n < MIN_PATIENTS_PER_CLASS}
    if (small or thin) and not force:
        raise EvaluationInputError(
            f"the site is too small for an estimate that means something: images {images}, "
            f"patients {patients}; at least {MIN_IMAGES_PER_CLASS} images and "
            f"{MIN_PATIENTS_PER_CLASS} patients per class are needed (below that the "
            "out-of-fold AUC's 95% CI is wider than about +-0.1). Add images, or pass --force"
        )


def _fold_numbers(
    records: Sequence[ImageRecord], folds: int, seed: int, patients: dict[str, str]
) -> np.ndarray:
    parts = site_folds(records, folds, seed, patients)
    where = {id(r): k for k, part in enumerate(parts) for r in part}
    return np.array([where[id(r)] for r in records])


def _estimate_line(recipes: Sequence[str], parent: ModelBundle, n: int, folds: int) -> str:
    """The time budget, said before the long part."""
    probes = [name for name in recipes if name != FINETUNE]
    seconds = 0.0
    for name in probes:
        backbone = PROBE_RECIPES[name].backbone or parent.backbone_name
        seconds += n / IMAGES_PER_SECOND.get(backbone, min(IMAGES_PER_SECOND.values()))
    line = (
        f"features: {len(probes)} network(s) x {n} images, about {seconds / 60:.0f} min on 2 "
        "CPU cores (the long part; resumable); cross-fitting the heads: seconds"
    )
    if FINETUNE in recipes:
        line += f"; finetune: {folds + 1} training runs, minutes each (resumable)"
    return line


def _site_features(
    parent: ModelBundle,
    recipes: Sequence[str],
    records: Sequence[ImageRecord],
    work: Path,
    batch_size: int,
    device: str | None,
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, str]]:
    """Each available recipe's features, its network bundle, and why any recipe is missing."""
    from tqdm import tqdm

    features: dict[str, np.ndarray] = {}
    networks: dict[str, Any] = {}
    missing: dict[str, str] = {}
    bar = tqdm(total=len(recipes) * len(records), unit="image", desc="features", file=sys.stderr)
    for name in recipes:
        try:
            network, preprocessing = feature_network(PROBE_RECIPES[name], parent)
        except (FileNotFoundError, ImportError, OSError) as error:
            missing[name] = str(error).splitlines()[0][:300]
            log.warning("recipe %s not available here: %s", name, missing[name])
            bar.update(len(records))
            continue
        bundle = ModelBundle(model=network, preprocessing=preprocessing)
        features[name] = extract_features(
            bundle,
            records,
            work / "features" / f"{name}.npy",
            batch_size=batch_size,
            device=device,
            progress=bar.update,
        )
        networks[name] = bundle
    bar.close()
    return features, networks, missing


def _site_type(
    bundle: ModelBundle,
    features: np.ndarray,
    records: Sequence[ImageRecord],
    site: Path,
    fold_of: np.ndarray,
    folds: int,
) -> dict[str, Any]:
    """The bacterial/viral question fitted on the site's own pneumonia films when they say
    which is which (Kermany names, type folders or a labels.csv) and hold at least `folds`
    patients' films of each type: a type probe on the same features, its C and threshold from
    out-of-fold predictions by the same patient folds. Otherwise the adapted file has no type
    head (the training hospital's is not carried over): "not available", with the reason."""
    from pneumonia_cxr.data.pneumonia_types import read_labels_csv, type_labels
    from pneumonia_cxr.model.classifier import LinearProbe
    from pneumonia_cxr.training.operating_point import fit_type_decision

    types = np.asarray(type_labels(records, read_labels_csv(site)))
    known = types >= 0
    per_type = {name: int((types == k).sum()) for k, name in enumerate(TYPE_NAMES)}
    fold_types = [set(types[known & (fold_of == k)].tolist()) for k in range(folds)]
    if min(per_type.values()) < folds or any(len(t) < 2 for t in fold_types):
        return {
            "available": False,
            "images": per_type,
            "why": "the site's pneumonia images do not say which is bacterial and which viral "
            f"in every fold ({per_type}; names, type folders or a labels.csv); the training "
            "hospital's bacterial/viral head is not carried over to the site",
        }
    choice = choose({"type": features[known]}, types[known], fold_of[known])
    p_viral = probability(choice.logits["type"])
    decision = fit_type_decision(types[known], p_viral, "the site's out-of-fold predictions")
    network = bundle.model
    network.type_head, network.type_head_width = LinearProbe(network.num_features), 0
    fit_probe(network.type_head, features[known], types[known], choice.c)
    bundle.type_decision = decision
    measure = held_out_measure(
        types[known], p_viral, decision.threshold, decision.rule, np.zeros(int(known.sum()))
    )
    return {
        "available": True,
        "images": per_type,
        "c": choice.c,
        "out_of_fold": measure.record(),
        "why": f"fitted on the site's {int(known.sum())} pneumonia images of known type",
    }


def _rates(labels: np.ndarray, decisions: np.ndarray) -> dict[str, dict[str, float]]:
    """Sensitivity and specificity of decisions with Wilson 95% intervals (the nested
    operating point's: a threshold per fold, so no single threshold to bootstrap)."""
    from pneumonia_cxr.evaluation.metrics import wilson_interval

    rates = {}
    for name, positive in (("sensitivity", 1), ("specificity", 0)):
        mine = labels == positive
        hits = int((decisions[mine] == positive).sum())
        low, high = wilson_interval(hits, int(mine.sum()))
        rates[name] = {"value": hits / int(mine.sum()), "ci_low": low, "ci_high": high}
    return rates


def _start_or_resume(
    work: Path,
    model_path: Path,
    records: Sequence[ImageRecord],
    fold_of: np.ndarray,
    recipes: Sequence[str],
    seed: int,
) -> None:
    """Keep the work folder's features, folds and runs only when they were made for this very
    run (the parent's sha256, the site's images, the folds, the recipes, the seed); otherwise
    start afresh, so that a re-run with other settings never mixes in stale work."""
    import hashlib
    import shutil

    from pneumonia_cxr.data.fingerprint import records_fingerprint
    from pneumonia_cxr.data.split import file_sha256

    key = {
        "parent_sha256": file_sha256(model_path),
        "site": records_fingerprint(records, "site"),
        "folds": hashlib.sha256(np.asarray(fold_of, dtype=np.int64).tobytes()).hexdigest(),
        "recipes": list(recipes),
        "seed": seed,
    }
    path = work / "run_key.json"
    if path.is_file() and json.loads(path.read_text()) != key:
        log.warning("%s holds work of other settings: starting afresh", work)
        for stale in [work / "features", work / "folds", *work.glob(f"{FINETUNE}_*")]:
            shutil.rmtree(stale, ignore_errors=True)
    atomic_write_text(path, json.dumps(key))


def _fold_store(work: Path) -> tuple[dict[int, dict[str, Any]], Any]:
    """Finished outer folds (resume) and the callback that records each new one."""
    folder = work / "folds"
    done = {
        int(path.stem.removeprefix("fold")): json.loads(path.read_text())
        for path in sorted(folder.glob("fold*.json"))
    }

    def save(fold: int, result: dict[str, Any]) -> None:
        atomic_write_text(folder / f"fold{fold}.json", json.dumps(result))

    return done, save


def adapt_site(
    model_path: str | Path,
    site: str | Path,
    output: str | Path,
    *,
    work_dir: str | Path | None = None,
    split: str = "test",
    rule: str = "max_specificity_at_sensitivity",
    min_sensitivity: float = ADAPT_MIN_SENSITIVITY,
    folds: int = 5,
    recipes: Sequence[str] = DEFAULT_ADAPT_RECIPES,
    seed: int = 0,
    force: bool = False,
    batch_size: int = 32,
    device: str | None = None,
    report_dir: str | Path | None = None,
) -> AdaptOutcome:
    """`pneumonia-cxr adapt`: a site folder and a model in, an adapted model file and a site
    report out, whatever the verdict (module docstring). Re-running the same command resumes
    where it stopped (features batch by batch, heads fold by fold)."""
    from pneumonia_cxr.site.report import write_site_report

    model_path, site, output = Path(model_path), Path(site), Path(output)
    work = Path(work_dir) if work_dir is not None else output.with_name(output.stem + "_adapt")
    unknown = [name for name in recipes if name not in (*PROBE_RECIPES, FINETUNE)]
    if unknown:
        known = [*PROBE_RECIPES, FINETUNE]
        raise EvaluationInputError(f"unknown recipe(s) {unknown}; choose from {known}")
    records = list_site_images(site, split)
    patients = read_patients_csv(site)
    owners = _patients(records, patients)
    counts = site_counts(records, owners)
    check_site(counts, folds, force)
    parent = load_model(model_path)
    members = len(parent.model.members)
    if FINETUNE in recipes and (members > 1 or parent.model.members[0].probe_layers):
        raise EvaluationInputError(
            f"{model_path}: the finetune recipe fine-tunes one network with its own head; this "
            f"file is {'an ensemble' if members > 1 else 'an adapted (probe) model'}: give its "
            "parent, or leave finetune out of --recipes"
        )
    if members > 1:
        log.warning("probe_parent reads the first of the ensemble's %d networks", members)
    labels = np.array([r.label for r in records])
    fold_of = _fold_numbers(records, folds, seed, patients)
    _start_or_resume(work, model_path, records, fold_of, recipes, seed)
    print(
        f"site {site}: {counts['images']} images, {counts['patients']} patients; "
        f"{folds} folds by patient",
        file=sys.stderr,
    )
    before = held_out_figures(
        model_path, records, device=device, engine="torch", batch_size=batch_size
    )
    print(_estimate_line(recipes, parent, len(records), folds), file=sys.stderr)
    probes = [name for name in recipes if name != FINETUNE]
    features, networks, missing = _site_features(parent, probes, records, work, batch_size, device)
    if not features and FINETUNE not in recipes:
        raise EvaluationInputError(f"no adapt recipe can run here: {missing}")
    candidates: dict[str, dict[str, Any]] = {}
    chosen, c, oof_logits, nested, crossed = "", None, np.zeros(0), None, None
    if features:
        done, save = _fold_store(work)
        crossed = nested_cross_fit(
            features,
            labels,
            fold_of,
            rule=rule,
            min_sensitivity=min_sensitivity,
            on_fold=save,
            done=done,
        )
        final = choose(features, labels, fold_of)
        candidates = {
            name: {
                **final.candidates[name],
                "nested_oof_auc": auc(labels, crossed.per_recipe[name]),
            }
            for name in features
        }
        chosen, c, oof_logits = final.recipe, final.c, final.logits[final.recipe]
        nested = auc(labels, crossed.logits)
    if FINETUNE in recipes:
        tuned = cross_fit_finetune(
            model_path,
            records,
            fold_of,
            patients,
            work,
            seed=seed,
            batch_size=batch_size,
            device=device,
        )
        candidates[FINETUNE] = {"c": None, "cv_auc": auc(labels, tuned), "nested_oof_auc": None}
        if not chosen or candidates[FINETUNE]["cv_auc"] > candidates[chosen]["cv_auc"]:
            chosen, c, oof_logits = FINETUNE, None, tuned
    point = fit_operating_point(labels, oof_logits, rule=rule, min_sensitivity=min_sensitivity)
    oof_probabilities = probability(oof_logits, point.temperature)
    if chosen == FINETUNE:
        bundle = final_finetune(
            model_path, records, patients, work, seed=seed, batch_size=batch_size
        )
    else:
        bundle = networks[chosen]
        fit_probe(bundle.model.head, features[chosen], labels, c)
    bundle.class_names = parent.class_names
    bundle.set_operating_point(point)
    bundle.intended_use = replace(
        parent.intended_use,
        population=f"the images of the site it was adapted on ({site.name}: {len(records)} "
        "labelled images)",
        min_age_years=0.0,
        max_age_years=150.0,
    )
    kind = (
        _site_type(bundle, features[chosen], records, site, fold_of, folds)
        if chosen != FINETUNE
        else {
            "available": False,
            "images": {},
            "why": "the fine-tuned network has no type head (the training hospital's is dropped)",
        }
    )
    guard = refit_site_guard(bundle, records, device, batch_size, seed)
    # Out-of-fold flags are not defined for the guard (fitted on thirds); `after.flagged`
    # counts the written model's flags on the site below.
    after = held_out_measure(
        labels, oof_probabilities, point.threshold, rule, np.zeros(len(labels), dtype=bool)
    )
    nested_at_target, verdict_from = None, "out of fold"
    if crossed is not None and chosen != FINETUNE:
        nested_at_target = _rates(labels, crossed.decisions)
        nested_auc = held_out_measure(
            labels, probability(crossed.logits), 0.5, "fixed_0.5", np.zeros(len(labels))
        )
        if (nested_auc.metrics.roc_auc.ci_low or 0.0) < (after.metrics.roc_auc.ci_low or 0.0):
            after, verdict_from = replace(after, verdict=nested_auc.verdict), "nested"
    record = {
        "recipe": chosen,
        "c": c,
        "cv_auc": candidates[chosen]["cv_auc"],
        "candidates": candidates,
        "not_available": missing,
        "folds": folds,
        "seed": seed,
        "split": "by patient" if patients else "by patient where known",
        "site": counts,
        "outer_folds_chose": crossed.chosen if crossed is not None else [],
        "nested_oof_auc": nested,
        "nested_at_target": nested_at_target,
        "verdict_from": verdict_from,
        "threshold_rule": rule,
        "min_sensitivity": min_sensitivity,
        "held_out_before": before.record(),
        "out_of_fold_after": after.record(),
        "type": kind,
        "guard": guard,
    }
    calibration = {
        "verdict": after.verdict,
        "images": counts["images"],
        "threshold_rule": rule,
        "min_sensitivity": min_sensitivity,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "adapted": chosen,
        "out_of_fold": True,
        "site_sensitivity": after.metrics.sensitivity.value,
        "site_specificity": after.metrics.specificity.value,
        "forced": bool(
            force
            and (
                min(counts["images"].values()) < MIN_IMAGES_PER_CLASS
                or min(counts["patients"].values()) < MIN_PATIENTS_PER_CLASS
            )
        ),
    }
    bundle.extra = {**bundle.extra, "calibration": calibration}
    record = write_site_model(
        bundle, output, "adaptation", record, parent=model_path, records=records
    )
    written = held_out_figures(
        output, records, device=device, engine="torch", batch_size=batch_size
    )
    after = replace(after, flagged=written.flagged)
    report = write_site_report(
        Path(report_dir) if report_dir is not None else output.with_name(output.stem + "_report"),
        record=record,
        before=before,
        after=after,
        output=output,
    )
    return AdaptOutcome(before, after, record, output, report)


def format_adapt_report(outcome: AdaptOutcome) -> str:
    """What `adapt` prints: before, the candidates, after (out of fold), and the verdict."""
    record = outcome.record
    lines = [
        f"site: {record['site']['images']} images, {record['site']['patients']} patients, "
        f"{record['folds']} folds by patient",
        format_held_out("the model as it was, on all site images", outcome.before),
    ]
    for name, figures in record["candidates"].items():
        strength = f" (C {figures['c']:g})" if figures["c"] is not None else ""
        nested = figures["nested_oof_auc"]
        lines.append(
            f"  recipe {name}: cross-validated AUC {figures['cv_auc']:.3f}{strength}"
            + (f", nested out-of-fold AUC {nested:.3f}" if nested is not None else "")
        )
    for name, why in record["not_available"].items():
        lines.append(f"  recipe {name}: not available here ({why})")
    lines += [
        f"chosen: {record['recipe']}"
        + (f" (C {record['c']:g})" if record["c"] is not None else "")
        + (
            f"; nested out-of-fold AUC of the probes' choice: {record['nested_oof_auc']:.3f}"
            if record["nested_oof_auc"] is not None
            else ""
        ),
        format_held_out(
            "adapted, out of fold (each image by a head that never saw its patient)",
            outcome.after,
            record["min_sensitivity"],
        ),
        *_nested_line(record),
        f"verdict: {outcome.after.verdict['text'].split(';')[0]} (from the {record['verdict_from']}"
        " estimate, the more cautious)",
        _type_line(record["type"]),
        f"written: {outcome.output}; report: {outcome.report['html']}",
    ]
    if not outcome.useful:
        lines.append(
            "the adapted file carries this verdict: do not use it at this site (exit status 3)"
        )
    return "\n".join(lines)


def _type_line(kind: dict[str, Any]) -> str:
    if not kind["available"]:
        return f"type (bacterial/viral): not available from the adapted model ({kind['images']})"
    auc = kind["out_of_fold"]["roc_auc"]
    return (
        f"type (bacterial/viral): fitted on the site ({kind['images']}), out-of-fold ROC AUC "
        f"{format_interval(Estimate.from_dict(auc), percent=False)}"
    )


def _nested_line(record: dict[str, Any]) -> list[str]:
    nested = record.get("nested_at_target")
    if not nested:
        return []
    sensitivity, specificity = (
        format_interval(Estimate.from_dict(nested[name])) for name in ("sensitivity", "specificity")
    )
    return [
        f"nested, the threshold fitted inside each fold too: sensitivity {sensitivity}, "
        f"specificity {specificity} (what the threshold rule gives on patients it never saw)"
    ]
