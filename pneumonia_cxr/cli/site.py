"""The commands that fit a model to a new site's own labelled images: `calibrate` (refit the
operating point) and `adapt` (a new head on frozen features, estimated out of fold)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pneumonia_cxr.cli.common import (
    _add_device_arg,
    _add_model_path_arg,
    _model_path_or_shipped,
    _positive_int,
)
from pneumonia_cxr.config import ADAPT_MIN_SENSITIVITY, RunConfig
from pneumonia_cxr.data import SPLITS
from pneumonia_cxr.evaluation import THRESHOLD_RULES
from pneumonia_cxr.site import (
    ADAPT_RECIPE_NAMES,
    DEFAULT_ADAPT_RECIPES,
    MIN_IMAGES_PER_CLASS,
    MIN_PATIENTS_PER_CLASS,
    NOT_USEFUL_EXIT,
)


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Measure a model on a site's images, refit its operating point there, write a new file."""
    import json

    from pneumonia_cxr.site.calibrate import calibrate_site, format_report
    from pneumonia_cxr.site.held_out import format_held_out

    outcome = calibrate_site(
        _model_path_or_shipped(args.model_path),
        args.dataset_path,
        args.output,
        split=args.split,
        rule=args.threshold_rule,
        min_sensitivity=args.min_sensitivity,
        force=args.force,
        check_fold=args.check_fold,
        folds=args.folds,
        seed=args.seed,
        device=args.device,
        batch_size=args.batch_size,
    )
    print(format_report(outcome.result, outcome.records, checked=outcome.held_out is not None))
    if outcome.held_out is not None:
        held = outcome.held_out
        name = f"held-out fold {args.check_fold} ({held.metrics.n} images of other patients)"
        print(format_held_out(name, held, args.min_sensitivity))
        if args.check_output:
            Path(args.check_output).write_text(json.dumps(held.to_json()) + "\n")
    print(f"written: {args.output}")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    """Fit a new head on frozen features of a site's images, estimate it out of fold, write
    the adapted file and the site report; the exit status says the verdict."""
    from pneumonia_cxr.site.adapt import adapt_site, format_adapt_report

    outcome = adapt_site(
        _model_path_or_shipped(args.model_path),
        args.dataset_path,
        args.output,
        work_dir=args.work_dir,
        split=args.split,
        rule=args.threshold_rule,
        min_sensitivity=args.min_sensitivity,
        folds=args.folds,
        recipes=tuple(args.recipes.split(",")),
        seed=args.seed,
        force=args.force,
        batch_size=args.batch_size,
        device=args.device,
        report_dir=args.report_dir,
    )
    print(format_adapt_report(outcome))
    return 0 if outcome.useful else NOT_USEFUL_EXIT


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """`calibrate` and `adapt`."""
    calibrate = sub.add_parser(
        "calibrate",
        help="measure a model on your own labelled images and refit its threshold there",
    )
    _add_model_path_arg(calibrate)
    calibrate.add_argument(
        "--dataset_path",
        required=True,
        help="a folder with NORMAL/ and PNEUMONIA/ (or the official layout: see --split)",
    )
    calibrate.add_argument("--split", default="test", choices=SPLITS, help="official layout only")
    calibrate.add_argument("--output", required=True, help="the calibrated model file (.pt)")
    defaults = RunConfig().train  # one place for the threshold rule's defaults
    calibrate.add_argument(
        "--threshold_rule", default=defaults.threshold_rule, choices=THRESHOLD_RULES
    )
    calibrate.add_argument("--min_sensitivity", type=float, default=defaults.min_sensitivity)
    calibrate.add_argument(
        "--force",
        action="store_true",
        help=f"calibrate even with < {MIN_IMAGES_PER_CLASS} images in a class",
    )
    calibrate.add_argument(
        "--folds", type=int, default=2, help="patient-level folds for --check_fold"
    )
    calibrate.add_argument(
        "--check_fold",
        type=int,
        help="fit on the other folds and report what the new threshold achieves on this one",
    )
    calibrate.add_argument("--check_output", help="JSON of the held-out fold's figures")
    calibrate.add_argument("--seed", type=int, default=0, help="seed of the patient folds")
    calibrate.add_argument("--batch_size", type=_positive_int, default=32)
    _add_device_arg(calibrate)
    calibrate.set_defaults(func=cmd_calibrate)

    adapt = sub.add_parser(
        "adapt",
        help="make the model work at a new site: a new head on frozen features of all of its "
        "labelled images, chosen and estimated out of fold by patient; exit 0 useful, "
        f"{NOT_USEFUL_EXIT} written but not useful, 2 refused",
    )
    _add_model_path_arg(adapt)
    adapt.add_argument(
        "--dataset_path",
        required=True,
        help="the site's folder with NORMAL/ and PNEUMONIA/ (or the official layout: --split); "
        "a patients.csv (file,patient) keeps each patient in one fold",
    )
    adapt.add_argument("--split", default="test", choices=SPLITS, help="official layout only")
    adapt.add_argument("--output", required=True, help="the adapted model file (.pt)")
    adapt.add_argument(
        "--work_dir", help="features and finished folds (default: beside --output); resumable"
    )
    adapt.add_argument(
        "--report_dir", help="site_report.html and .json (default: <output>_report/ beside it)"
    )
    adapt.add_argument("--threshold_rule", default=defaults.threshold_rule, choices=THRESHOLD_RULES)
    adapt.add_argument(
        "--min_sensitivity",
        type=float,
        default=ADAPT_MIN_SENSITIVITY,
        help=f"the out-of-fold sensitivity the threshold aims at (default {ADAPT_MIN_SENSITIVITY})",
    )
    adapt.add_argument(
        "--folds", type=_positive_int, default=5, help="patient folds of the cross-fitting"
    )
    adapt.add_argument(
        "--recipes",
        default=",".join(DEFAULT_ADAPT_RECIPES),
        help=f"comma-separated, from {', '.join(ADAPT_RECIPE_NAMES)} (finetune: folds + 1 "
        "training runs, minutes each; asked for by name)",
    )
    adapt.add_argument("--seed", type=int, default=0, help="seed of the patient folds")
    adapt.add_argument(
        "--force",
        action="store_true",
        help=f"go on with < {MIN_IMAGES_PER_CLASS} images or < {MIN_PATIENTS_PER_CLASS} "
        "patients of a class",
    )
    adapt.add_argument("--batch_size", type=_positive_int, default=32)
    _add_device_arg(adapt)
    adapt.set_defaults(func=cmd_adapt)
