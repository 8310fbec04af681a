"""Human-readable reports of a metrics.json body: a Markdown table and one self-contained HTML file.

Both renderings are built from the same rows (`_metric_rows`), so the numbers cannot disagree.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pneumonia_cxr.evaluation.metrics import RATE_NAMES
from pneumonia_cxr.explain.check import pointing_game_summary
from pneumonia_cxr.model.decision import calibration_line
from pneumonia_cxr.storage import atomic_write_text

RATE_LABELS: dict[str, str] = {
    "accuracy": "Accuracy",
    "sensitivity": "Sensitivity (recall)",
    "specificity": "Specificity",
    "precision": "Precision (PPV)",
    "npv": "NPV",
    "f1": "F1",
}
CONFUSION_LABELS: dict[str, str] = {
    "tp": "True positives (PNEUMONIA found)",
    "fn": "False negatives (PNEUMONIA missed)",
    "tn": "True negatives",
    "fp": "False positives (false alarms)",
}
_IMAGE_TYPES: dict[str, str] = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
_EXTERNAL_LINK = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)
NOT_AVAILABLE = "n/a"


def _fmt(value: float | None, *, percent: bool, digits: int = 3) -> str:
    if value is None:
        return NOT_AVAILABLE
    return f"{100 * value:.1f}%" if percent else f"{value:.{digits}f}"


def _with_interval(entry: Mapping, *, percent: bool, digits: int = 3) -> str:
    """'value [low, high]' (the interval omitted when undefined)."""
    value = _fmt(entry.get("value"), percent=percent, digits=digits)
    low, high = entry.get("ci_low"), entry.get("ci_high")
    if low is None or high is None:
        return value
    low_text = _fmt(low, percent=percent, digits=digits)
    return f"{value} [{low_text}, {_fmt(high, percent=percent, digits=digits)}]"


def _confidence_label(metrics: Mapping) -> str:
    confidence = metrics.get("bootstrap", {}).get("confidence", 0.95)
    return f"{100 * confidence:g}% CI"


def _metric_rows(metrics: Mapping) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Tables as (header, rows) of text cells, shared by the Markdown and HTML renderings."""
    ci = _confidence_label(metrics)
    stored = f"At stored threshold {metrics['threshold']:.3f} ({metrics['threshold_rule']})"
    rates = (
        ["Metric", f"{stored}, value [{ci}]", f"At 0.5, value [{ci}]"],
        [
            [
                RATE_LABELS[name],
                _with_interval(metrics["at_threshold"][name], percent=True),
                _with_interval(metrics["at_0.5"][name], percent=True),
            ]
            for name in RATE_NAMES
        ],
    )
    overall = (
        ["Threshold-free metric", f"Value [{ci}]"],
        [
            ["ROC AUC", _with_interval(metrics["roc_auc"], percent=False)],
            ["Average precision", _with_interval(metrics["average_precision"], percent=False)],
            ["Brier score (lower is better)", _fmt(metrics["brier"], percent=False, digits=4)],
            [
                f"ECE, {metrics.get('ece_n_bins', 15)} bins (lower is better)",
                _fmt(metrics["ece"], percent=False, digits=4),
            ],
        ],
    )
    confusion = (
        ["Confusion counts", "At stored threshold", "At 0.5"],
        [
            [
                label,
                str(metrics["at_threshold"]["confusion"][key]),
                str(metrics["at_0.5"]["confusion"][key]),
            ]
            for key, label in CONFUSION_LABELS.items()
        ],
    )
    tables = {"rates": rates, "overall": overall, "confusion": confusion}
    if metrics.get("subgroups"):
        tables["subgroups"] = (
            ["Pneumonia type (from the file name)", "n", f"Sensitivity at stored threshold [{ci}]"],
            [
                [name, str(entry["n"]), _with_interval(entry["sensitivity"], percent=True)]
                for name, entry in metrics["subgroups"].items()
            ],
        )
    if metrics.get("pneumonia_type"):
        tables.update(_type_rows(metrics["pneumonia_type"], ci))
    if metrics.get("flagged_by_reason"):
        tables["reasons"] = (
            ["Applicability reason", "Images flagged"],
            [[name, str(n)] for name, n in metrics["flagged_by_reason"].items()],
        )
    if metrics.get("ood"):
        ood = metrics["ood"]
        tables["ood"] = (
            ["Out-of-distribution guard", "Value"],
            [
                ["Cut-off (score above it is flagged)", f"{ood['cutoff']:.3f}"],
                ["Images flagged", f"{ood['n_flagged']} ({100 * ood['share_flagged']:.1f}%)"],
            ],
        )
    return tables


def _type_rows(block: Mapping, ci: str) -> dict[str, tuple[list[str], list[list[str]]]]:
    """The bacterial-vs-viral tables (`evaluation.type_metrics`): VIRAL is the positive class."""
    tables = {}
    vs = block.get("viral_vs_bacterial")
    accuracy = block["accuracy_among_true_positives"]
    rows = [
        ["Pneumonia images of known type", str(block["n_known_type"])],
        ["Pneumonia images of unknown type (left out)", str(block["n_unknown_type"])],
        [
            f"Type threshold ({block['threshold_rule']}, {block['threshold_fitted_on']})",
            f"{block['threshold']:.3f}",
        ],
        [
            f"Type accuracy among true positives (n = {accuracy['n']}, Wilson)",
            _with_interval(accuracy, percent=True),
        ],
    ]
    if vs is not None:
        at = vs["at_threshold"]
        rows[1:1] = [
            ["Of them VIRAL / BACTERIAL", f"{vs['n_positive']} / {vs['n_negative']}"],
            ["ROC AUC, VIRAL vs BACTERIAL", _with_interval(vs["roc_auc"], percent=False)],
            [
                "Sensitivity for VIRAL at the type threshold",
                _with_interval(at["sensitivity"], percent=True),
            ],
            [
                "Specificity for VIRAL (BACTERIAL called BACTERIAL)",
                _with_interval(at["specificity"], percent=True),
            ],
            [
                "Accuracy of the type at the type threshold",
                _with_interval(at["accuracy"], percent=True),
            ],
        ]
    tables["type"] = (["Pneumonia type (second head)", f"Value [{ci}]"], rows)
    three = block["three_class"]
    tables["three_class"] = (
        ["True \\ predicted", *three["columns"]],
        [
            [row, *map(str, counts)]
            for row, counts in zip(three["rows"], three["matrix"], strict=True)
        ],
    )
    return tables


def _summary_line(metrics: Mapping) -> str:
    boot = metrics.get("bootstrap", {})
    return (
        f"n = {metrics['n']} ({metrics['n_positive']} PNEUMONIA, {metrics['n_negative']} NORMAL); "
        f"intervals: {boot.get('method', 'bootstrap')} bootstrap, "
        f"{boot.get('n_resamples', '?')} resamples, seed {boot.get('seed', '?')}."
    )


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", r"\|") for cell in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)])


def metrics_markdown(metrics: dict) -> str:
    """Markdown tables of a metrics.json body: rates with CIs at the stored threshold and at 0.5,
    threshold-free metrics, and confusion counts. Undefined values read "n/a"."""
    tables = _metric_rows(metrics)
    parts = [_summary_line(metrics)]
    parts += [_markdown_table(*table) for table in tables.values()]
    return "\n\n".join(parts) + "\n"


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _data_counts_html(data_counts: Mapping) -> str:
    """A split x class matrix when every value is a mapping, else a key/value table."""
    if data_counts and all(isinstance(value, Mapping) for value in data_counts.values()):
        columns: list[str] = []
        for value in data_counts.values():
            columns += [str(key) for key in value if str(key) not in columns]
        rows = [
            [str(split), *(str(counts.get(column, "")) for column in columns)]
            for split, counts in data_counts.items()
        ]
        return _html_table(["", *columns], rows)
    rows = [[str(key), str(value)] for key, value in data_counts.items()]
    return _html_table(["Item", "Count"], rows)


def _image_data_uri(name: str, path: Path) -> str:
    """Embed an image file so the report stays one file that opens anywhere, offline."""
    mime = _IMAGE_TYPES.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"plot {name!r}: {path} is not PNG or JPEG; only those are embedded")
    if not path.is_file():
        raise FileNotFoundError(f"plot {name!r}: {path} does not exist; write the plots first")
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"data:{mime};base64,{encoded}"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1100px; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .3rem; }
h2 { margin-top: 2.2rem; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .8rem 0; }
th, td { border: 1px solid #bbb; padding: .3rem .7rem; text-align: left; }
th { background: #eef2f7; }
tbody tr:nth-child(even) { background: #fafafa; }
dl.protocol dt { font-weight: 600; margin-top: .6rem; }
dl.protocol dd { margin-left: 1.2rem; }
.plots { display: flex; flex-wrap: wrap; gap: 1.2rem; }
figure { margin: 0; max-width: 100%; }
figure img { max-width: 520px; width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .9rem; color: #555; }
.summary { color: #444; }
"""


def write_html_report(
    path: str | Path,
    *,
    title: str,
    metrics: dict,
    plots: dict[str, Path],
    data_counts: dict,
    protocol: dict[str, str],
    extra_sections: dict[str, str] | None = None,
) -> Path:
    """Write one self-contained HTML report: inline CSS, images as base64 data URIs, no links out.

    Args:
        path: Output .html file (its folder is created).
        title: Page title.
        metrics: The `evaluate_predictions` result.
        plots: Caption -> PNG/JPEG file, embedded in this order.
        data_counts: Images per split (and class), e.g. {"test": {"NORMAL": 234, "PNEUMONIA": 390}}.
        protocol: Heading -> plain text, e.g. {"Split": "patient-level, ..."}; escaped.
        extra_sections: Heading -> HTML snippet inserted verbatim (escape your own text); a
            snippet that loads anything over the network is refused, to keep the file standalone.
    """
    extra_sections = extra_sections or {}
    for heading, snippet in extra_sections.items():
        if _EXTERNAL_LINK.search(snippet):
            raise ValueError(
                f"extra section {heading!r} links an external resource; embed it as a data URI"
            )
    tables = _metric_rows(metrics)
    protocol_html = "".join(
        f"<dt>{html.escape(str(key))}</dt><dd>{html.escape(str(text))}</dd>"
        for key, text in protocol.items()
    )
    figures = "".join(
        f'<figure><img src="{_image_data_uri(name, Path(file))}" alt="{html.escape(name)}">'
        f"<figcaption>{html.escape(name)}</figcaption></figure>"
        for name, file in plots.items()
    )
    sections = [
        ("Data", _data_counts_html(data_counts)),
        ("Protocol", f'<dl class="protocol">{protocol_html}</dl>'),
        (
            "Metrics",
            f'<p class="summary">{html.escape(_summary_line(metrics))}</p>'
            + "".join(_html_table(*table) for table in tables.values()),
        ),
        ("Plots", f'<div class="plots">{figures}</div>'),
        *((html.escape(heading), snippet) for heading, snippet in extra_sections.items()),
    ]
    body = "".join(
        f"<section><h2>{heading}</h2>{content}</section>" for heading, content in sections
    )
    document = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )
    return atomic_write_text(path, document)


def protocol_text(bundle: Any, split: str, metrics: dict[str, Any]) -> dict[str, str]:
    """Heading -> plain text of how the figures were obtained (a `ModelBundle`'s provenance)."""
    data = bundle.config.get("data") or {}
    train = bundle.config.get("train") or {}
    rule = bundle.threshold_rule
    min_sens = bundle.extra.get("min_sensitivity", train.get("min_sensitivity"))
    if rule == "max_specificity_at_sensitivity":
        rule = f"{rule} (highest specificity with sensitivity >= {min_sens})"
    elif rule == "max_threshold_at_sensitivity":
        rule = f"{rule} (highest threshold with sensitivity >= {min_sens})"
    val_fraction = data.get("val_fraction")
    share = f"{val_fraction:.0%} of each class" if isinstance(val_fraction, float) else "a share"
    protocol = {
        "Validation split": (
            f"patient-level: {share} of the official train + val images, whole patients only, "
            f"seed {train.get('seed', '?')}; no child appears in both training and validation."
        ),
        "Model selection": (
            f"best checkpoint by {train.get('monitor', 'val_auc')} on the validation split "
            "(early stopping on the same figure)."
        ),
        "Threshold": (
            f"{bundle.threshold:.4f}, rule {rule}, chosen on the validation split at the end "
            "of training and stored in the model file; this evaluation does not change it."
        ),
        "Calibration": (
            f"temperature {bundle.temperature:.4f} fitted on the validation split"
            if bundle.temperature != 1.0
            else "none (temperature 1)"
        ),
        "Test split": (
            "the official test split, untouched until this evaluation: no checkpoint, "
            "threshold or calibration choice used it."
            if split == "test"
            else f"WARNING: this evaluates the {split!r} split, which training used; its "
            "numbers are optimistic and are not a test result."
        ),
        "Statistics": (
            f"{metrics['bootstrap']['confidence']:.0%} stratified percentile bootstrap, "
            f"{metrics['bootstrap']['n_resamples']} resamples, seed {metrics['bootstrap']['seed']}."
        ),
        "Fingerprints": (
            f"model {metrics['model_fingerprint']}, evaluated data {metrics['data_fingerprint']}, "
            f"training data {bundle.data_fingerprint or 'unknown'}."
        ),
    }
    site = calibration_line(bundle.extra.get("calibration"))
    if site:
        record = bundle.extra["calibration"]
        protocol["Threshold"] = (
            f"{bundle.threshold:.4f}, {site}: NOT the validation threshold of the parent model "
            f"(sha256 {str(record.get('parent_sha256', ''))[:12]}..., threshold "
            f"{record.get('parent_threshold')}); this evaluation does not change it."
        )
        protocol["Calibration"] = (
            f"temperature {bundle.temperature:.4f} and OOD cut-off refitted on the site's images "
            f"(site fingerprint {record.get('site_fingerprint')}); if the evaluated images are "
            "those images, these figures are not held-out figures."
        )
    return protocol


def _flat_warning(n_flat: int, n: int) -> str:
    """Say when flat maps (no peak, no rank order) make a figure uninformative."""
    if not n_flat:
        return ""
    return (
        f" {n_flat} of {n} pairs had a flat map, counted as 0: the figure rests on "
        f"{n - n_flat} image(s)."
    )


def explain_section_html(result: dict[str, Any]) -> str:
    """HTML of the two sanity figures (escaped; no external resources)."""
    rand = result.get("randomization") or {}
    rows = []
    spearman = rand.get("mean_spearman")
    if spearman is not None:
        rows.append(
            (
                "Randomization test: mean Spearman correlation, original vs randomized maps",
                f"{spearman:.3f} over {rand.get('n_images')} PNEUMONIA images "
                f"({len(rand.get('randomized_layers', []))} modules re-initialized: the head and "
                f"the top {rand.get('top_backbone_layers')} backbone layers). Lower is better: "
                "near 1 means the maps do not depend on the learned weights."
                + _flat_warning(rand.get("n_constant", 0), rand.get("n_images", 0)),
            )
        )
    game = result.get("pointing_game")
    if game and game.get("accuracy") is not None:
        rows.append(
            (
                "Pointing game: map peak inside the opacity box",
                f"PNEUMONIA images: {pointing_game_summary(game)}.",
            )
        )
    elif result.get("pointing_game_note"):
        rows.append(("Pointing game", f"not run: {result['pointing_game_note']}."))
    body = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(text)}</td></tr>" for name, text in rows
    )
    method = html.escape(str(result.get("method", "")))
    return (
        f"<p>Sanity checks of the {method} heatmaps (Adebayo et al. 2018; Zhang et al. 2016) "
        f"on the {html.escape(str(result.get('split', '')))} split.</p>"
        f"<table><tbody>{body}</tbody></table>"
    )


def headline(metrics: dict[str, Any]) -> str:
    """One terminal line: AUC, sensitivity and specificity at the stored threshold, with CIs."""

    def fmt(entry: dict[str, Any], percent: bool) -> str:
        value, low, high = entry.get("value"), entry.get("ci_low"), entry.get("ci_high")
        if value is None:
            return "n/a"
        scale, unit = (100.0, "%") if percent else (1.0, "")
        digits = 1 if percent else 3
        text = f"{scale * value:.{digits}f}{unit}"
        if low is not None and high is not None:
            text += f" [{scale * low:.{digits}f}, {scale * high:.{digits}f}]"
        return text

    at = metrics["at_threshold"]
    confidence = metrics.get("bootstrap", {}).get("confidence", 0.95)
    return (
        f"n={metrics['n']}  ROC AUC {fmt(metrics['roc_auc'], False)}  "
        f"at threshold {metrics['threshold']:.3f}: sensitivity {fmt(at['sensitivity'], True)}, "
        f"specificity {fmt(at['specificity'], True)}  ({confidence:.0%} CI)"
    )


def audit_section_html(audit: dict[str, Any], figure: Path | None) -> str:
    """The shortcut audit: each view's AUC, sensitivity and specificity, and the CAM energy."""
    rows = [
        [
            html.escape(view.replace("_", " ")),
            str(entry["n"]),
            _with_interval(entry["roc_auc"], percent=False),
            _with_interval(entry["sensitivity"], percent=True),
            _with_interval(entry["specificity"], percent=True),
        ]
        for view, entry in audit["views"].items()
    ]
    table = _html_table(["view", "images", "ROC AUC", "sensitivity", "specificity"], rows)
    parts = [
        f"<p>Frame: the outer {audit['frame']:.0%} of each side; lung-field box "
        f"{html.escape(str(audit['lung_box']))} (top, left, bottom, right); fill: "
        f"{html.escape(audit['fill'])}. The model's own threshold; 95% bootstrap CIs.</p>",
        table,
    ]
    energy = audit.get("gradcam_frame_energy")
    if energy:
        per_class = "; ".join(
            f"{html.escape(name)}: {entry['mean']:.2f} (sd {entry['sd']:.2f}, n = {entry['n']})"
            for name, entry in energy["per_class"].items()
        )
        parts.append(
            f"<p>Share of Grad-CAM energy in the frame, per class: {per_class}; a map spread "
            f"evenly would put {energy['uniform_map_share']:.2f} there.</p>"
        )
    if figure is not None:
        parts.append(
            f'<figure><img src="{_image_data_uri(figure.name, figure)}" alt="shortcut audit">'
            "<figcaption>ROC AUC of each view</figcaption></figure>"
        )
    parts.append(f"<p>{html.escape(audit['pointing_game_note'])}.</p>")
    return "".join(parts)
