"""Fine-tuning from a trained model file (`train --init_from M`): its weights, its input contract.

The new run keeps the parent's backbone, head and preprocessing (size, normalization, JPEG
step), so what the parent learned is read the way it was learned; only the images change (a
site's own, split afresh by patient). An ensemble is refused: fine-tune one member at a time
(each member is one network of the same recipe) and rebuild the ensemble with `ensemble`.
"""

from __future__ import annotations

from pathlib import Path

from pneumonia_cxr.config import RunConfig
from pneumonia_cxr.errors import ModelFileError
from pneumonia_cxr.inference.contract import check_model_contract
from pneumonia_cxr.model.classifier import PneumoniaNet
from pneumonia_cxr.model.model_file import ModelBundle, load_model
from pneumonia_cxr.model.shipped import is_shipped_model, resolve_model_path


def parent_model(path: str | Path) -> ModelBundle:
    """The parent model file, checked: the shipped one against its pinned sha256, any one
    against its input contract; an ensemble is refused with what to do instead."""
    path = Path(path)
    if is_shipped_model(path):
        path = resolve_model_path(None)  # raises on a sha256 mismatch
    bundle = load_model(path)
    check_model_contract(bundle, path)
    if len(bundle.model.members) > 1:
        raise ModelFileError(
            f"{path}: an ensemble of {len(bundle.model.members)} networks; --init_from "
            "fine-tunes one network. Fine-tune a member model file at a time (the same command "
            "with each), then join them with `pneumonia-cxr ensemble`"
        )
    return bundle


def adopt_parent(config: RunConfig, path: str | Path) -> ModelBundle:
    """Make `config` describe the parent's network and input contract; return the parent."""
    parent = parent_model(path)
    member = parent.model.members[0]
    pre = parent.preprocessing
    config.model.init_from = str(Path(path).resolve())
    config.model.backbone = member.backbone_name
    config.model.weights = "none"  # the parent's weights replace any pretrained start
    config.model.head_dims, config.model.head_dropouts = member.head_dims, member.head_dropouts
    config.data.image_size, config.data.normalization = pre.image_size, pre.normalization
    config.data.jpeg_quality = pre.jpeg_quality
    return parent


def load_parent_weights(net: PneumoniaNet, path: str | Path) -> None:
    """The run's starting weights (before stage 1, on every (re)start of an unfinished stage 1).
    A binary parent gives a run with a type head everything but that head, which starts fresh;
    a parent's type head is dropped by a run without one."""
    parent = parent_model(path).model.members[0]
    state = {
        k: v
        for k, v in parent.state_dict().items()
        if net.has_type_head or not k.startswith("type_head.")
    }
    missing, unexpected = net.load_state_dict(state, strict=False)
    fresh = [k for k in missing if not k.startswith("type_head.")]
    if fresh or unexpected:
        raise ModelFileError(
            f"{path}: weights do not fit the run's network ({fresh or unexpected})"
        )
