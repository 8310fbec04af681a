"""The commands that make a model: `data` (look at the dataset first), `train`, `distill`,
`demo`."""

from __future__ import annotations

import argparse
import json
import logging

from pneumonia_cxr.cli.common import _add_data_args, _model_path_or_shipped
from pneumonia_cxr.cli.config_flags import add_train_args, config_from_args
from pneumonia_cxr.config import RunConfig

EPOCH_FLAGS = ("stage1_epochs", "stage2_epochs")


def cmd_data(args: argparse.Namespace) -> int:
    from pneumonia_cxr.data.discovery import resolve_dataset
    from pneumonia_cxr.data.summary import format_summary, summarize_dataset

    summary = summarize_dataset(resolve_dataset(args.dataset_path), check_readable=not args.fast)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pneumonia_cxr.training.run import train

    # Which pretrained weights a run starts from is part of its record: said without -v too.
    logging.getLogger("pneumonia_cxr.model.keras_resnet50").setLevel(logging.INFO)
    if args.resume:
        overrides = {k: getattr(args, k) for k in EPOCH_FLAGS if getattr(args, k) is not None}
        run_dir = train(resume=args.resume, epoch_overrides=overrides)
    else:
        config = config_from_args(args)
        if args.init_from:
            from pneumonia_cxr.training.init_from import adopt_parent

            adopt_parent(config, args.init_from)
        run_dir = train(config)
    print(f"run folder: {run_dir}")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    """`train` with a teacher: same pipeline, the teacher's split, soft targets."""
    from pneumonia_cxr.data.split import file_sha256
    from pneumonia_cxr.model.model_file import load_model
    from pneumonia_cxr.training.distill import teacher_split_settings
    from pneumonia_cxr.training.run import train

    if args.resume:
        return cmd_train(args)
    teacher = _model_path_or_shipped(args.teacher)
    config = config_from_args(args)
    if args.init_from:
        from pneumonia_cxr.training.init_from import adopt_parent

        adopt_parent(config, args.init_from)
    split_seed, val_fraction = teacher_split_settings(load_model(teacher), teacher)
    if args.split_seed is None:
        config.data.split_seed = split_seed
    if args.val_fraction is None:
        config.data.val_fraction = val_fraction
    config.distill.teacher = str(teacher.resolve())
    config.distill.teacher_sha256 = file_sha256(teacher)
    config.distill.alpha = args.distill_alpha
    print(f"run folder: {train(config)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Synthetic data -> training -> evaluation on its test split, report and Grad-CAM grid."""
    from pneumonia_cxr.demo import run_demo
    from pneumonia_cxr.evaluation.report import headline

    result = run_demo(args.output_dir, overwrite=args.overwrite)
    print(f"synthetic demo data (NOT medical images): {result.data_dir}")
    print(f"run folder: {result.run_dir}")
    print(f"model file: {result.model_path}")
    print(f"test split (synthetic): {headline(result.evaluation.metrics)}")
    print(f"report: {result.evaluation.report}")
    print(f"Grad-CAM grid: {result.evaluation.gradcam_grid}")
    print(f"metrics: {result.evaluation.files['metrics']}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """`data`, `train`, `distill` and `demo`."""
    data = sub.add_parser("data", help="summarise a dataset before training")
    _add_data_args(data)
    data.add_argument("--json", action="store_true", help="print one JSON object")
    data.add_argument("--fast", action="store_true", help="skip decoding every image")
    data.set_defaults(func=cmd_data)

    train = sub.add_parser("train", help="two-stage fine-tuning")
    add_train_args(train)
    train.set_defaults(func=cmd_train)

    distill = sub.add_parser(
        "distill", help="train one network against a teacher model's probabilities"
    )
    add_train_args(distill)
    distill.add_argument(
        "--teacher", help="teacher model file (default: the model shipped with the package)"
    )
    distill.add_argument(
        "--distill_alpha",
        type=float,
        default=RunConfig().distill.alpha,
        help="weight of the teacher's probability in each target (the label has 1 - alpha)",
    )
    distill.set_defaults(func=cmd_distill)

    demo = sub.add_parser("demo", help="the whole pipeline on synthetic data, in minutes")
    demo.add_argument("--output_dir", default="outputs")
    demo.add_argument(
        "--overwrite", action="store_true", help="replace outputs/demo instead of a new folder"
    )
    demo.set_defaults(func=cmd_demo)
