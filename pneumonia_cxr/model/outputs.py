"""The model's outputs as a registry: each answer's name, graph outputs, columns and words.

torchxrayvision's `model.targets` idea: an output is an entry here, not a name threaded through
every layer. Prediction tables (CSV/JSON, every mode), the API's rows, the service's JSON and
both pages derive their columns and words from `OUTPUTS`; an image that is not assessed leaves
every answer blank and keeps the network's numbers under `unassessed_<column>`, a name that says
it is not a decision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pneumonia_cxr.model.onnx_format import CAM_OUTPUT, LOGIT_OUTPUT, TYPE_CAM_OUTPUT, TYPE_OUTPUT

if TYPE_CHECKING:
    from pneumonia_cxr.model.decision import Decision


@dataclass(frozen=True)
class ModelOutput:
    """One answer of the model."""

    name: str
    """Key of the answer in `ImageResult.answers` and in the service's JSON."""
    logit_output: str
    """The ONNX graph's output of its logit."""
    cam_output: str
    """The ONNX graph's output of its Grad-CAM map (`export.head_gradcam`)."""
    probability_column: str
    label_column: str
    question: str
    """What the probability is of, as a page shows it."""
    asks_given: tuple[str, str] | None = None
    """(output, label): the answer is given only when that output gave that label (the type
    of a pneumonia is named for an image called PNEUMONIA only); None: always."""
    build_head: Callable[[int], Any] | None = None
    """A further output's head (a torch module from the pooled feature width), which the
    network, the model file, the engines and the ONNX graph carry generically; None for the
    two built-in answers, whose heads the classifier names."""
    present: Callable[[Decision], bool] | None = None
    """Whether a model with this decision record gives this answer (default: it has a decision
    for it in `Decision.further`)."""
    class_names: Callable[[Decision], tuple[str, str]] | None = None
    threshold: Callable[[Decision], float] | None = None

    @property
    def unassessed_column(self) -> str:
        return f"unassessed_{self.probability_column}"

    def given_by(self, decision: Decision) -> bool:
        return self.present(decision) if self.present else self.name in decision.further

    def classes(self, decision: Decision) -> tuple[str, str]:
        if self.class_names:
            return tuple(self.class_names(decision))
        return tuple(decision.further[self.name].class_names)

    def cut(self, decision: Decision) -> float:
        """The threshold at which the probability names class 1."""
        if self.threshold:
            return float(self.threshold(decision))
        return float(decision.further[self.name].threshold)


PNEUMONIA = ModelOutput(
    name="pneumonia",
    logit_output=LOGIT_OUTPUT,
    cam_output=CAM_OUTPUT,
    probability_column="probability",
    label_column="label",
    question="P(PNEUMONIA)",
    present=lambda decision: True,
    class_names=lambda decision: decision.class_names,
    threshold=lambda decision: decision.threshold,
)
TYPE = ModelOutput(
    name="type",
    logit_output=TYPE_OUTPUT,
    cam_output=TYPE_CAM_OUTPUT,
    probability_column="p_viral",
    label_column="pneumonia_type",
    question="P(VIRAL | PNEUMONIA)",
    asks_given=("pneumonia", "PNEUMONIA"),
    present=lambda decision: decision.type is not None,
    class_names=lambda decision: tuple(decision.type.class_names),
    threshold=lambda decision: decision.type.threshold,
)
OUTPUTS: list[ModelOutput] = [PNEUMONIA, TYPE]
"""Every answer a model may give, in column order. A new one is an entry here (plus its head,
its training loss and its graph output)."""

STATES: tuple[str, ...] = ("assessed", "not assessed", "unreadable")
"""A row's state: answered, refused with a reason (no label anywhere), or not read (an error)."""
FIRST_COLUMNS: tuple[str, ...] = ("path", "state")
CHECK_COLUMNS: tuple[str, ...] = ("out_of_distribution", "reason", "guard_score", "ood_score")
"""`out_of_distribution` keeps its meaning for older readers: true when not assessed."""
LAST_COLUMNS: tuple[str, ...] = ("error",)
FORMATS: dict[str, str] = {"guard_score": "{:.4f}", "ood_score": "{:.4f}"}
PROBABILITY_FORMAT = "{:.6f}"


def outputs_of(decision: Decision) -> list[ModelOutput]:
    """The answers a model with this decision record gives."""
    return [output for output in OUTPUTS if output.given_by(decision)]


def output_named(name: str) -> ModelOutput:
    for output in OUTPUTS:
        if output.name == name:
            return output
    raise KeyError(f"no model output named {name!r}; known: {[o.name for o in OUTPUTS]}")


def answers_after_first(decision: Decision) -> list[ModelOutput]:
    """The answers beyond P(PNEUMONIA), which the graph gives as one logit output each and the
    inference path carries by name (`EngineOutput.answer_logits`, `Scores.answers`)."""
    return outputs_of(decision)[1:]


def table_columns(outputs: list[ModelOutput], *, heatmap: bool = False) -> list[str]:
    """Columns of every prediction table (plain, streamed, sharded, distributed, JSON)."""
    answers = [c for o in outputs for c in (o.probability_column, o.label_column)]
    unassessed = [o.unassessed_column for o in outputs]
    extra = ["heatmap"] if heatmap else []
    return [*FIRST_COLUMNS, *answers, *CHECK_COLUMNS, *unassessed, *LAST_COLUMNS, *extra]


def column_formats(outputs: list[ModelOutput]) -> dict[str, str]:
    """How each numeric column of a table is written (made once per table, used per cell)."""
    probabilities = {
        column
        for output in outputs
        for column in (output.probability_column, output.unassessed_column)
    }
    return {column: PROBABILITY_FORMAT for column in probabilities} | FORMATS


def format_value(column: str, value: Any, formats: dict[str, str]) -> str:
    """A table cell: blank for None, fixed decimals for probabilities and scores
    (`column_formats`)."""
    if value is None:
        return ""
    return formats[column].format(value) if column in formats else str(value)


def heatmap_key(name: str, index: int) -> str:
    """The result JSON's key of an answer's heatmap: `gradcam_png_base64` for the first
    (P(PNEUMONIA)), `gradcam_<name>_png_base64` for each further one (e.g. the type's)."""
    return "gradcam_png_base64" if index == 0 else f"gradcam_{name}_png_base64"


def output_entries(decision: Decision) -> list[dict[str, Any]]:
    """The answers a model with this decision gives, as both pages and `/v1/model` describe
    them: for each, in registry order, its name and question, its columns and heatmap key in
    the result JSON, the graph outputs of its logit and Grad-CAM, the temperature its logit is
    divided by (the first answer's only, as `inference.decisions.scores_from_outputs` applies
    it), its class names and threshold, and the (output, label) it is given for. The pages
    compute and word every answer from these: an answer added to the registry needs no page
    edit."""
    return [
        {
            "name": output.name,
            "question": output.question,
            "probability_column": output.probability_column,
            "label_column": output.label_column,
            "unassessed_column": output.unassessed_column,
            "logit_output": output.logit_output,
            "cam_output": output.cam_output,
            "heatmap_key": heatmap_key(output.name, index),
            "temperature": decision.temperature if index == 0 else 1.0,
            "asks_given": list(output.asks_given) if output.asks_given else None,
            "class_names": list(output.classes(decision)),
            "threshold": output.cut(decision),
        }
        for index, output in enumerate(outputs_of(decision))
    ]
