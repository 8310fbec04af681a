"""A SYNTHETIC chest-X-ray-like data set for the offline demo and for tests.

Nothing here is medical data. The images are drawn with numpy from a handful of soft shapes
(body, two lung fields, heart and mediastinum, spine, ribs, clavicles) plus smooth noise, so the
whole pipeline (patient-level split, training, evaluation, Grad-CAM) can run in minutes without
the Kermany download. PNEUMONIA images carry one soft opacity inside a lung field whose bounding
box is recorded, which lets a test check that a heatmap points at the finding.

The folder mimics the official Kermany layout and file names so the same discovery code and
patient parser serve real and synthetic data:

    <out_dir>/{train,val,test}/{NORMAL,PNEUMONIA}/<Kermany-style name>.png
    <out_dir>/opacity_boxes.csv     one row per PNEUMONIA image: path,x0,y0,x1,y1
    <out_dir>/synthetic.json        {"synthetic": true, "spec": {...}, ...}
    <out_dir>/README.txt            says, in capitals, that the images are SYNTHETIC

Every image is rendered from its own seed (spec seed, class, patient, image number), so a file
does not depend on the order of generation. One patient's images share their anatomy and, for
PNEUMONIA, the place of the opacity, as follow-up films of one child do; a small per-image
jitter (position, exposure, noise) keeps them from being copies.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pneumonia_cxr import CLASS_NAMES
from pneumonia_cxr.errors import DatasetLayoutError

SYNTHETIC_BOXES_FILE = "opacity_boxes.csv"
SYNTHETIC_MARKER_FILE = "synthetic.json"
SYNTHETIC_README_FILE = "README.txt"
SYNTHETIC_DIRNAME = "synthetic_cxr_demo"
"""Default folder name for the demo set (the caller chooses the parent folder)."""

SPLITS: tuple[str, str, str] = ("train", "val", "test")
BOX_COLUMNS: tuple[str, ...] = ("path", "x0", "y0", "x1", "y1")
OPACITY_BOX_FRACTION = 0.3
"""The box covers every pixel where the opacity reaches this fraction of its own peak."""

FORMAT_VERSION = 2
"""Bump when the drawing changes, so an old folder is regenerated instead of silently reused."""

_MAX_NORMAL_PATIENTS = 9999  # IM-NNNN-MMMM has four digits for the patient and the image
_BACTERIA_FRACTION = 0.65  # roughly Kermany's bacteria : virus ratio; only the name changes
_SEED_TAG_PATIENT = 1
_SEED_TAG_IMAGE = 2
# Independent random streams per patient, so e.g. the bacteria/virus name is not correlated
# with the first anatomy draw.
_STREAM_ANATOMY, _STREAM_KIND, _STREAM_LESION = 0, 1, 2


@dataclass(frozen=True)
class SyntheticSpec:
    """Size of the synthetic set; stored in the folder so a rerun can tell whether to reuse it."""

    image_size: int = 128
    train_per_class: int = 120  # images per class in train
    val_per_class: int = 8  # official-style tiny val
    test_per_class: int = 40
    images_per_patient: int = 3  # several images per patient, like Kermany
    seed: int = 0

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32 pixels, not {self.image_size}")
        for name in ("train_per_class", "val_per_class", "test_per_class", "images_per_patient"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.images_per_patient > 9999:
            raise ValueError("images_per_patient must fit the 4-digit image number of IM-NNNN-MMMM")
        if self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, not {self.seed}")
        patients = sum(
            math.ceil(n / self.images_per_patient)
            for n in (self.train_per_class, self.val_per_class, self.test_per_class)
        )
        if patients > _MAX_NORMAL_PATIENTS:
            raise ValueError(
                f"{patients} NORMAL patients do not fit the 4-digit IM-NNNN-MMMM names; "
                "use fewer images or more images_per_patient"
            )

    def per_class(self, split: str) -> int:
        """Images per class in `split`."""
        return {
            "train": self.train_per_class,
            "val": self.val_per_class,
            "test": self.test_per_class,
        }[split]


@dataclass(frozen=True)
class SyntheticItem:
    """One planned image: where it goes and which seed draws it."""

    split: str
    label: str
    patient: int
    image_index: int
    """0-based number of this image within its patient."""
    filename: str

    @property
    def relpath(self) -> str:
        """Key used in the boxes CSV: "split/CLASS/file.png" with forward slashes."""
        return f"{self.split}/{self.label}/{self.filename}"

    @property
    def is_pneumonia(self) -> bool:
        return self.label == CLASS_NAMES[1]


@dataclass(frozen=True)
class SyntheticImage:
    """A rendered image with the layers a test needs to check it."""

    pixels: np.ndarray
    """uint8 (H, W): exactly what is written to the PNG."""
    lung_mask: np.ndarray
    """float (H, W) in [0, 1]: visible lung field (lungs minus heart and mediastinum)."""
    opacity: np.ndarray
    """float (H, W) >= 0: the opacity added before quantisation; all zero for NORMAL."""
    box: tuple[int, int, int, int] | None
    """(x0, y0, x1, y1), x1/y1 exclusive, so pixels[y0:y1, x0:x1] is the box; None for NORMAL."""


# ----------------------------------------------------------------------------------- naming


def _patient_sizes(n_images: int, per_patient: int) -> list[int]:
    full, rest = divmod(n_images, per_patient)
    return [per_patient] * full + ([rest] if rest else [])


def _patient_rng(seed: int, label: str, patient: int, stream: int) -> np.random.Generator:
    words = [seed, _SEED_TAG_PATIENT, CLASS_NAMES.index(label), patient, stream]
    return np.random.default_rng(words)


def _image_rng(seed: int, item: SyntheticItem) -> np.random.Generator:
    words = [seed, _SEED_TAG_IMAGE, CLASS_NAMES.index(item.label), item.patient, item.image_index]
    return np.random.default_rng(words)


def plan_synthetic_dataset(spec: SyntheticSpec = SyntheticSpec()) -> list[SyntheticItem]:
    """Every file of the set, in a fixed order, without drawing anything.

    Patient numbers and the pneumonia image counter run across splits, so names are unique in
    the whole folder and no patient appears in two splits.
    """
    items: list[SyntheticItem] = []
    normal_patient, pneumonia_patient, pneumonia_image = 0, 0, 0
    for split in SPLITS:
        sizes = _patient_sizes(spec.per_class(split), spec.images_per_patient)
        for n_images in sizes:
            normal_patient += 1
            for index in range(n_images):
                name = f"IM-{normal_patient:04d}-{index + 1:04d}.png"
                items.append(SyntheticItem(split, CLASS_NAMES[0], normal_patient, index, name))
        for n_images in sizes:
            pneumonia_patient += 1
            rng = _patient_rng(spec.seed, CLASS_NAMES[1], pneumonia_patient, _STREAM_KIND)
            kind = "bacteria" if rng.random() < _BACTERIA_FRACTION else "virus"
            for index in range(n_images):
                pneumonia_image += 1
                name = f"person{pneumonia_patient}_{kind}_{pneumonia_image}.png"
                items.append(SyntheticItem(split, CLASS_NAMES[1], pneumonia_patient, index, name))
    return items


# ---------------------------------------------------------------------------------- drawing
# All geometry lives in "anatomy coordinates": u (left to right) and v (top to bottom) in
# [-1, 1] across the image, before the per-image shift/scale/rotation. The functions accept
# arrays of any shape, so the same code gives the image and the value at a single point.


@dataclass(frozen=True)
class _Anatomy:
    """Patient-level shape and brightness, shared by all images of one patient."""

    background: float
    body_level: float
    body_rx: float
    body_ry: float
    body_cy: float
    body_power: float
    lung_dx: tuple[float, float]
    lung_cy: tuple[float, float]
    lung_rx: tuple[float, float]
    lung_ry: tuple[float, float]
    lung_darkness: float
    heart_cx: float
    heart_cy: float
    heart_rx: float
    heart_ry: float
    mediastinum_halfwidth: float
    rib_curvature: float
    rib_top: float
    rib_spacing: float
    rib_thickness: float
    rib_level: float
    clavicle_v: float
    clavicle_slope: float


@dataclass(frozen=True)
class _Jitter:
    """Image-level variation: positioning, exposure and noise."""

    shift_u: float
    shift_v: float
    scale: float
    angle: float
    gain: float
    offset: float
    gamma: float
    texture: float
    grain: float


def _sample_anatomy(rng: np.random.Generator) -> _Anatomy:
    lung_rx = rng.uniform(0.27, 0.32)
    lung_ry = rng.uniform(0.58, 0.66)
    lung_cy = rng.uniform(-0.14, -0.06)
    heart_ry = rng.uniform(0.18, 0.24)
    return _Anatomy(
        background=rng.uniform(0.03, 0.10),
        body_level=rng.uniform(0.50, 0.60),
        body_rx=rng.uniform(0.86, 0.98),
        body_ry=rng.uniform(1.35, 1.6),
        body_cy=rng.uniform(0.35, 0.5),
        body_power=rng.uniform(3.0, 4.0),
        lung_dx=(rng.uniform(0.39, 0.44), rng.uniform(0.39, 0.44)),
        lung_cy=(lung_cy + rng.uniform(-0.02, 0.02), lung_cy + rng.uniform(-0.02, 0.02)),
        lung_rx=(lung_rx * rng.uniform(0.95, 1.05), lung_rx * rng.uniform(0.92, 1.0)),
        lung_ry=(lung_ry * rng.uniform(0.95, 1.02), lung_ry * rng.uniform(0.95, 1.02)),
        lung_darkness=rng.uniform(0.26, 0.34),
        heart_cx=rng.uniform(0.11, 0.17),
        heart_cy=lung_cy + lung_ry - 0.6 * heart_ry + rng.uniform(-0.03, 0.03),
        heart_rx=rng.uniform(0.27, 0.32),
        heart_ry=heart_ry,
        mediastinum_halfwidth=rng.uniform(0.09, 0.12),
        rib_curvature=rng.uniform(0.6, 0.9),
        rib_top=lung_cy - lung_ry - rng.uniform(0.0, 0.06),
        rib_spacing=rng.uniform(0.12, 0.14),
        rib_thickness=rng.uniform(0.026, 0.034),
        rib_level=rng.uniform(0.10, 0.14),
        clavicle_v=lung_cy - lung_ry + rng.uniform(0.0, 0.08),
        clavicle_slope=rng.uniform(0.20, 0.32),
    )


def _sample_jitter(rng: np.random.Generator) -> _Jitter:
    return _Jitter(
        shift_u=rng.normal(0.0, 0.015),
        shift_v=rng.normal(0.0, 0.015),
        scale=rng.uniform(0.97, 1.03),
        angle=math.radians(rng.normal(0.0, 1.5)),
        gain=rng.uniform(0.88, 1.12),
        offset=rng.normal(0.0, 0.03),
        gamma=rng.uniform(0.85, 1.15),
        texture=rng.uniform(0.025, 0.045),
        grain=rng.uniform(0.008, 0.016),
    )


def _soft_step(x: np.ndarray | float, width: float) -> np.ndarray:
    """Logistic edge, written with tanh so large arguments cannot overflow."""
    return 0.5 * (1.0 + np.tanh(np.asarray(x) / (2.0 * width)))


def _lung_raw(a: _Anatomy, side: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """One lung (side 0 = image left) as a soft ellipse that narrows towards the apex."""
    sign = -1.0 if side == 0 else 1.0
    t = (v - a.lung_cy[side]) / a.lung_ry[side]
    width = a.lung_rx[side] * np.clip(0.88 + 0.25 * t, 0.45, 1.05)
    r = np.sqrt(((u - sign * a.lung_dx[side]) / width) ** 2 + t**2)
    return _soft_step(1.0 - r, 0.035)


def _heart(a: _Anatomy, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r = np.sqrt(((u - a.heart_cx) / a.heart_rx) ** 2 + ((v - a.heart_cy) / a.heart_ry) ** 2)
    return _soft_step(1.0 - r, 0.05)


def _mediastinum(a: _Anatomy, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    halfwidth = a.mediastinum_halfwidth * (1.0 + 0.35 * np.clip(v + 0.5, 0.0, 1.0))
    return _soft_step(halfwidth - np.abs(u), 0.02)


def _lung_field(a: _Anatomy, side: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Visible lung: the heart and mediastinum shadows hide the lung behind them."""
    return _lung_raw(a, side, u, v) * (1.0 - _heart(a, u, v)) * (1.0 - _mediastinum(a, u, v))


def _body(a: _Anatomy, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    p = a.body_power
    r = (np.abs(u / a.body_rx) ** p + np.abs((v - a.body_cy) / a.body_ry) ** p) ** (1.0 / p)
    return _soft_step(1.0 - r, 0.02)


def _ribs(a: _Anatomy, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Posterior ribs as arcs (highest near the spine, falling laterally), faint anterior ones."""
    au = np.abs(u)
    lateral = _soft_step(au - 0.07, 0.015) * _soft_step(0.95 * a.body_rx - au, 0.03)
    phase = (v - a.rib_curvature * (au - 0.12) ** 2 - a.rib_top) / a.rib_spacing
    k = np.rint(phase)
    posterior = np.exp(-(((phase - k) * a.rib_spacing / a.rib_thickness) ** 2)) * (k >= 0) * (k < 9)
    phase2 = (v + 0.5 * au - a.rib_top - 0.1) / (1.3 * a.rib_spacing)
    k2 = np.rint(phase2)
    anterior = np.exp(-(((phase2 - k2) * 1.3 * a.rib_spacing / a.rib_thickness) ** 2))
    anterior = anterior * (k2 >= 0) * (k2 < 5) * _soft_step(0.55 - au, 0.05)
    return lateral * (posterior + 0.35 * anterior)


def _clavicles(a: _Anatomy, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au = np.abs(u)
    centre = a.clavicle_v - a.clavicle_slope * (au - 0.1)
    extent = _soft_step(au - 0.06, 0.02) * _soft_step(0.62 - au, 0.03)
    return np.exp(-(((v - centre) / 0.028) ** 2)) * extent


@lru_cache(maxsize=8)
def _noise_filter(size: int, correlation: float) -> np.ndarray:
    freq_v = np.fft.fftfreq(size)[:, None]
    freq_u = np.fft.rfftfreq(size)[None, :]
    sigma = correlation * size
    return np.exp(-2.0 * (math.pi * sigma) ** 2 * (freq_v**2 + freq_u**2))


def _smooth_noise(rng: np.random.Generator, size: int, correlation: float) -> np.ndarray:
    """Unit-variance Gaussian-correlated noise; `correlation` is a fraction of the image side.

    Filtering in the Fourier domain keeps it vectorised and independent of the image size.
    """
    white = rng.standard_normal((size, size))
    field = np.fft.irfft2(np.fft.rfft2(white) * _noise_filter(size, correlation), s=(size, size))
    return field / (field.std() + 1e-12)


def _anatomy_grid(size: int, j: _Jitter) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres mapped into anatomy coordinates through the image's shift/scale/rotation."""
    axis = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    x, y = np.meshgrid(axis, axis)
    x, y = x - j.shift_u, y - j.shift_v
    cos, sin = math.cos(j.angle), math.sin(j.angle)
    return (cos * x + sin * y) / j.scale, (-sin * x + cos * y) / j.scale


@dataclass(frozen=True)
class _Lesion:
    """Patient-level opacity: a child's follow-up images show the finding in the same place."""

    side: int
    centre_u: float
    centre_v: float
    sigma_u: float
    sigma_v: float
    angle: float
    strength: float
    """Peak as a fraction of the lung's darkness."""


def _sample_lesion(a: _Anatomy, rng: np.random.Generator) -> _Lesion:
    """Place the opacity well inside one visible lung field (not behind the heart)."""
    side = int(rng.integers(2))
    sign = -1.0 if side == 0 else 1.0
    radius = np.sqrt(rng.uniform(0.0, 1.0, 64)) * 0.6
    theta = rng.uniform(0.0, 2.0 * math.pi, 64)
    cand_u = sign * a.lung_dx[side] + radius * np.cos(theta) * a.lung_rx[side] * 0.85
    cand_v = a.lung_cy[side] + radius * np.sin(theta) * a.lung_ry[side]
    inside = np.flatnonzero(_lung_field(a, side, cand_u, cand_v) > 0.8)
    pick = int(inside[0]) if inside.size else int(np.argmin(radius))
    return _Lesion(
        side=side,
        centre_u=float(cand_u[pick]),
        centre_v=float(cand_v[pick]),
        sigma_u=rng.uniform(0.09, 0.16),
        sigma_v=rng.uniform(0.10, 0.20),
        angle=rng.uniform(0.0, math.pi),
        strength=rng.uniform(0.75, 1.05),
    )


def _opacity_layer(
    a: _Anatomy,
    lesion: _Lesion,
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    fields: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """A soft, irregular consolidation inside one lung field, in intensity units.

    Its peak fills about 65-105 % of the lung's darkness: clearly visible, yet of the same order
    as the ribs crossing it, so a classifier has to learn a shape rather than a bright pixel.
    Position, size and strength vary a little between images of one patient.
    """
    du = u - lesion.centre_u - rng.normal(0.0, 0.015)
    dv = v - lesion.centre_v - rng.normal(0.0, 0.015)
    cos, sin = math.cos(lesion.angle), math.sin(lesion.angle)
    pu = (cos * du + sin * dv) / (lesion.sigma_u * rng.uniform(0.9, 1.1))
    pv = (-sin * du + cos * dv) / (lesion.sigma_v * rng.uniform(0.9, 1.1))
    blob = np.exp(-0.5 * (pu**2 + pv**2))
    patchy = np.clip(1.0 + 0.35 * _smooth_noise(rng, u.shape[0], 0.03), 0.0, None)
    amplitude = lesion.strength * rng.uniform(0.85, 1.0) * a.lung_darkness
    return amplitude * blob * patchy * fields[lesion.side]


def _box_of(layer: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(layer >= OPACITY_BOX_FRACTION * layer.max())
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def render_item(
    item: SyntheticItem, spec: SyntheticSpec = SyntheticSpec(), include_opacity: bool = True
) -> SyntheticImage:
    """Draw one planned image; `include_opacity=False` gives the same image without its finding.

    The opacity-free twin lets tests measure the opacity's contrast exactly, rather than
    against a surrounding ring that may overlap the heart or the ribs.
    """
    size = spec.image_size
    a = _sample_anatomy(_patient_rng(spec.seed, item.label, item.patient, _STREAM_ANATOMY))
    rng = _image_rng(spec.seed, item)
    j = _sample_jitter(rng)
    u, v = _anatomy_grid(size, j)

    body = _body(a, u, v)
    mediastinum = _mediastinum(a, u, v)
    hidden = (1.0 - _heart(a, u, v)) * (1.0 - mediastinum)
    raw = (_lung_raw(a, 0, u, v), _lung_raw(a, 1, u, v))
    fields = (raw[0] * hidden, raw[1] * hidden)  # same as _lung_field, computed once
    lungs = np.maximum(*fields)
    hila = sum(
        np.exp(-(((u - s * 0.17) / 0.08) ** 2 + ((v - a.heart_cy + 0.35) / 0.1) ** 2))
        for s in (-1.0, 1.0)
    )
    spine = np.exp(-((u / 0.06) ** 4)) * (0.85 + 0.15 * np.cos(2.0 * math.pi * v / 0.11))
    abdomen = _soft_step(v - (a.lung_cy[0] + 0.85 * a.lung_ry[0]), 0.05)

    image = a.background + (a.body_level - a.background) * body
    image = image + body * (
        0.05 * abdomen
        + 0.05 * spine
        + 0.07 * mediastinum
        + a.rib_level * (0.3 + 0.7 * lungs) * _ribs(a, u, v)
        + 0.10 * _clavicles(a, u, v)
    )
    image = image - a.lung_darkness * lungs + 0.06 * hila * np.maximum(*raw)
    image = image + j.texture * _smooth_noise(rng, size, 0.012) * lungs
    image = image + 0.025 * _smooth_noise(rng, size, 0.12) * body

    opacity = np.zeros_like(image)
    box = None
    if item.is_pneumonia:
        lesion_rng = _patient_rng(spec.seed, item.label, item.patient, _STREAM_LESION)
        layer = _opacity_layer(a, _sample_lesion(a, lesion_rng), rng, u, v, fields)
        box = _box_of(layer)
        if include_opacity:
            opacity = layer
    image = image + opacity + j.grain * rng.standard_normal(image.shape)
    image = np.clip(image, 0.0, 1.0) ** j.gamma * j.gain + j.offset
    pixels = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    return SyntheticImage(pixels=pixels, lung_mask=lungs, opacity=opacity, box=box)


# ------------------------------------------------------------------------------ the folder


def _marker(spec: SyntheticSpec) -> dict[str, Any]:
    return {
        "synthetic": True,
        "note": "SYNTHETIC images drawn by a program; NOT medical data.",
        "generator": __name__,
        "format_version": FORMAT_VERSION,
        "spec": asdict(spec),
        "boxes_file": SYNTHETIC_BOXES_FILE,
    }


def _readme(spec: SyntheticSpec, n_images: int) -> str:
    return f"""\
SYNTHETIC DEMO DATA - THESE ARE NOT MEDICAL IMAGES
==================================================

Every image in this folder is SYNTHETIC: drawn by a program ({__name__}) from
simple shapes and noise to look roughly like a pediatric chest X-ray. No patient, no
radiograph and no medical data were used. Do not use these images, or any model trained
only on them, for any clinical or research conclusion. They exist so the pipeline can be
demonstrated and tested offline in a few minutes.

Layout (same as the Kermany data set): {{train,val,test}}/{{NORMAL,PNEUMONIA}}/*.png
{n_images} images, {spec.image_size}x{spec.image_size} 8-bit grayscale PNG.
File names follow Kermany's patterns so the patient parser works:
  NORMAL     IM-NNNN-MMMM.png            (NNNN = synthetic patient, MMMM = its image number)
  PNEUMONIA  personN_bacteria_M.png / personN_virus_M.png   (N = patient, M = image counter)
Each synthetic patient has up to {spec.images_per_patient} images that share the same drawn
anatomy; no patient appears in two splits. Bacteria/virus only changes the name.

PNEUMONIA images contain one soft bright opacity inside one lung field. NORMAL images do not.
{SYNTHETIC_BOXES_FILE} has one row per PNEUMONIA image (NORMAL images have no row):
  path,x0,y0,x1,y1   path = split/CLASS/file.png; pixel coordinates of the stored image,
                     x0,y0 inclusive, x1,y1 exclusive (image[y0:y1, x0:x1]); the box covers
                     the pixels where the opacity reaches {OPACITY_BOX_FRACTION:.0%} of its peak.

{SYNTHETIC_MARKER_FILE} records "synthetic": true and the generation spec
(seed {spec.seed}); the same spec always gives byte-identical files.
"""


def _write_png(path: Path, pixels: np.ndarray) -> None:
    # PIL writes no time stamp or other varying chunk, so equal pixels give equal bytes.
    Image.fromarray(pixels, mode="L").save(path, format="PNG", compress_level=6)


def _write_boxes(path: Path, rows: list[tuple[str, tuple[int, int, int, int]]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(BOX_COLUMNS)
        for relpath, box in rows:
            writer.writerow([relpath, *box])


def _read_marker(out_dir: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((out_dir / SYNTHETIC_MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("synthetic") is True else None


def _is_complete(out_dir: Path, spec: SyntheticSpec) -> bool:
    """True when out_dir holds every file of a set made by this generator version with `spec`."""
    marker = _read_marker(out_dir)
    if marker is None or marker.get("format_version") != FORMAT_VERSION:
        return False
    if marker.get("spec") != asdict(spec):
        return False
    needed = [SYNTHETIC_BOXES_FILE, SYNTHETIC_README_FILE]
    needed += [item.relpath for item in plan_synthetic_dataset(spec)]
    return all((out_dir / name).is_file() for name in needed)


def _make_room(out_dir: Path) -> None:
    """Remove an outdated synthetic set; refuse to touch a folder this module did not make."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise DatasetLayoutError(f"{out_dir}: exists and is not a folder; choose another path")
    if not any(out_dir.iterdir()):
        out_dir.rmdir()
    elif _read_marker(out_dir) is not None:
        shutil.rmtree(out_dir)
    else:
        raise DatasetLayoutError(
            f"{out_dir}: folder is not empty and holds no {SYNTHETIC_MARKER_FILE}, so it is not "
            "a synthetic demo set; choose a new or empty folder for the synthetic data"
        )


def _write_dataset(folder: Path, spec: SyntheticSpec) -> None:
    items = plan_synthetic_dataset(spec)
    for split in SPLITS:
        for label in CLASS_NAMES:
            (folder / split / label).mkdir(parents=True)
    boxes: list[tuple[str, tuple[int, int, int, int]]] = []
    for item in items:
        rendered = render_item(item, spec)
        _write_png(folder / item.relpath, rendered.pixels)
        if rendered.box is not None:
            boxes.append((item.relpath, rendered.box))
    _write_boxes(folder / SYNTHETIC_BOXES_FILE, boxes)
    (folder / SYNTHETIC_README_FILE).write_text(_readme(spec, len(items)), encoding="utf-8")
    marker = json.dumps(_marker(spec), indent=2, sort_keys=True) + "\n"
    (folder / SYNTHETIC_MARKER_FILE).write_text(marker, encoding="utf-8")


def generate_synthetic_dataset(out_dir: str | Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Writes out_dir/{train,val,test}/{NORMAL,PNEUMONIA}/<Kermany-style name>.png and
    out_dir/opacity_boxes.csv; returns out_dir.

    Idempotent: a complete set made with the same spec (recorded in synthetic.json) is returned
    untouched. An outdated synthetic set is replaced; a non-empty folder without the marker is
    refused rather than overwritten. The set is drawn in a hidden sibling folder and renamed
    into place, so an interrupted run never leaves a half-written set that looks complete.
    """
    out_dir = Path(out_dir)
    if _is_complete(out_dir, spec):
        return out_dir
    _make_room(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _write_dataset(staging, spec)
        try:
            staging.rename(out_dir)
        except OSError:
            if not _is_complete(out_dir, spec):  # lost a race to another process: fine if done
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def read_opacity_boxes(root: str | Path) -> dict[str, tuple[int, int, int, int]]:
    """Opacity boxes of a synthetic set, keyed by "split/CLASS/file.png".

    Values are (x0, y0, x1, y1) in pixels of the stored image, x1/y1 exclusive. Only PNEUMONIA
    images have a box; a NORMAL image is simply absent from the mapping.
    """
    path = Path(root) / SYNTHETIC_BOXES_FILE
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as error:
        raise DatasetLayoutError(
            f"{path}: cannot read the opacity boxes ({error.strerror}); "
            "regenerate the synthetic set with generate_synthetic_dataset"
        ) from error
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or tuple(header) != BOX_COLUMNS:
            raise DatasetLayoutError(
                f"{path}: header must be {','.join(BOX_COLUMNS)}, found {header}; "
                "regenerate the synthetic set"
            )
        boxes: dict[str, tuple[int, int, int, int]] = {}
        for line, row in enumerate(reader, start=2):
            try:
                if len(row) != len(BOX_COLUMNS):
                    raise ValueError(f"{len(row)} fields")
                relpath, (x0, y0, x1, y1) = row[0], map(int, row[1:])
            except ValueError as error:
                raise DatasetLayoutError(
                    f"{path}, line {line}: expected path and four integers, found {row}; "
                    "regenerate the synthetic set"
                ) from error
            boxes[relpath] = (x0, y0, x1, y1)
    return boxes
