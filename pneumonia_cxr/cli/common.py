"""Flags and helpers shared by several command groups, so that a flag reads the same in every
command that has it."""

from __future__ import annotations

import argparse
from pathlib import Path

from pneumonia_cxr.inference import ENGINES


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


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset_path",
        help="folder with {train,val,test}/{NORMAL,PNEUMONIA}/ (default: $PNEUMONIA_CXR_DATA, "
        "the cache, then a Kaggle download)",
    )


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


def _add_engine_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="auto: on CPU a cached export run by OpenVINO float32, else ONNX Runtime (same "
        "labels as PyTorch, faster); PyTorch on a GPU. Grad-CAM always uses PyTorch",
    )


def _model_path_or_shipped(model_path: str | None) -> Path:
    from pneumonia_cxr.model.shipped import resolve_model_path

    return resolve_model_path(model_path)
