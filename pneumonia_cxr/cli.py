"""The `pneumonia-cxr` command: data, train, demo (and evaluate, predict as they land)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pneumonia_cxr.config import RunConfig
from pneumonia_cxr.errors import PneumoniaCxrError

DEMO_DATA_DIR = Path("outputs") / "synthetic_cxr_demo"


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset_path",
        help="folder with {train,val,test}/{NORMAL,PNEUMONIA}/ (default: $PNEUMONIA_CXR_DATA, "
        "the cache, then a Kaggle download)",
    )


def add_train_args(parser: argparse.ArgumentParser) -> None:
    """Flags of `train`; defaults come from RunConfig so there is one source of truth."""
    d = RunConfig()
    _add_data_args(parser)
    parser.add_argument("--backbone", default=d.model.backbone)
    parser.add_argument(
        "--weights",
        default=d.model.weights,
        help="imagenet (download, cached), none, or a local weights file",
    )
    parser.add_argument("--stage1_epochs", type=int, default=d.train.stage1_epochs)
    parser.add_argument("--stage2_epochs", type=int, default=d.train.stage2_epochs)
    parser.add_argument("--stage1_lr", type=float, default=d.train.stage1_lr)
    parser.add_argument("--stage2_lr", type=float, default=d.train.stage2_lr)
    parser.add_argument(
        "--unfreeze_layers",
        type=int,
        default=d.model.unfreeze_layers,
        help="stage 2 unfreezes this many top parameter layers of the backbone (-1: all)",
    )
    parser.add_argument("--image_size", type=int, default=d.data.image_size)
    parser.add_argument("--normalization", choices=["imagenet", "unit"], default="imagenet")
    parser.add_argument("--batch_size", type=int, default=d.data.batch_size)
    parser.add_argument("--num_workers", type=int, default=d.data.num_workers)
    parser.add_argument("--val_fraction", type=float, default=d.data.val_fraction)
    parser.add_argument("--balanced_sampler", action="store_true")
    parser.add_argument("--no_class_weights", action="store_true")
    parser.add_argument("--patience", type=int, default=d.train.early_stopping_patience)
    parser.add_argument(
        "--threshold_rule",
        default=d.train.threshold_rule,
        choices=["max_specificity_at_sensitivity", "youden", "fixed_0.5"],
    )
    parser.add_argument("--min_sensitivity", type=float, default=d.train.min_sensitivity)
    parser.add_argument("--calibrate", action="store_true", help="fit a temperature on val")
    parser.add_argument("--output_dir", default=d.train.output_dir)
    parser.add_argument("--run_name")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run where it stopped")
    parser.add_argument("--seed", type=int, default=d.train.seed)
    parser.add_argument("--accelerator", default=d.train.accelerator)
    parser.add_argument("--devices", default=d.train.devices)
    parser.add_argument("--num_nodes", type=int, default=d.train.num_nodes)
    parser.add_argument("--strategy", default=d.train.strategy)
    parser.add_argument("--precision", default=d.train.precision)
    parser.add_argument("--limit_train_batches", type=float, default=None)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    config = RunConfig()
    data, model, train = config.data, config.model, config.train
    data.dataset_path = args.dataset_path
    data.image_size, data.normalization = args.image_size, args.normalization
    data.batch_size, data.num_workers = args.batch_size, args.num_workers
    data.val_fraction, data.balanced_sampler = args.val_fraction, args.balanced_sampler
    model.backbone, model.weights, model.unfreeze_layers = (
        args.backbone,
        args.weights,
        args.unfreeze_layers,
    )
    train.stage1_epochs, train.stage2_epochs = args.stage1_epochs, args.stage2_epochs
    train.stage1_lr, train.stage2_lr = args.stage1_lr, args.stage2_lr
    train.class_weights = not args.no_class_weights
    train.early_stopping_patience = args.patience
    train.threshold_rule, train.min_sensitivity = args.threshold_rule, args.min_sensitivity
    train.calibrate = args.calibrate
    train.output_dir, train.run_name, train.seed = args.output_dir, args.run_name, args.seed
    train.accelerator, train.devices, train.num_nodes = (
        args.accelerator,
        args.devices,
        args.num_nodes,
    )
    train.strategy, train.precision = args.strategy, args.precision
    if args.limit_train_batches is not None:
        limit = args.limit_train_batches
        train.limit_train_batches = int(limit) if limit >= 1 else limit
    return config


def cmd_data(args: argparse.Namespace) -> int:
    from pneumonia_cxr.data.discovery import resolve_dataset
    from pneumonia_cxr.data.summary import format_summary, summarize_dataset

    summary = summarize_dataset(resolve_dataset(args.dataset_path), check_readable=not args.fast)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pneumonia_cxr.training.run import train

    run_dir = train(None if args.resume else config_from_args(args), resume=args.resume)
    print(f"run folder: {run_dir}")
    return 0


def demo_config(data_dir: Path, output_dir: str) -> RunConfig:
    """The embedded default: a few minutes on 2 CPU cores, with offline ImageNet weights."""
    config = RunConfig()
    config.data.dataset_path = str(data_dir)
    config.data.image_size, config.data.batch_size = 128, 32
    config.model.backbone, config.model.weights = "efficientnet_lite0", "imagenet"
    config.model.unfreeze_layers = -1
    config.train.stage1_epochs, config.train.stage2_epochs = 3, 4
    config.train.stage1_lr, config.train.stage2_lr = 1e-3, 3e-4
    config.train.output_dir, config.train.run_name = output_dir, "demo"
    return config


def cmd_demo(args: argparse.Namespace) -> int:
    from pneumonia_cxr.data.synthetic import generate_synthetic_dataset
    from pneumonia_cxr.training.run import train

    data_dir = generate_synthetic_dataset(Path(args.output_dir) / "synthetic_cxr_demo")
    print(f"synthetic demo data (NOT medical images): {data_dir}")
    run_dir = Path(args.output_dir) / "demo"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    run_dir = train(demo_config(data_dir, args.output_dir))
    print(f"run folder: {run_dir}")
    print(f"model file: {run_dir / 'final_pneumonia_model.pt'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pneumonia-cxr", description="Pneumonia detection in pediatric chest X-rays."
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="summarise a dataset before training")
    _add_data_args(data)
    data.add_argument("--json", action="store_true", help="print one JSON object")
    data.add_argument("--fast", action="store_true", help="skip decoding every image")
    data.set_defaults(func=cmd_data)

    train = sub.add_parser("train", help="two-stage fine-tuning")
    add_train_args(train)
    train.set_defaults(func=cmd_train)

    demo = sub.add_parser("demo", help="the whole pipeline on synthetic data, in minutes")
    demo.add_argument("--output_dir", default="outputs")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; a PneumoniaCxrError becomes one clear line and exit code 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return args.func(args)
    except PneumoniaCxrError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
