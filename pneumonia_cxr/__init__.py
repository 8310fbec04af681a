"""Pneumonia detection in pediatric chest X-rays."""

__version__ = "0.1.0"

CLASS_NAMES: tuple[str, str] = ("NORMAL", "PNEUMONIA")
"""Class index order everywhere: 0 = NORMAL, 1 = PNEUMONIA (the positive class)."""

TYPE_NAMES: tuple[str, str] = ("BACTERIAL", "VIRAL")
"""The pneumonia type head's index order: 0 = BACTERIAL, 1 = VIRAL (its positive class).
The type answers only for an image called PNEUMONIA: P(VIRAL | PNEUMONIA)."""

TYPE_HEAD_HIDDEN = 256
"""Width of the type head's one hidden layer (`model.classifier.PneumoniaNet`)."""

# The public face, imported on first use (PEP 562) so that `import pneumonia_cxr` and the
# CLI's start stay light: name -> module that defines it.
_PUBLIC = {
    "load": "pneumonia_cxr.api",
    "Model": "pneumonia_cxr.api",
    "evaluate": "pneumonia_cxr.api",
    "PredictionRow": "pneumonia_cxr.predict",
    "train": "pneumonia_cxr.training.run",
    "RunConfig": "pneumonia_cxr.config",
    "demo_config": "pneumonia_cxr.config",
    "list_images": "pneumonia_cxr.data.discovery",
    "resolve_dataset": "pneumonia_cxr.data.discovery",
    "load_xray": "pneumonia_cxr.data.loader",
    "patient_id": "pneumonia_cxr.data.patients",
    "make_patient_split": "pneumonia_cxr.data.split",
    "read_split_csv": "pneumonia_cxr.data.split",
    "summarize_dataset": "pneumonia_cxr.data.summary",
    "format_summary": "pneumonia_cxr.data.summary",
    "SyntheticSpec": "pneumonia_cxr.data.synthetic",
    "generate_synthetic_dataset": "pneumonia_cxr.data.synthetic",
    "read_opacity_boxes": "pneumonia_cxr.data.synthetic",
    "load_model": "pneumonia_cxr.model.model_file",
    "headline": "pneumonia_cxr.evaluation.report",
}
__all__ = ["CLASS_NAMES", "TYPE_NAMES", "__version__", *_PUBLIC]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'pneumonia_cxr' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
