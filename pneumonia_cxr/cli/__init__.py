"""The `pneumonia-cxr` command: data, train, distill, demo, evaluate, predict, merge-predictions,
ensemble, calibrate, adapt, export, serve, web, explain-check.

One module per command group adds its subcommands (`add_parsers`) and runs them (`cmd_*`);
this one assembles the parser and turns an error into one line. Nothing heavy is imported
here: each command imports what it needs when it runs, so the light install can start."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pneumonia_cxr.cli import evaluation, prediction, serving, site, training
from pneumonia_cxr.cli.config_flags import (
    CONFIG_SECTIONS,
    FLAG_NAMES,
    INVERTED_FLAGS,
    NOT_FROM_FLAGS,
    _flag_name,
    add_train_args,
    config_from_args,
)
from pneumonia_cxr.cli.evaluation import add_evaluate_args
from pneumonia_cxr.errors import PneumoniaCxrError

__all__ = [
    "CONFIG_SECTIONS",
    "FLAG_NAMES",
    "FULL_STACK",
    "INVERTED_FLAGS",
    "NOT_FROM_FLAGS",
    "_explicit_flags",
    "_flag_name",
    "_install_hint",
    "add_evaluate_args",
    "add_train_args",
    "build_parser",
    "config_from_args",
    "main",
]

GROUPS = (training, evaluation, prediction, site, serving)
COMMANDS: tuple[str, ...] = (
    "data",
    "train",
    "distill",
    "demo",
    "evaluate",
    "predict",
    "merge-predictions",
    "ensemble",
    "calibrate",
    "adapt",
    "export",
    "serve",
    "web",
    "dicom-node",
    "explain-check",
)
"""The order `pneumonia-cxr --help` lists the commands in: the workflow's, not the modules'."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pneumonia-cxr", description="Pneumonia detection in pediatric chest X-rays."
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parsers(sub)
    _in_command_order(sub)
    return parser


def _in_command_order(sub: argparse._SubParsersAction) -> None:
    """List the subcommands (usage, help, an unknown command's error) in `COMMANDS` order, which
    the groups' modules do not follow; a command missing from it goes last."""

    def rank(name: str) -> int:
        return COMMANDS.index(name) if name in COMMANDS else len(COMMANDS)

    parsers = sorted(sub.choices.items(), key=lambda item: rank(item[0]))
    sub.choices.clear()  # the same dict as argparse's own name -> parser map
    sub.choices.update(parsers)
    sub._choices_actions.sort(key=lambda action: rank(action.dest))


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
