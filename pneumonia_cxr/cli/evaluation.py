"""The commands that measure or package a trained model: `evaluate`, `explain-check`,
`ensemble`, `export`."""

from __future__ import annotations

import argparse
from pathlib import Path

from pneumonia_cxr.cli.common import (
    _add_data_args,
    _add_device_arg,
    _add_model_path_arg,
    _model_path_or_shipped,
    _positive_int,
)
from pneumonia_cxr.data import SPLITS
from pneumonia_cxr.evaluation import THRESHOLD_RULES
from pneumonia_cxr.explain import CAM_METHODS, EXPLAIN_IMAGES_IN_EVALUATE


def add_evaluate_args(parser: argparse.ArgumentParser) -> None:
    """Flags of `evaluate` (also used by scripts/evaluate.py through `main`)."""
    _add_model_path_arg(parser)
    parser.add_argument(
        "--dataset_path",
        help="dataset folder (default: $PNEUMONIA_CXR_DATA, then the dataset the model was "
        "trained on if still present, then the cache or a download)",
    )
    parser.add_argument("--split", default="test", choices=SPLITS)
    _add_device_arg(parser)
    parser.add_argument("--output_dir", help="default: <model file folder>/eval_<split>")
    parser.add_argument("--batch_size", type=_positive_int, default=32)
    parser.add_argument("--num_workers", type=int, default=0, help="image decoding processes")
    parser.add_argument(
        "--n_resamples", type=_positive_int, default=2000, help="bootstrap resamples"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and picks")
    parser.add_argument("--gradcam_method", default="gradcam", choices=CAM_METHODS)
    parser.add_argument(
        "--explain_images",
        type=int,
        default=EXPLAIN_IMAGES_IN_EVALUATE,
        help="images per heatmap sanity check in the report (0: skip them)",
    )
    parser.add_argument(
        "--audit",
        action="store_true",
        help="add the shortcut audit: AUC when the model sees only the frame, only the lung "
        "fields, or the image without its frame; Grad-CAM energy in the frame",
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pneumonia_cxr.evaluation.evaluate import evaluate_model
    from pneumonia_cxr.evaluation.report import headline

    model_path = _model_path_or_shipped(args.model_path)
    result = evaluate_model(
        model_path,
        args.dataset_path,
        split=args.split,
        device=args.device,
        output_dir=args.output_dir,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        n_resamples=args.n_resamples,
        seed=args.seed,
        gradcam_method=args.gradcam_method,
        explain_images=args.explain_images,
        audit=args.audit,
    )
    print(headline(result.metrics))
    if result.metrics["skipped_files"]:
        print(f"skipped {result.metrics['skipped_files']} unreadable file(s), see metrics.json")
    print(f"metrics: {result.files['metrics']}")
    print(f"report: {result.report}")
    print(f"Grad-CAM grid: {result.gradcam_grid}")
    return 0


def cmd_explain_check(args: argparse.Namespace) -> int:
    from pneumonia_cxr.explain.check import explain_check_job, pointing_game_summary

    result, path = explain_check_job(
        args.model_path,
        args.dataset_path,
        n_images=args.n_images,
        output_dir=args.output_dir,
        method=args.method,
        seed=args.seed,
    )
    rand = result["randomization"]
    spearman = rand.get("mean_spearman")
    print(
        "randomization test: mean Spearman "
        + (f"{spearman:.3f}" if spearman is not None else "n/a")
        + " (lower = maps depend more on the learned weights)"
        + (
            f"; {rand['n_constant']} of {rand['n_images']} pairs flat"
            if rand.get("n_constant")
            else ""
        )
    )
    game = result["pointing_game"]
    if game and game.get("accuracy") is not None:
        print(f"pointing game: {pointing_game_summary(game)}")
    else:
        print(f"pointing game: not run ({result['pointing_game_note'] or 'no boxed image'})")
    print(f"written: {path}")
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from pneumonia_cxr.training.ensemble import build_ensemble

    bundle = build_ensemble(
        args.members,
        args.output,
        rule=args.threshold_rule,
        min_sensitivity=args.min_sensitivity,
        half=not args.float32,
        ood_train_images=args.ood_train_images,
        device=args.device,
    )
    print(
        f"ensemble of {len(args.members)} written to {args.output}: threshold "
        f"{bundle.threshold:.4f} ({bundle.threshold_rule}, validation), OOD cut-off "
        f"{bundle.ood.cutoff:.3f} (99% of validation images pass)"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pneumonia_cxr.export import export_onnx
    from pneumonia_cxr.model.model_file import load_model

    output = Path(args.output or Path(args.model_path).with_suffix(".onnx"))
    path = export_onnx(load_model(args.model_path), output)
    print(f"ONNX model (dynamic batch; preprocessing and threshold in its metadata): {path}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """`evaluate`, `explain-check`, `ensemble` and `export`."""
    evaluate = sub.add_parser(
        "evaluate", help="metrics with CIs, plots, Grad-CAM grid and an HTML report"
    )
    add_evaluate_args(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    check = sub.add_parser(
        "explain-check", help="do the heatmaps mean something? randomization + pointing game"
    )
    _add_model_path_arg(check)
    _add_data_args(check)
    check.add_argument("--n_images", type=_positive_int, default=16)
    check.add_argument("--output_dir", help="default: <model file folder>/explain_check")
    check.add_argument("--method", default="gradcam", choices=CAM_METHODS)
    check.add_argument("--seed", type=int, default=0)
    check.set_defaults(func=cmd_explain_check)

    ensemble = sub.add_parser(
        "ensemble", help="several trained runs -> one model file (threshold, OOD on validation)"
    )
    ensemble.add_argument("members", nargs="+", help="final_pneumonia_model.pt of each run")
    ensemble.add_argument("--output", required=True, help="the ensemble's model file (.pt)")
    ensemble.add_argument(
        "--threshold_rule", choices=THRESHOLD_RULES, help="default: the members' rule"
    )
    ensemble.add_argument("--min_sensitivity", type=float, help="default: the members' value")
    ensemble.add_argument("--float32", action="store_true", help="store float32, not float16")
    ensemble.add_argument("--ood_train_images", type=_positive_int, default=1500)
    _add_device_arg(ensemble)
    ensemble.set_defaults(func=cmd_ensemble)

    export = sub.add_parser("export", help="export a model file for fast inference")
    _add_model_path_arg(export, required=True)
    export.add_argument("--format", choices=["onnx"], default="onnx")
    export.add_argument("--output", help="default: the model path with .onnx")
    export.set_defaults(func=cmd_export)
