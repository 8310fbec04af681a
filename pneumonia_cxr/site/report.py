"""`adapt`'s site report: one HTML page a hospital's ML engineer can read and file, and the same
figures as JSON for scripts. Everything on it comes from the adaptation record and the held-out
measures (`site.held_out`); nothing is measured here."""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia_cxr.evaluation.metrics import Estimate
from pneumonia_cxr.site.held_out import HeldOut, format_interval
from pneumonia_cxr.storage import atomic_write_text

REPORT_HTML, REPORT_JSON = "site_report.html", "site_report.json"


def _roc_svg(before: HeldOut, after: HeldOut) -> str:
    """Both ROC curves in one inline SVG (matplotlib, no file)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    figure = Figure(figsize=(4.5, 4.5))
    axes = figure.subplots()
    for name, held in (("the model as it was", before), ("adapted, out of fold", after)):
        fpr, tpr, _ = roc_curve(held.labels, held.probabilities)
        auc = held.metrics.roc_auc.value
        axes.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
    axes.set_xlabel("1 - specificity")
    axes.set_ylabel("sensitivity")
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _row(cells: list[str], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"


def _figures(held: HeldOut) -> dict[str, Any]:
    return {**held.record(), "flagged_share": held.flagged / max(held.metrics.n, 1)}


def site_report(
    record: dict[str, Any], before: HeldOut, after: HeldOut, output: Path
) -> dict[str, Any]:
    """The report's figures (what the JSON holds)."""
    return {
        "adapted_model": str(output),
        "identity": {
            "parent_file": record["parent_file"],
            "parent_sha256": record["parent_sha256"],
            "recipe": record["recipe"],
            "c": record["c"],
            "site_fingerprint": record["site_fingerprint"],
        },
        "site": record["site"],
        "folds": record["folds"],
        "before": _figures(before),
        "after_out_of_fold": _figures(after),
        "target_sensitivity": record["min_sensitivity"],
        "candidates": record["candidates"],
        "not_available": record["not_available"],
        "outer_folds_chose": record["outer_folds_chose"],
        "verdict": after.verdict,
        "verdict_from": record["verdict_from"],
        "nested_at_target": record["nested_at_target"],
        "nested_oof_auc": record["nested_oof_auc"],
        "type": record["type"],
        "roc": {
            "before": {"labels": before.labels, "probabilities": before.probabilities},
            "after_out_of_fold": {"labels": after.labels, "probabilities": after.probabilities},
        },
    }


def _html(report: dict[str, Any], before: HeldOut, after: HeldOut) -> str:
    site, identity = report["site"], report["identity"]
    rows = [_row(["", "the model as it was", "adapted (out of fold)"], "th")]
    for name in ("roc_auc", "sensitivity", "specificity"):
        percent = name != "roc_auc"
        rows.append(
            _row(
                [
                    name.replace("_", " "),
                    format_interval(getattr(before.metrics, name), percent=percent),
                    format_interval(getattr(after.metrics, name), percent=percent),
                ]
            )
        )
    rows.append(
        _row(
            [
                "threshold",
                f"{before.metrics.threshold:.4f}",
                f"{after.metrics.threshold:.4f} (target sensitivity "
                f"{report['target_sensitivity']})",
            ]
        )
    )
    nested = report.get("nested_at_target")
    if nested:
        rates = [
            format_interval(Estimate.from_dict(nested[name]))
            for name in ("sensitivity", "specificity")
        ]
        rows.append(
            _row(
                [
                    "nested: threshold fitted inside each fold",
                    "-",
                    f"sensitivity {rates[0]}, specificity {rates[1]}",
                ]
            )
        )
    rows.append(
        _row(
            [
                "flagged as not assessable",
                f"{before.flagged} of {before.metrics.n}",
                f"{after.flagged} of {after.metrics.n} (the adapted file, its site guard)",
            ]
        )
    )
    candidates = [_row(["recipe", "C", "cross-validated AUC", "nested out-of-fold AUC"], "th")]
    for name, figures in report["candidates"].items():
        candidates.append(
            _row(
                [
                    name + (" (chosen)" if name == identity["recipe"] else ""),
                    "-" if figures["c"] is None else f"{figures['c']:g}",
                    f"{figures['cv_auc']:.3f}",
                    "-"
                    if figures["nested_oof_auc"] is None
                    else f"{figures['nested_oof_auc']:.3f}",
                ]
            )
        )
    for name, why in report["not_available"].items():
        candidates.append(_row([name, "-", f"not available here: {why}", "-"]))
    verdict = report["verdict"]
    counts = ", ".join(
        f"{name}: {site['images'][name]} images of {site['patients'][name]} patients"
        for name in site["images"]
    )
    css = (
        "body{font-family:sans-serif;max-width:52em;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px}"
        ".no{color:#a00;font-weight:bold}.yes{color:#060;font-weight:bold}"
    )
    verdict_class = "yes" if verdict["useful"] else "no"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Site adaptation report</title>
<style>{css}</style></head><body>
<h1>Site adaptation report</h1>
<p class="{verdict_class}">Verdict: {html.escape(verdict["text"].split(";")[0])}
(rule: {html.escape(verdict["rule"])}).</p>
<p>Site images used: {html.escape(counts)}; {report["folds"]} folds by patient. Every
"adapted" figure is out of fold: each image was scored by a head fitted on other patients, with
the recipe and its regularisation chosen without it. Not for diagnostic use.</p>
<h2>Before and after</h2><table>{"".join(rows)}</table>
{_roc_svg(before, after)}
<h2>Recipes tried</h2><table>{"".join(candidates)}</table>
<p>Bacterial/viral type: {html.escape(_type_text(report["type"]))}.</p>
<h2>Identity</h2><ul>
<li>adapted model: {html.escape(report["adapted_model"])}</li>
<li>parent: {html.escape(identity["parent_file"])} (sha256 {identity["parent_sha256"]})</li>
<li>recipe: {html.escape(identity["recipe"])}{_strength(identity["c"])}</li>
<li>site fingerprint: {identity["site_fingerprint"]}</li></ul>
</body></html>
"""


def _strength(c: float | None) -> str:
    return "" if c is None else f", C {c:g}"


def _type_text(kind: dict[str, Any]) -> str:
    if not kind["available"]:
        return "not available: " + kind["why"]
    auc = Estimate.from_dict(kind["out_of_fold"]["roc_auc"])
    return f"{kind['why']}; out-of-fold ROC AUC {format_interval(auc, percent=False)}"


def write_site_report(
    folder: Path, *, record: dict[str, Any], before: HeldOut, after: HeldOut, output: Path
) -> dict[str, Any]:
    """Write `site_report.html` and `site_report.json` into `folder`; returns their paths."""
    report = site_report(record, before, after, output)
    atomic_write_text(folder / REPORT_JSON, json.dumps(report, indent=1, default=_plain) + "\n")
    atomic_write_text(folder / REPORT_HTML, _html(report, before, after))
    return {"html": str(folder / REPORT_HTML), "json": str(folder / REPORT_JSON)}


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Estimate):
        return value.__dict__
    raise TypeError(f"not JSON: {type(value).__name__}")
