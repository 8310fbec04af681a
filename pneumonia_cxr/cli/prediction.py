"""`predict` (in memory, as a resumable CSV archive, or over several devices) and
`merge-predictions`, which joins the archive's shards."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pneumonia_cxr.cli.common import (
    _add_device_arg,
    _add_engine_arg,
    _add_model_path_arg,
    _model_path_or_shipped,
    _output_file,
    _positive_int,
)
from pneumonia_cxr.errors import PneumoniaCxrError
from pneumonia_cxr.explain import CAM_METHODS
from pneumonia_cxr.model.outputs import OUTPUTS


def cmd_predict(args: argparse.Namespace) -> int:
    """One rule in every mode (`predict.Summary`): exit 0 when at least one image was read,
    1 when none could be; the same summary line and warning."""
    from pneumonia_cxr.inference.predictor import Predictor

    archive = bool(args.output and args.output.lower().endswith(".csv"))
    if args.devices:
        return _report(_predict_distributed(args), args.output)
    if (args.resume or args.shard or args.files) and not archive:
        from pneumonia_cxr.archive import ArchiveError

        raise ArchiveError("--resume, --shard and --files write a CSV: pass --output results.csv")
    if not args.paths and not args.files:
        raise PneumoniaCxrError("nothing to score: give image files or folders, or --files LIST")
    model_path = _model_path_or_shipped(args.model_path)
    # Heatmaps (Grad-CAM overlays, DICOM captures) need PyTorch's gradients: a .pt file.
    heatmaps = bool(args.gradcam) or (bool(args.dicom_out) and model_path.suffix == ".pt")
    predictor = Predictor.open(model_path, engine=args.engine, device=args.device, gradcam=heatmaps)
    writers = _dicom_writers(args, predictor, model_path)
    if archive:
        return _report(_predict_archive(args, predictor, model_path, writers), args.output, writers)
    from pneumonia_cxr.predict import Summary, predict_paths, rows_to_csv, write_rows

    rows = predict_paths(predictor, args.paths, **_loop_options(args, writers))
    if args.output:
        write_rows(rows, args.output, predictor.outputs)
    else:
        sys.stdout.write(rows_to_csv(rows, predictor.outputs))
    summary = Summary(positive=predictor.class_names[1])
    summary.add_rows(rows)
    return _report(summary, args.output, writers)


def _dicom_writers(args: argparse.Namespace, predictor, model_path: Path) -> list:
    """`--dicom_out DIR`: DICOM SR (+ heatmap capture) per DICOM input, beside the table."""
    if not args.dicom_out:
        return []
    from pneumonia_cxr.dicom_results import DicomBatchWriter

    return [DicomBatchWriter.for_model(args.dicom_out, predictor, model_path)]


def _report(summary, output: str | None, writers=()) -> int:
    """The warning, the summary line and the exit code of every predict mode."""
    if summary is None:  # a DDP rank other than 0: rank 0 reports
        return 0
    warning = summary.warning()
    if warning:
        print(warning, file=sys.stderr)
    print(summary.line(output), file=sys.stderr)
    for writer in writers:
        failed = f", {len(writer.failed)} DICOM input(s) without one" if writer.failed else ""
        print(
            f"{len(writer.written)} DICOM object(s) -> {writer.results.out_dir}{failed}",
            file=sys.stderr,
        )
    return summary.exit_code


def _predict_archive(args: argparse.Namespace, predictor, model_path: Path, writers=()):
    """`predict --output x.csv`: streamed rows, resumable, shardable (`pneumonia_cxr.archive`)."""
    from pneumonia_cxr.archive import Shard, score_archive
    from pneumonia_cxr.data.split import file_sha256

    return score_archive(
        predictor,
        args.paths,
        args.output,
        model_sha256=file_sha256(model_path),
        files_from=args.files,
        resume=args.resume,
        shard=Shard.parse(args.shard) if args.shard else Shard(),
        content_hash=args.content_hash,
        **_loop_options(args, writers),
    )


def _loop_options(args: argparse.Namespace, writers: list) -> dict:
    """The prediction loop's options, the same in the plain and the streamed mode."""
    return {
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "gradcam_dir": args.gradcam,
        "gradcam_method": args.gradcam_method,
        "gradcam_target": args.gradcam_target,
        "progress": not args.no_progress,
        "writers": writers,
    }


def _predict_distributed(args: argparse.Namespace):
    """`predict --devices N`: Lightning's prediction loop, one process per device (DDP)."""
    from pneumonia_cxr.archive import ArchiveError
    from pneumonia_cxr.distributed_predict import predict_distributed

    if not (args.output and args.output.lower().endswith((".csv", ".json"))):
        raise ArchiveError("--devices writes a table: pass --output results.csv (or .json)")
    if args.resume or args.shard or args.files or args.gradcam or args.dicom_out:
        raise ArchiveError(
            "--devices scores a whole listing: no --resume, --shard, --files, --gradcam or "
            "--dicom_out"
        )
    return predict_distributed(
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


def cmd_merge_predictions(args: argparse.Namespace) -> int:
    from pneumonia_cxr.archive import merge_shards

    count = merge_shards(args.shards, args.output)
    print(f"{count} row(s) from {len(args.shards)} shard(s) -> {args.output}", file=sys.stderr)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """`predict` and `merge-predictions`."""
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
    predict.add_argument(
        "--dicom_out",
        metavar="DIR",
        help="for each DICOM input, a DICOM Structured Report of its answer and (assessed images, "
        "a .pt model) a Secondary Capture of its heatmap, in the source's study: for a PACS",
    )
    predict.add_argument("--gradcam_method", default="gradcam", choices=CAM_METHODS)
    predict.add_argument(
        "--gradcam_target",
        default="pneumonia",
        choices=tuple(output.name for output in OUTPUTS),
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
