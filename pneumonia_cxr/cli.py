"""The `pneumonia-cxr` command: data, train, distill, demo, evaluate, predict, merge-predictions,
ensemble, calibrate, adapt, export, serve, explain-check."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from pneumonia_cxr.config import (
    ADAPT_MIN_SENSITIVITY,
    MONITORS,
    NORMALIZATIONS,
    PRESETS,
    TYPE_HEAD_MODES,
    VALIDATIONS,
    AugmentConfig,
    RunConfig,
    preset_config,
)
from pneumonia_cxr.data import SPLITS
from pneumonia_cxr.errors import PneumoniaCxrError
from pneumonia_cxr.evaluation import THRESHOLD_RULES
from pneumonia_cxr.explain import CAM_METHODS, EXPLAIN_IMAGES_IN_EVALUATE
from pneumonia_cxr.inference import ENGINES

EPOCH_FLAGS = ("stage1_epochs", "stage2_epochs")


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
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        help="start from a named recipe; flags given explicitly still change it (reference: "
        "the reference system as written; reference_protocol: its network under this "
        "project's protocol; see docs/reference.md)",
    )
    parser.add_argument(
        "--validation",
        choices=VALIDATIONS,
        default=d.data.validation,
        help="patient: a patient-level share of train + val (--val_fraction); official: the "
        "official 16-image val folder, as the reference",
    )
    parser.add_argument("--backbone", default=d.model.backbone)
    parser.add_argument(
        "--weights",
        default=d.model.weights,
        help="imagenet (download, cached), none, or a local weights file",
    )
    parser.add_argument(
        "--stage1_epochs",
        type=int,
        help=f"default {d.train.stage1_epochs}; with --resume: new total",
    )
    parser.add_argument(
        "--stage2_epochs",
        type=int,
        help=f"default {d.train.stage2_epochs}; with --resume: new total",
    )
    parser.add_argument("--stage1_lr", type=float, default=d.train.stage1_lr)
    parser.add_argument("--stage2_lr", type=float, default=d.train.stage2_lr)
    parser.add_argument(
        "--unfreeze_layers",
        type=int,
        default=d.model.unfreeze_layers,
        help="stage 2 unfreezes this many top parameter layers of the backbone (-1: all)",
    )
    parser.add_argument("--image_size", type=int, default=d.data.image_size)
    parser.add_argument("--normalization", choices=NORMALIZATIONS, default=d.data.normalization)
    parser.add_argument("--batch_size", type=int, default=d.data.batch_size)
    parser.add_argument("--num_workers", type=int, default=d.data.num_workers)
    parser.add_argument(
        "--val_fraction", type=float, help=f"default {d.data.val_fraction} (distill: the teacher's)"
    )
    parser.add_argument(
        "--split_seed",
        type=int,
        help="seed of the patient-level split (default: --seed; distill: the teacher's); share "
        "it across runs that will form one ensemble",
    )
    parser.add_argument(
        "--jpeg_quality",
        type=int,
        default=d.data.jpeg_quality,
        help="re-encode every image as JPEG at this quality after resizing, in training and in "
        "the model file's preprocessing (0: off)",
    )
    parser.add_argument("--balanced_sampler", action="store_true")
    parser.add_argument("--no_class_weights", action="store_true")
    parser.add_argument("--weight_decay", type=float, default=d.train.weight_decay)
    parser.add_argument("--label_smoothing", type=float, default=d.train.label_smoothing)
    _add_augment_args(parser, d.data.augment)
    parser.add_argument("--patience", type=int, default=d.train.early_stopping_patience)
    parser.add_argument(
        "--threshold_rule",
        default=d.train.threshold_rule,
        choices=THRESHOLD_RULES,
    )
    parser.add_argument("--min_sensitivity", type=float, default=d.train.min_sensitivity)
    parser.add_argument("--calibrate", action="store_true", help="fit a temperature on val")
    parser.add_argument("--output_dir", default=d.train.output_dir)
    parser.add_argument("--run_name")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run where it stopped")
    parser.add_argument(
        "--init_from",
        metavar="MODEL",
        help="fine-tune this trained model file (one network; its backbone, head and "
        "preprocessing are kept) on --dataset_path, with a fresh patient split",
    )
    parser.add_argument(
        "--type_head",
        choices=TYPE_HEAD_MODES,
        default=d.model.type_head,
        help="a second head for P(VIRAL | PNEUMONIA), trained on the pneumonia images of known "
        "type (Kermany names, PNEUMONIA/BACTERIAL|VIRAL folders, or labels.csv): on, auto "
        "(when both types are present), off",
    )
    parser.add_argument(
        "--type_loss_weight",
        type=float,
        default=d.train.type_loss_weight,
        help="weight of the type head's loss beside the pneumonia loss",
    )
    parser.add_argument(
        "--monitor",
        choices=MONITORS,
        default=d.train.monitor,
        help="validation metric of the best checkpoint, early stopping and the LR plateau "
        "(val_mean_auc: the mean of the pneumonia and the type AUC)",
    )
    parser.add_argument("--seed", type=int, default=d.train.seed)
    parser.add_argument("--accelerator", default=d.train.accelerator)
    parser.add_argument("--devices", default=d.train.devices)
    parser.add_argument("--num_nodes", type=int, default=d.train.num_nodes)
    parser.add_argument("--strategy", default=d.train.strategy)
    parser.add_argument("--precision", default=d.train.precision)
    parser.add_argument("--limit_train_batches", type=float, default=None)
    _add_remaining_config_flags(parser, d)


def _add_augment_args(parser: argparse.ArgumentParser, defaults: AugmentConfig) -> None:
    """One flag per AugmentConfig field (--aug_<name>), so the two cannot drift apart."""
    group = parser.add_argument_group("augmentation (training only)")
    for item in fields(AugmentConfig):
        default = getattr(defaults, item.name)
        if isinstance(default, bool):
            group.add_argument(
                f"--aug_{item.name}", type=_yes_no, default=default, metavar="{yes,no}"
            )
        else:
            group.add_argument(f"--aug_{item.name}", type=type(default), default=default)


def _yes_no(text: str) -> bool:
    if text.lower() not in ("yes", "no", "true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")
    return text.lower() in ("yes", "true", "1")


FLAG_NAMES: dict[str, str] = {"early_stopping_patience": "patience"}
"""Config fields whose flag has another name (the reference's `--patience`)."""
INVERTED_FLAGS: dict[str, str] = {"class_weights": "no_class_weights"}
"""Boolean fields that default to on, set off by a `--no_...` flag."""
NOT_FROM_FLAGS: frozenset[str] = frozenset({"init_from", "augment"})
"""Fields set otherwise: `--init_from` adopts the parent (`training.init_from`), augmentation
has its `--aug_*` flags."""
CONFIG_SECTIONS: tuple[str, ...] = ("data", "model", "train")


def _flag_name(name: str) -> str:
    return INVERTED_FLAGS.get(name, FLAG_NAMES.get(name, name))


def _add_remaining_config_flags(parser: argparse.ArgumentParser, defaults: RunConfig) -> None:
    """A flag for every data/model/train field that has none written out above, typed from its
    default, so that every training field can be set and the defaults live in the config only."""
    taken = {action.dest for action in parser._actions}
    group = parser.add_argument_group("other configuration fields (RunConfig)")
    for section in CONFIG_SECTIONS:
        for item in fields(getattr(defaults, section)):
            default = getattr(getattr(defaults, section), item.name)
            if item.name in NOT_FROM_FLAGS or _flag_name(item.name) in taken:
                continue
            flag = f"--{_flag_name(item.name)}"
            if isinstance(default, bool):
                group.add_argument(flag, type=_yes_no, default=None, metavar="{yes,no}")
            elif isinstance(default, tuple):
                group.add_argument(flag, type=type(default[0]), nargs=len(default), default=None,
                                   help=f"default {' '.join(map(str, default))}")  # fmt: skip
            elif default is None:
                group.add_argument(flag, type=float, default=None)
            else:
                kind = type(default)
                group.add_argument(flag, type=kind, default=None, help=f"default {default}")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run's config from the parsed flags: every data/model/train field by the flag of its
    name (`FLAG_NAMES`, `INVERTED_FLAGS`); a flag left at None keeps the config's default.
    Under `--preset`, only the flags given explicitly (`explicit_flags`) change the preset."""
    preset = getattr(args, "preset", None)
    config = preset_config(preset) if preset else RunConfig()
    explicit = getattr(args, "explicit_flags", None) if preset else None

    def given(dest: str) -> bool:
        return explicit is None or dest in explicit

    for section in CONFIG_SECTIONS:
        part = getattr(config, section)
        for item in fields(part):
            if item.name in NOT_FROM_FLAGS or not given(_flag_name(item.name)):
                continue
            value = getattr(args, _flag_name(item.name))
            if item.name in INVERTED_FLAGS:
                value = not value
            if value is None:
                continue
            if isinstance(getattr(part, item.name), tuple):
                value = tuple(value)
            setattr(part, item.name, value)
    for item in fields(AugmentConfig):
        if given(f"aug_{item.name}"):
            setattr(config.data.augment, item.name, getattr(args, f"aug_{item.name}"))
    for key in ("limit_train_batches", "limit_val_batches"):
        limit = getattr(config.train, key)
        if limit is not None:  # a share of the batches, or a count
            setattr(config.train, key, int(limit) if limit >= 1 else limit)
    return RunConfig.from_dict(config.to_dict())  # every field's own check, once more


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


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Measure a model on a site's images, refit its operating point there, write a new file."""
    import json

    from pneumonia_cxr.training.recalibrate import calibrate_site, format_held_out, format_report

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
        print(format_held_out(outcome.held_out, args.check_fold, args.min_sensitivity))
        if args.check_output:
            Path(args.check_output).write_text(json.dumps(outcome.held_out) + "\n")
    print(f"written: {args.output}")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    """Fine-tune, calibrate and check a model on a site's own labelled images."""
    from pneumonia_cxr.training.adapt import adapt_site, format_adapt_report

    outcome = adapt_site(
        _model_path_or_shipped(args.model_path),
        args.dataset_path,
        args.output,
        work_dir=args.work_dir,
        split=args.split,
        rule=args.threshold_rule,
        min_sensitivity=args.min_sensitivity,
        seed=args.seed,
        force=args.force,
        batch_size=args.batch_size,
    )
    print(format_adapt_report(outcome))
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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _output_file(text: str) -> str:
    from pneumonia_cxr.storage import check_table_path

    try:
        return str(check_table_path(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_model_path_arg(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """--model_path, with one rule for every command: a .pt (or, where the command runs an
    exported graph, .onnx) model file; without it the shipped model (`resolve_model_path`)."""
    parser.add_argument(
        "--model_path",
        required=required,
        help="a model file (final_pneumonia_model.pt; predict also takes an .onnx export)"
        + ("" if required else " (default: the model shipped with the package)"),
    )


def _add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: the GPU if available)")


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


def cmd_predict(args: argparse.Namespace) -> int:
    """Exit code 0 when at least one image was read, 1 when none could be."""
    from pneumonia_cxr.inference.predictor import Predictor

    archive = bool(args.output and args.output.lower().endswith(".csv"))
    if args.devices:
        return _predict_distributed(args)
    if (args.resume or args.shard or args.files) and not archive:
        from pneumonia_cxr.archive import ArchiveError

        raise ArchiveError("--resume, --shard and --files write a CSV: pass --output results.csv")
    if not args.paths and not args.files:
        raise PneumoniaCxrError("nothing to score: give image files or folders, or --files LIST")
    model_path = _model_path_or_shipped(args.model_path)
    predictor = Predictor.open(
        model_path, engine=args.engine, device=args.device, gradcam=bool(args.gradcam)
    )
    if archive:
        return _predict_archive(args, predictor, model_path)
    from pneumonia_cxr.predict import predict_paths, rows_to_csv, write_rows

    rows = predict_paths(
        predictor,
        args.paths,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        gradcam_dir=args.gradcam,
        gradcam_method=args.gradcam_method,
        gradcam_target=args.gradcam_target,
        progress=not args.no_progress,
    )
    if args.output:
        write_rows(rows, args.output)
    else:
        sys.stdout.write(rows_to_csv(rows))
    flagged = [row.path for row in rows if row.out_of_distribution]
    _warn_flagged(len(flagged), flagged[:10])
    n_ok = sum(row.ok for row in rows)
    print(
        f"{n_ok} of {len(rows)} image(s) predicted, {len(rows) - n_ok} unreadable"
        + (f"; results: {args.output}" if args.output else ""),
        file=sys.stderr,
    )
    return 0 if n_ok else 1


def _predict_archive(args: argparse.Namespace, predictor, model_path: Path) -> int:
    """`predict --output x.csv`: streamed rows, resumable, shardable (`pneumonia_cxr.archive`)."""
    from pneumonia_cxr.archive import Shard, score_archive
    from pneumonia_cxr.data.split import file_sha256

    summary = score_archive(
        predictor,
        args.paths,
        args.output,
        model_sha256=file_sha256(model_path),
        files_from=args.files,
        resume=args.resume,
        shard=Shard.parse(args.shard) if args.shard else Shard(),
        content_hash=args.content_hash,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        gradcam_dir=args.gradcam,
        gradcam_method=args.gradcam_method,
        gradcam_target=args.gradcam_target,
        progress=not args.no_progress,
    )
    _warn_flagged(summary.out_of_distribution, summary.flagged_examples)
    total = summary.scored + summary.unreadable
    print(
        f"{total} image(s) in {args.output}: {summary.scored} scored ({summary.pneumonia} "
        f"PNEUMONIA, {summary.out_of_distribution} out of distribution), {summary.unreadable} "
        f"unreadable; {summary.kept_from_before} kept from before",
        file=sys.stderr,
    )
    return 0 if summary.scored else 1


def _predict_distributed(args: argparse.Namespace) -> int:
    """`predict --devices N`: Lightning's prediction loop, one process per device (DDP)."""
    from pneumonia_cxr.archive import ArchiveError
    from pneumonia_cxr.distributed_predict import predict_distributed

    if not (args.output and args.output.lower().endswith(".csv")):
        raise ArchiveError("--devices writes a CSV: pass --output results.csv")
    if args.resume or args.shard or args.files or args.gradcam:
        raise ArchiveError(
            "--devices scores a whole listing: no --resume, --shard, --files or --gradcam"
        )
    count = predict_distributed(
        _model_path_or_shipped(args.model_path),
        args.paths,
        args.output,
        accelerator=args.accelerator,
        devices=int(args.devices) if str(args.devices).isdigit() else args.devices,
        num_nodes=args.num_nodes,
        strategy=args.strategy,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
    )
    if count:
        print(f"{count} image(s) -> {args.output}", file=sys.stderr)
    return 0


def _warn_flagged(count: int, examples: list[str]) -> None:
    if count:
        more = f" and {count - len(examples)} more" if count > len(examples) else ""
        print(
            f"warning: {count} image(s) do not look like the chest X-rays the model was "
            "trained on (out of distribution); their labels are unreliable: "
            + ", ".join(examples)
            + more,
            file=sys.stderr,
        )


def cmd_merge_predictions(args: argparse.Namespace) -> int:
    from pneumonia_cxr.archive import merge_shards

    count = merge_shards(args.shards, args.output)
    print(f"{count} row(s) from {len(args.shards)} shard(s) -> {args.output}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pneumonia_cxr.export import export_onnx
    from pneumonia_cxr.model.model_file import load_model

    output = Path(args.output or Path(args.model_path).with_suffix(".onnx"))
    path = export_onnx(load_model(args.model_path), output)
    print(f"ONNX model (dynamic batch; preprocessing and threshold in its metadata): {path}")
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


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from pneumonia_cxr.serve.app import TOKEN_ENV_VAR, check_exposure, serve
    from pneumonia_cxr.serve.service import ServeConfig

    token = args.api_token or os.environ.get(TOKEN_ENV_VAR) or None
    try:
        check_exposure(args.host, token)
    except PermissionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.api_token:
        print(
            f"warning: --api_token is visible to other users in the process list; prefer "
            f"{TOKEN_ENV_VAR}",
            file=sys.stderr,
        )
    config = ServeConfig(
        api_token=token,
        model_path=Path(args.model_path) if args.model_path else None,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_in_flight=args.max_in_flight,
        device=args.device,
        engine=args.engine,
    )
    print(f"serving on http://{args.host}:{args.port}/ (API docs: /docs)", file=sys.stderr)
    serve(config, host=args.host, port=args.port)
    return 0


def _add_engine_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="auto: on CPU a cached export run by OpenVINO float32, else ONNX Runtime (same "
        "labels as PyTorch, faster); PyTorch on a GPU. Grad-CAM always uses PyTorch",
    )


def cmd_web(args: argparse.Namespace) -> int:
    from pneumonia_cxr.web import write_web_folder

    written = write_web_folder(args.out_dir, _model_path_or_shipped(args.model_path))
    print(
        f"{written['out_dir']}: {written['files']} files, {written['bytes'] / 2**20:.1f} MB "
        f"(model sha256 {written['sha256'][:16]}...). Serve it with any static file server, "
        f"e.g. `python3 -m http.server --directory {written['out_dir']}`, and open the page; "
        "images are scored in the browser and never leave it."
    )
    return 0


def _model_path_or_shipped(model_path: str | None) -> Path:
    from pneumonia_cxr.model.shipped import resolve_model_path

    return resolve_model_path(model_path)


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

    evaluate = sub.add_parser(
        "evaluate", help="metrics with CIs, plots, Grad-CAM grid and an HTML report"
    )
    add_evaluate_args(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    predict = sub.add_parser("predict", help="probability and label for new images")
    predict.add_argument("paths", nargs="*", metavar="PATH", help="image files and folders")
    _add_model_path_arg(predict)
    predict.add_argument(
        "--output",
        type=_output_file,
        help="results.csv (rows written as they are scored; resumable) or results.json "
        "(default: CSV on stdout)",
    )
    predict.add_argument(
        "--files",
        metavar="LIST",
        help="also score the files listed (.txt: a path a line; .csv: a 'path' column)",
    )
    predict.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows of unchanged files already in --output, score the rest",
    )
    predict.add_argument(
        "--content_hash",
        action="store_true",
        help="with --resume: a file is unchanged when its sha256 is (default: size and mtime)",
    )
    predict.add_argument(
        "--shard", metavar="i/N", help="score only files i, i+N, ... of the listing (0 <= i < N)"
    )
    lightning = predict.add_argument_group(
        "several GPUs or nodes (Lightning's prediction loop; DDP; Slurm via run/run.sh predict)"
    )
    lightning.add_argument(
        "--devices", help="e.g. 4 (GPUs of this node) or 2 with --accelerator cpu"
    )
    lightning.add_argument("--accelerator", default="auto")
    lightning.add_argument("--num_nodes", type=int, default=1)
    lightning.add_argument("--strategy", default="ddp")
    predict.add_argument("--gradcam", metavar="OUT_DIR", help="write one overlay PNG per image")
    predict.add_argument("--gradcam_method", default="gradcam", choices=CAM_METHODS)
    predict.add_argument(
        "--gradcam_target",
        default="pneumonia",
        choices=("pneumonia", "type"),
        help="which output the heatmaps explain: P(PNEUMONIA), or the pneumonia type "
        "(a model with a type head)",
    )
    predict.add_argument("--batch_size", type=_positive_int, default=32)
    predict.add_argument("--num_workers", type=int, default=0, help="image decoding processes")
    _add_device_arg(predict)
    predict.add_argument("--no_progress", action="store_true", help="no progress bar")
    _add_engine_arg(predict)
    predict.set_defaults(func=cmd_predict)

    merge = sub.add_parser(
        "merge-predictions", help="join the CSVs of `predict --shard i/N` in listing order"
    )
    merge.add_argument("shards", nargs="+", help="the shard outputs (.csv)")
    merge.add_argument("--output", required=True, type=_output_file)
    merge.set_defaults(func=cmd_merge_predictions)

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
        "--force", action="store_true", help="calibrate even with < 30 images in a class"
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
        help="make the model work at a new site: fine-tune on half of its labelled images "
        "(by patient), calibrate, and report before/after on the other half",
    )
    _add_model_path_arg(adapt)
    adapt.add_argument(
        "--dataset_path",
        required=True,
        help="the site's folder with NORMAL/ and PNEUMONIA/ (or the official layout: --split)",
    )
    adapt.add_argument("--split", default="test", choices=SPLITS, help="official layout only")
    adapt.add_argument("--output", required=True, help="the adapted model file (.pt)")
    adapt.add_argument(
        "--work_dir", help="fine-tuning run and links (default: beside --output); resumable"
    )
    adapt.add_argument("--threshold_rule", default=defaults.threshold_rule, choices=THRESHOLD_RULES)
    adapt.add_argument(
        "--min_sensitivity",
        type=float,
        default=ADAPT_MIN_SENSITIVITY,
        help=f"default {ADAPT_MIN_SENSITIVITY}",
    )
    adapt.add_argument("--seed", type=int, default=0, help="seed of the halves and the training")
    adapt.add_argument(
        "--force", action="store_true", help="go on with < 30 images of a class in a half"
    )
    adapt.add_argument("--batch_size", type=_positive_int, default=32)
    adapt.set_defaults(func=cmd_adapt)

    export = sub.add_parser("export", help="export a model file for fast inference")
    _add_model_path_arg(export, required=True)
    export.add_argument("--format", choices=["onnx"], default="onnx")
    export.add_argument("--output", help="default: the model path with .onnx")
    export.set_defaults(func=cmd_export)

    web = sub.add_parser("serve", help="a web page and HTTP API: drop an X-ray, get the answer")
    _add_model_path_arg(web)
    web.add_argument(
        "--host",
        default="127.0.0.1",
        help="default loopback only; any other address needs an access token",
    )
    web.add_argument(
        "--api_token",
        help="access token (prefer the environment variable PNEUMONIA_CXR_API_TOKEN)",
    )
    web.add_argument("--port", type=int, default=8000)
    web.add_argument("--max_upload_mb", type=float, default=32.0, help="per request")
    web.add_argument("--max_in_flight", type=_positive_int, default=64)
    _add_device_arg(web)
    _add_engine_arg(web)
    web.set_defaults(func=cmd_serve)

    static = sub.add_parser(
        "web", help="the page as a static folder that scores in the browser (no server needed)"
    )
    static.add_argument("out_dir", help="folder to write (new, empty, or written by `web` before)")
    _add_model_path_arg(static)
    static.set_defaults(func=cmd_web)

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; a PneumoniaCxrError becomes one clear line and exit code 2."""
    args = build_parser().parse_args(argv)
    if getattr(args, "preset", None):
        args.explicit_flags = _explicit_flags(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return args.func(args)
    except ImportError as error:
        print(f"error: {_install_hint(args.command, error)}", file=sys.stderr)
        return 2
    except (PneumoniaCxrError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _explicit_flags(argv: Sequence[str] | None) -> set[str]:
    """The destinations of the flags written on the command line (not left at a default)."""
    probe = build_parser()
    for action in probe._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                for sub_action in subparser._actions:
                    sub_action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


FULL_STACK: frozenset[str] = frozenset(
    {"torch", "torchvision", "lightning", "timm", "pytorch_grad_cam", "sklearn", "scipy"}
    | {"matplotlib", "onnx", "tensorboard", "kagglehub", "safetensors"}
)
"""Top-level modules of the full install (`pip install "pneumonia-cxr[full]"`) that the light
install (`[score]`: predict, serve, data, web, the API's load/predict) does without."""


def _install_hint(command: str, error: ImportError) -> str:
    """A missing module of the full install named as such, with the command that needs it."""
    missing = (error.name or "").split(".")[0]
    if missing not in FULL_STACK:
        return str(error)
    from pneumonia_cxr.model.onnx_format import FULL_INSTALL_HINT

    return (
        f"`pneumonia-cxr {command}` needs {missing!r}, which the light install leaves out; "
        f"install the full one: {FULL_INSTALL_HINT}"
    )


if __name__ == "__main__":
    sys.exit(main())
