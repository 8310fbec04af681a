"""The training flags (`train`, `distill`), built from RunConfig's fields so that the config
stays the one source of the defaults and every field can be set from the command line."""

from __future__ import annotations

import argparse
from dataclasses import fields

from pneumonia_cxr.cli.common import _add_data_args
from pneumonia_cxr.config import (
    MONITORS,
    NORMALIZATIONS,
    PRESETS,
    TYPE_HEAD_MODES,
    VALIDATIONS,
    AugmentConfig,
    RunConfig,
    preset_config,
)
from pneumonia_cxr.evaluation import THRESHOLD_RULES


def add_train_args(parser: argparse.ArgumentParser) -> None:
    """Flags of `train`; defaults come from RunConfig so there is one source of truth."""
    d = RunConfig()
    _add_data_args(parser)
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        help="start from a named recipe; flags given explicitly still change it (reference: "
        "the reference system as written; reference_protocol: its network under this "
        "project's protocol; see docs/reference-system.md)",
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
