"""DICOM results a PACS can store beside the image (issue 36): a Structured Report of each DICOM
input's answer and a Secondary Capture of its heatmap, built with highdicom.

The SR (Comprehensive SR) references the source instance and states the finding, coded
(SNOMED CT 233604007 "Pneumonia", 17621005 "Normal", or 373068000 "Undetermined" with the reason
for an image that is not assessed), the probability and threshold, the bacterial/viral answer,
the model's name, version and sha256, the intended-use sentence and "not for diagnostic use".
The Secondary Capture (a new series in the same study) is the heatmap overlay with that
disclaimer burned into its pixels; an image that is not assessed gets none. Patient and study
identifiers are copied from the source by highdicom; every new object gets new UIDs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumonia_cxr import __version__
from pneumonia_cxr.storage import atomic_write

log = logging.getLogger(__name__)

DISCLAIMER = "NOT FOR DIAGNOSTIC USE: research software; a clinician must read the image."
MANUFACTURER = "pneumonia-cxr"
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9901, 9902
PRIVATE_SCHEME = "99PCX"
"""Private coding scheme (DICOM PS3.16: designators starting with 99) for this model's items."""
FRONTAL_ORIENTATION = ("L", "F")
"""PatientOrientation of a frontal chest film shown the usual way, for a source without one."""


@dataclass(frozen=True)
class ModelIdentity:
    """What every SR says about the model that answered."""

    name: str
    sha256: str
    intended_use: str
    version: str = __version__


def _codes():
    """(highdicom, the coded concepts), imported on first use: the light install scores
    without them until `--dicom_out` is asked for."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    def own(value: str, meaning: str):
        return hd.sr.CodedConcept(value, PRIVATE_SCHEME, meaning)

    concepts = {
        "report": hd.sr.CodedConcept("18748-4", "LN", "Diagnostic imaging report"),
        "finding": codes.DCM.Finding,
        "source": codes.DCM.SourceImageForImageProcessingOperation,
        "algorithm": codes.DCM.AlgorithmName,
        "algorithm_version": codes.DCM.AlgorithmVersion,
        "no_units": codes.UCUM.NoUnits,
        "PNEUMONIA": hd.sr.CodedConcept("233604007", "SCT", "Pneumonia"),
        "NORMAL": hd.sr.CodedConcept("17621005", "SCT", "Normal"),
        "undetermined": hd.sr.CodedConcept("373068000", "SCT", "Undetermined"),
        "BACTERIAL": hd.sr.CodedConcept("53084003", "SCT", "Bacterial pneumonia"),
        "VIRAL": hd.sr.CodedConcept("75570004", "SCT", "Viral pneumonia"),
        "probability": own("PCX01", "Probability of pneumonia"),
        "threshold": own("PCX02", "Decision threshold"),
        "sha256": own("PCX05", "Model file SHA-256"),
        "intended_use": own("PCX06", "Intended use"),
        "disclaimer": own("PCX07", "Disclaimer"),
        "reason": own("PCX08", "Reason not assessed"),
        "state": own("PCX09", "Assessment state"),
    }
    return hd, concepts


def _further_answers(hd, c: dict, result, relationship) -> list:
    """Each answer after P(PNEUMONIA) the model gave (`model.outputs`): its probability, named
    by the registry's question, and its class (coded where SNOMED CT has the concept)."""
    from pneumonia_cxr.model.outputs import OUTPUTS

    items = []
    for output in OUTPUTS[1:]:
        if output.name not in result.labels:  # not given for this image (e.g. a NORMAL's type)
            continue
        key = f"PCX-{output.name}"[:14]
        number = float(result.probabilities[output.name])
        items.append(
            hd.sr.NumContentItem(
                hd.sr.CodedConcept(f"{key}-P", PRIVATE_SCHEME, output.question),
                number,
                c["no_units"],
                relationship_type=relationship,
            )
        )
        label = result.labels.get(output.name)
        if label:
            value = c.get(label) or hd.sr.CodedConcept(f"{key}-{label}"[:16], PRIVATE_SCHEME, label)
            name = hd.sr.CodedConcept(key, PRIVATE_SCHEME, f"Answer: {output.name}")
            items.append(hd.sr.CodeContentItem(name, value, relationship_type=relationship))
    return items


def structured_report(source, row, model: ModelIdentity, threshold: float):
    """The Comprehensive SR of one DICOM input's `PredictionRow` (see the module docstring)."""
    hd, c = _codes()
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    items = [
        hd.sr.ImageContentItem(
            c["source"], source.SOPClassUID, source.SOPInstanceUID, relationship_type=contains
        ),
        hd.sr.TextContentItem(c["state"], row.state, relationship_type=contains),
    ]
    if row.assessed:
        items.append(hd.sr.CodeContentItem(c["finding"], c[row.label], relationship_type=contains))
        items += [
            hd.sr.NumContentItem(c[key], float(value), c["no_units"], relationship_type=contains)
            for key, value in (("probability", row.probability), ("threshold", threshold))
        ]
        items += _further_answers(hd, c, row.result, contains)
    else:
        items.append(
            hd.sr.CodeContentItem(c["finding"], c["undetermined"], relationship_type=contains)
        )
        items.append(hd.sr.TextContentItem(c["reason"], row.reason, relationship_type=contains))
    items += [
        hd.sr.TextContentItem(c["algorithm"], model.name, relationship_type=contains),
        hd.sr.TextContentItem(c["algorithm_version"], model.version, relationship_type=contains),
        hd.sr.TextContentItem(c["sha256"], model.sha256, relationship_type=contains),
        hd.sr.TextContentItem(c["intended_use"], model.intended_use, relationship_type=contains),
        hd.sr.TextContentItem(c["disclaimer"], DISCLAIMER, relationship_type=contains),
    ]
    root = hd.sr.ContainerContentItem(c["report"])
    root.ContentSequence = hd.sr.ContentSequence(items)
    return hd.sr.ComprehensiveSR(
        evidence=[source],
        content=root,
        series_instance_uid=result_uid(source.StudyInstanceUID, model.sha256, "sr-series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=result_uid(source.SOPInstanceUID, model.sha256, "sr"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description="pneumonia-cxr result (not for diagnostic use)",
    )


def result_uid(source_uid: str, model_sha256: str, kind: str) -> str:
    """The same UID for the same source, model and kind of object (pydicom's UID from
    their hash): a resumed or repeated run rewrites its objects, a PACS never gets two results
    for one image from one model; one series per study, model and kind."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[source_uid, model_sha256, kind]))


def burn_disclaimer(rgb: np.ndarray) -> np.ndarray:
    """The overlay with the disclaimer written into its pixels (a band across the top)."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(rgb)
    size = max(12, image.width // 40)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(image)
    box = draw.textbbox((0, 0), DISCLAIMER, font=font)
    draw.rectangle((0, 0, image.width, box[3] + size // 2), fill=(0, 0, 0))
    draw.text((size // 4, size // 4), DISCLAIMER, fill=(255, 255, 0), font=font)
    return np.asarray(image)


def heatmap_capture(source, overlay_rgb: np.ndarray, model_sha256: str):
    """A Secondary Capture of the heatmap overlay in the source's study, disclaimer burned in."""
    from pydicom.dataset import Dataset

    hd, _ = _codes()
    orientation = tuple(getattr(source, "PatientOrientation", None) or ())
    if len(orientation) != 2:
        # Same pixel geometry as the source; a frontal chest film without the attribute is taken
        # as displayed conventionally (the patient's left to the viewer's right, feet down).
        orientation = FRONTAL_ORIENTATION
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=burn_disclaimer(np.ascontiguousarray(overlay_rgb, dtype=np.uint8)),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=result_uid(source.StudyInstanceUID, model_sha256, "heatmap-series"),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=result_uid(source.SOPInstanceUID, model_sha256, "heatmap"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=orientation,
        series_description="pneumonia-cxr heatmap (not for diagnostic use)",
    )
    capture.BurnedInAnnotation = "YES"  # the disclaimer is in the pixels
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    capture.SourceImageSequence = [reference]  # which film this heatmap is of
    capture.DerivationDescription = "pneumonia-cxr Grad-CAM heatmap over the source image"
    capture.Laterality = getattr(source, "Laterality", "")  # type 2C: present, empty for a chest
    return capture


TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
"""Patient and General Study attributes every result object must carry (type 2: present,
possibly empty) and copies from its source."""


def with_empty_type2(source):
    """The source header (a copy read for the results) with any of `TYPE2_COPIED` it lacks
    present and empty, as the standard allows: a film from a modality that leaves them out
    still gets its results, and no value is made up."""
    for keyword in TYPE2_COPIED:
        if keyword not in source:
            setattr(source, keyword, "")
    return source


class DicomResultWriter:
    """Writes `sr_<UID>.dcm` (and `heatmap_<UID>.dcm` for an assessed image) per DICOM input
    into one folder, atomically, each named by its own new SOP Instance UID; other inputs get
    nothing."""

    def __init__(self, out_dir: str | Path, model: ModelIdentity, threshold: float) -> None:
        self.out_dir, self.model, self.threshold = Path(out_dir), model, threshold
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def write(self, row, overlay: np.ndarray | None = None) -> list[Path]:
        """The objects of one read DICOM input's row (its header read again; `force`, as the
        loader reads a DICOM file without its preamble)."""
        import pydicom

        source = with_empty_type2(pydicom.dcmread(row.path, stop_before_pixels=True, force=True))
        written = [self._save(structured_report(source, row, self.model, self.threshold), "sr")]
        if row.assessed and overlay is not None:
            capture = heatmap_capture(source, overlay, self.model.sha256)
            written.append(self._save(capture, "heatmap"))
        return written

    def _save(self, dataset, kind: str) -> Path:
        target = self.out_dir / f"{kind}_{dataset.SOPInstanceUID}.dcm"
        atomic_write(target, lambda handle: dataset.save_as(handle, enforce_file_format=True))
        return target


class DicomBatchWriter:
    """`predict --dicom_out DIR`: a writer of the prediction loop (`predict.iter_prediction_
    batches`), beside the table: each batch's DICOM inputs get their SR, and the assessed ones
    their heatmap capture (Grad-CAM of the PyTorch model file; an ONNX export writes SRs only)."""

    def __init__(self, results: DicomResultWriter, predictor) -> None:
        self.results = results
        self.keep_original = predictor.bundle is not None  # originals only where maps are drawn
        self.written: list[Path] = []
        self.failed: list[str] = []

    @classmethod
    def for_model(cls, out_dir: str | Path, predictor, model_path: str | Path) -> DicomBatchWriter:
        """The writer of `predictor`'s model file (its name and sha256 go into every SR)."""
        from pneumonia_cxr.data.split import file_sha256

        identity = ModelIdentity(
            name=Path(model_path).name,
            sha256=file_sha256(model_path),
            intended_use=predictor.engine.intended_use.scope_sentence(),
        )
        return cls(DicomResultWriter(out_dir, identity, predictor.threshold), predictor)

    def write(self, predictor, batch, rows) -> None:
        # DICOM by the loader's own reading of each file (its header facts), not by its name.
        picks = [
            k
            for k, facts in enumerate(batch.facts)
            if facts is not None and facts.dicom is not None
        ]
        heat = [k for k in picks if rows[batch.indices[k]].assessed]
        overlays: dict[int, np.ndarray] = {}
        if heat and predictor.bundle is not None:
            try:
                from pneumonia_cxr.explain.overlay import gradcam_overlays

                maps = gradcam_overlays(
                    predictor, batch.inputs[heat], [batch.originals[k] for k in heat]
                )
                overlays = dict(zip(heat, maps, strict=True))
            except Exception as error:
                log.warning("no heatmap captures for this batch (%s)", error)
        for k in picks:
            row = rows[batch.indices[k]]
            try:
                self.written += self.results.write(row, overlays.get(k))
            except Exception as error:
                # e.g. no StudyInstanceUID (not a PACS object): its table row stands, and the
                # failure is said.
                self.failed.append(row.path)
                log.warning("%s: no DICOM result written (%s)", row.path, error)
