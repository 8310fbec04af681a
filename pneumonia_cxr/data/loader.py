"""The one image loader: any supported X-ray file -> exact grayscale uint8 pixels, or a clear error.

Training, evaluation, prediction and Grad-CAM all read images through `load_xray`, so a file
means the same pixels everywhere. The loader only decodes; resizing, channel replication and
normalisation belong to the transforms built from the model's own preprocessing.

Formats are recognised by content, never by extension alone: a PNG named `.jpeg` loads, a text
file named `.jpeg` raises `NotAnImageError`. Every failure is an `ImageLoadError` subclass from
`pneumonia_cxr.errors` that names the file and what to do; no failure ever turns into a blank
image. A missing file raises the standard `FileNotFoundError` (with `.filename` set), because
callers that walk folders already expect it and it is not a problem with the image itself.
"""

from __future__ import annotations

import errno
import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, PngImagePlugin

from pneumonia_cxr.errors import (
    CorruptImageError,
    EmptyFileError,
    ImageTooLargeError,
    NotAnImageError,
    UnsupportedDicomError,
)

if TYPE_CHECKING:
    import pydicom

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpeg", ".jpg", ".png", ".dcm", ".dicom"})
"""Lower-case suffixes that folder discovery treats as images."""

DICOM_EXTENSIONS: frozenset[str] = frozenset({".dcm", ".dicom"})
"""Suffixes for which a DICOM file without the 128-byte preamble is still tried (forced read)."""

DEFAULT_MAX_PIXELS: int = 100_000_000
"""Decompression-bomb guard: ten times a 3000x3000 radiograph, far below what would exhaust RAM."""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8\xff"
_DICOM_MAGIC = b"DICM"
_DICOM_MAGIC_OFFSET = 128

# What PIL raises on damaged data; the plugin parsers use SyntaxError and struct.error for
# headers, the decoders OSError ("image file is truncated", "broken data stream").
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error)

# pip packages that give pydicom a decoder, by transfer-syntax family (pydicom's own message
# lists the alternatives too).
_DICOM_PLUGIN_HINTS: dict[str, str] = {
    "JPEG-LS": "pyjpegls",
    "JPEG 2000": "pylibjpeg pylibjpeg-openjpeg",
    "JPEG": "pylibjpeg pylibjpeg-libjpeg",
}
_DICOM_PLUGIN_FALLBACK = "python-gdcm"


def is_image_file(path: str | Path) -> bool:
    """Whether folder discovery should treat `path` as an image, judged by its extension.

    Names starting with "." are skipped: macOS leaves `.DS_Store` and AppleDouble `._x.jpeg`
    files beside real images, and the latter carry an image extension without being images.
    """
    name = Path(path).name
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def load_xray(
    path: str | Path,
    *,
    min_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Returns a uint8 grayscale array of shape (1, H, W) (numpy: scoring runs without
    PyTorch; training wraps it with `torch.from_numpy`).

    The file is read once into memory and its format is detected from its first bytes:
    DICOM ("DICM" at byte 128, or a preamble-less DICOM when the suffix is .dcm/.dicom),
    PNG or JPEG. JPEG/PNG pixel modes are mapped as `_pil_to_gray` documents; DICOM as
    `_dicom_to_gray` documents. EXIF orientation is applied, so the image is upright as every
    viewer shows it.

    Args:
        path: The image file.
        min_side: Speed hint for JPEGs only: decode at a reduced DCT scale (1/2, 1/4 or 1/8)
            while both sides stay >= `min_side`. A 2000-pixel radiograph headed for a 224-pixel
            model then decodes several times faster; the transforms resize anyway. PNG and
            DICOM ignore it. None decodes at full size.
        max_pixels: Width x height above which the file is refused, checked from the header
            before any pixel is decoded (decompression-bomb guard).

    Raises:
        FileNotFoundError: `path` does not exist.
        EmptyFileError: The file has zero bytes.
        NotAnImageError: The content is not JPEG, PNG or DICOM, or uses an unsupported mode.
        CorruptImageError: Truncated or damaged JPEG/PNG/DICOM data.
        ImageTooLargeError: More than `max_pixels` pixels.
        UnsupportedDicomError: DICOM without pixel data, multi-frame, non-grayscale/RGB, or
            compressed with a transfer syntax no installed pydicom plugin can decode.
    """
    if min_side is not None and min_side < 1:
        raise ValueError(f"min_side must be a positive number of pixels or None, not {min_side}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, not {max_pixels}")
    path = Path(path)
    return decode_xray(_read_bytes(path), path, min_side=min_side, max_pixels=max_pixels)


def decode_xray(
    data: bytes,
    name: str | Path,
    *,
    min_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """`load_xray` for bytes already in memory (an upload that is never written to disk).

    `name` is what error messages call the image (a file name); its suffix only matters for a
    preamble-less DICOM (.dcm/.dicom). Same result and same errors as `load_xray`.
    """
    return _decode(data, name, min_side=min_side, max_pixels=max_pixels, facts=None)


def _decode(
    data: bytes,
    name: str | Path,
    *,
    min_side: int | None,
    max_pixels: int,
    facts: dict | None,
) -> np.ndarray:
    """The one decode; `facts`, when given, receives the `ImageFacts` fields."""
    if min_side is not None and min_side < 1:
        raise ValueError(f"min_side must be a positive number of pixels or None, not {min_side}")
    path = Path(name)
    if not data:
        raise EmptyFileError(path, "the file is empty (0 bytes); re-copy or re-export it")
    kind = _sniff_format(path, data)
    if kind in ("png", "jpeg"):
        gray = _decode_pil(path, data, kind, min_side=min_side, max_pixels=max_pixels, facts=facts)
    else:
        ds = _read_dicom(path, data, forced=kind == "dicom-forced")
        gray = _dicom_to_gray(path, ds, max_pixels=max_pixels, facts=facts)
        if facts is not None:
            facts["dicom"] = {tag: _header_text(ds, tag) for tag in DICOM_FACT_TAGS}
    return np.ascontiguousarray(gray, dtype=np.uint8)[None].copy()


@dataclass
class ImageFacts:
    """What the file says about itself beyond its gray pixels, for the applicability guard
    (`model.intended_use`): measured before the conversion to gray, which erases them. Not
    frozen: Lightning's batch transfer (`predict --devices`) rebuilds dataclasses."""

    chroma: float | None = None
    """Mean colour distance from gray (YCbCr, 0..~180) of a colour-mode file; None for a
    file stored as gray. A gray film stored as RGB (the Kermany JPEGs) measures about 0."""
    dicom: dict[str, str] | None = None
    """The DICOM header's PatientAge, ViewPosition, BodyPartExamined and Modality, as written
    ("" where absent); None for a JPEG or PNG."""


DICOM_FACT_TAGS: tuple[str, ...] = ("PatientAge", "ViewPosition", "BodyPartExamined", "Modality")
_CHROMA_SIDE = 128


def _chroma(img: Image.Image) -> float:
    """Mean chroma of a small copy: sqrt((Cb-128)^2 + (Cr-128)^2) per pixel, averaged."""
    small = img.convert("RGB")
    small.thumbnail((_CHROMA_SIDE, _CHROMA_SIDE))
    ycbcr = np.asarray(small.convert("YCbCr"), dtype=np.float64)
    return float(np.mean(np.hypot(ycbcr[..., 1] - 128.0, ycbcr[..., 2] - 128.0)))


def decode_xray_with_facts(
    data: bytes,
    name: str | Path,
    *,
    min_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray, ImageFacts]:
    """`decode_xray` and the file's `ImageFacts` (colour, DICOM header), from one decode."""
    facts: dict = {}
    gray = _decode(data, name, min_side=min_side, max_pixels=max_pixels, facts=facts)
    return gray, ImageFacts(**facts)


def load_xray_with_facts(
    path: str | Path, *, min_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, ImageFacts]:
    """`load_xray` and the file's `ImageFacts`."""
    path = Path(path)
    return decode_xray_with_facts(_read_bytes(path), path, min_side=min_side, max_pixels=max_pixels)


def _read_bytes(path: Path) -> bytes:
    """Read the whole file once (the `with` inside `read_bytes` closes the handle); anything
    but a regular file is refused unopened (opening a named pipe blocks forever)."""
    try:
        if path.exists() and not path.is_file() and not path.is_dir():
            raise NotAnImageError(
                path, "not a regular file (a named pipe, socket or device); give an image file"
            )
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            errno.ENOENT,
            "image file not found; check the path and that the disk is mounted",
            str(path),
        ) from None
    return data


def _sniff_format(path: Path, data: bytes) -> str:
    """Name the decoder from the content: "dicom", "dicom-forced", "png" or "jpeg"."""
    if data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == _DICOM_MAGIC:
        return "dicom"
    if data.startswith(_PNG_SIGNATURE):
        return "png"
    if data.startswith(_JPEG_SOI):
        return "jpeg"
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return "dicom-forced"
    raise NotAnImageError(
        path,
        "the content is not JPEG, PNG or DICOM, whatever its extension says; convert it to "
        "PNG or JPEG, or remove it from the folder",
    )


# --- JPEG and PNG -------------------------------------------------------------------------


def _header_text(ds: pydicom.Dataset, tag: str) -> str:
    """A header value as text ("" when absent or unreadable: never a crash on a bad header)."""
    try:
        value = ds.get(tag, "")
    except Exception:  # pydicom raises on malformed values only when they are read
        return ""
    return " ".join(str(value if value is not None else "").split())


_COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBX", "P", "PA", "CMYK"})


def _decode_pil(
    path: Path,
    data: bytes,
    kind: str,
    *,
    min_side: int | None,
    max_pixels: int,
    facts: dict | None = None,
) -> np.ndarray:
    """Decode JPEG/PNG bytes with PIL, refusing bombs before and truncation during decoding.

    The format plugin is constructed directly instead of through `Image.open`: it parses only
    the header, and it skips PIL's process-wide `Image.MAX_IMAGE_PIXELS` check, so our own
    `max_pixels` is the one limit in force without mutating PIL's global.
    """
    plugin = JpegImagePlugin.JpegImageFile if kind == "jpeg" else PngImagePlugin.PngImageFile
    label = kind.upper()
    try:
        img = plugin(io.BytesIO(data))
    except _PIL_ERRORS as exc:
        raise CorruptImageError(
            path, f"starts like a {label} but its header is damaged ({exc}); re-export the file"
        ) from exc
    with img:
        _check_pixel_count(path, img.width, img.height, max_pixels)
        if not _has_end_marker(data, kind):
            raise CorruptImageError(
                path, f"the {label} is truncated (no end marker after the image data); re-copy it"
            )
        if kind == "jpeg" and min_side is not None:
            img.draft(img.mode, (min_side, min_side))
        try:
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            if facts is not None and img.mode in _COLOUR_MODES:
                facts["chroma"] = _chroma(img)
            return _pil_to_gray(path, img)
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(path, f"{exc}; downscale the image") from exc
        except _PIL_ERRORS as exc:
            raise CorruptImageError(
                path, f"the {label} data is truncated or damaged ({exc}); re-copy or re-export it"
            ) from exc


def _check_pixel_count(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageTooLargeError(
            path,
            f"{width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} "
            "(likely a decompression bomb); downscale it or raise max_pixels if it is genuine",
        )


def _has_end_marker(data: bytes, kind: str) -> bool:
    """Whether the end marker follows the last image data: a truncated file lacks it.

    PIL raises on truncation only while the process-wide `ImageFile.LOAD_TRUNCATED_IMAGES`
    is False; any imported library may switch it on, after which PIL silently pads the
    missing rows. This check does not depend on that flag. JPEG: an EOI marker (FF D9) after
    the last start-of-scan (FF DA); neither can occur inside entropy-coded data, and an EXIF
    thumbnail's own EOI lies before the main image's scans. PNG: IEND after the last IDAT.
    """
    if kind == "jpeg":
        return data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda")
    return data.rfind(b"IEND") > data.rfind(b"IDAT")


def _pil_to_gray(path: Path, img: Image.Image) -> np.ndarray:
    """Map every PIL mode a JPEG or PNG can decode to exactly one gray uint8 array.

    - L: unchanged.
    - 1 (bilevel PNG): 0 -> 0, 1 -> 255, so black and white keep their meaning.
    - LA, RGBA, PA: alpha dropped; radiographs carry no meaningful transparency and
      compositing on a background would invent pixel values.
    - RGB (also the colour channels of RGBA): PIL's ITU-R 601-2 luma,
      L = R*299/1000 + G*587/1000 + B*114/1000, which returns the gray exactly when R=G=B
      (the Kermany JPEGs are RGB files of gray pixels).
    - P, PA (palette): each index looked up in the palette, then the same luma.
    - CMYK (JPEG): PIL's CMYK -> RGB (Adobe-inverted files are un-inverted on read), then luma.
    - I;16, I;16B, I;16L, I (16-bit PNG): round(v * 255 / 65535), i.e. the full 16-bit range
      onto 0..255 with exact integer rounding. No min-max stretch: a PNG carries no window,
      and a fixed mapping keeps the same stored value the same brightness in every file.
    """
    mode = img.mode
    if mode in {"L", "1", "LA", "RGB", "RGBA", "RGBX", "P"}:
        return np.array(img.convert("L"), dtype=np.uint8)
    if mode == "PA":
        return np.array(img.convert("RGBA").convert("L"), dtype=np.uint8)
    if mode == "CMYK":
        return np.array(img.convert("RGB").convert("L"), dtype=np.uint8)
    if mode in {"I;16", "I;16B", "I;16L", "I"}:
        values = np.asarray(img).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise NotAnImageError(
                path, f"mode {mode} values outside 0..65535; save it as an 8- or 16-bit PNG"
            )
        # round(v * 255 / 65535) in integers: v/257 never lands on .5, so no tie to break.
        return ((values * 255 + 32767) // 65535).astype(np.uint8)
    raise NotAnImageError(
        path, f"unsupported pixel mode {mode!r}; save it as an 8-bit grayscale PNG or JPEG"
    )


# --- DICOM --------------------------------------------------------------------------------


def _read_dicom(path: Path, data: bytes, *, forced: bool) -> pydicom.Dataset:
    """Parse DICOM bytes; `forced` reads a preamble-less file, kept only if it looks like DICOM.
    pydicom is imported here, on the first DICOM (0.13 s of every start otherwise)."""
    import pydicom

    try:
        if forced:
            # A forced read of arbitrary bytes "succeeds" with junk elements and warnings.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(io.BytesIO(data), force=True)
        else:
            ds = pydicom.dcmread(io.BytesIO(data))
    # pydicom raises many unrelated types on malformed input; each means "unreadable header".
    except Exception as exc:
        if forced:
            raise NotAnImageError(
                path, f"named like DICOM but not readable as DICOM ({exc}); check the file"
            ) from exc
        raise CorruptImageError(
            path, f"the DICOM header is damaged ({exc}); re-export it from the PACS"
        ) from exc
    if forced and not any(tag in ds for tag in ("PixelData", "Rows", "SOPClassUID")):
        raise NotAnImageError(
            path, "named like DICOM but has no DICOM image elements; check the file"
        )
    return ds


def _dicom_to_gray(
    path: Path, ds: pydicom.Dataset, *, max_pixels: int, facts: dict | None = None
) -> np.ndarray:
    """Turn a single-frame DICOM into display-ready gray uint8, following the DICOM pipeline.

    Grayscale (DICOM PS3.3 C.11, in this order): the modality LUT (RescaleSlope/Intercept or
    a Modality LUT Sequence) gives physical values; the VOI LUT, or WindowCenter/WindowWidth,
    gives the radiologist's intended contrast; MONOCHROME1 (minimum = white) is inverted so
    that higher always means brighter and bone is white as in the JPEG training data; finally
    the image is min-max scaled to 0..255, rounded, because DICOM bit depths vary (a constant
    image becomes zeros). RGB / YBR (decoded to RGB by pydicom), 8-bit only: PIL's luma, as
    for JPEG. Multi-frame and other photometric interpretations are refused, not guessed.
    """
    if "PixelData" not in ds:
        raise UnsupportedDicomError(
            path, "the DICOM file has no PixelData (not an image object); export the image itself"
        )
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        rows, columns = int(ds.Rows), int(ds.Columns)
        photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise UnsupportedDicomError(
            path, f"the DICOM image header is incomplete ({exc}); re-export it"
        ) from exc
    if frames > 1:
        raise UnsupportedDicomError(
            path, f"multi-frame DICOM ({frames} frames); export the single radiograph on its own"
        )
    _check_pixel_count(path, columns, rows, max_pixels)
    pixels = _dicom_pixels(path, ds)

    if pixels.ndim == 3:
        if pixels.shape[-1] != 3 or pixels.dtype != np.uint8:
            raise UnsupportedDicomError(
                path,
                f"colour DICOM with shape {pixels.shape} and {pixels.dtype} pixels; "
                "only 8-bit RGB is supported, export it as grayscale",
            )
        colour = Image.fromarray(pixels, "RGB")
        if facts is not None:
            facts["chroma"] = _chroma(colour)
        return np.array(colour.convert("L"), dtype=np.uint8)
    if photometric not in {"MONOCHROME1", "MONOCHROME2"}:
        raise UnsupportedDicomError(
            path,
            f"photometric interpretation {photometric!r} is not supported; export as "
            "MONOCHROME2 grayscale",
        )
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_voi_lut(apply_modality_lut(pixels, ds), ds).astype(np.float64)
    if photometric == "MONOCHROME1":
        values = -values  # before scaling, so rounding is the same as for MONOCHROME2
    return _min_max_to_uint8(values)


def _dicom_pixels(path: Path, ds: pydicom.Dataset) -> np.ndarray:
    """Decode the stored pixels, mapping pydicom's failures to our error classes."""
    try:
        return ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        file_meta = getattr(ds, "file_meta", None)
        syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
        if syntax is None or _decoder_available(syntax):
            raise CorruptImageError(
                path, f"the DICOM pixel data could not be decoded ({exc}); re-export it"
            ) from exc
        name = getattr(syntax, "name", str(syntax))
        hint = next(
            (pkg for family, pkg in _DICOM_PLUGIN_HINTS.items() if family in name),
            _DICOM_PLUGIN_FALLBACK,
        )
        raise UnsupportedDicomError(
            path,
            f"pixel data compressed as {name!r}, which no installed pydicom plugin decodes; "
            f"`pip install {hint}` or re-export the file uncompressed (pydicom says: {exc})",
        ) from exc
    except (AttributeError, KeyError) as exc:
        raise UnsupportedDicomError(
            path, f"the DICOM lacks an element needed to decode pixels ({exc}); re-export it"
        ) from exc
    except (ValueError, EOFError, OSError, struct.error) as exc:
        raise CorruptImageError(
            path, f"the DICOM pixel data is truncated or damaged ({exc}); re-export it"
        ) from exc


def _decoder_available(syntax: str) -> bool:
    """Whether pydicom has a usable decoder: unknown syntaxes count as unavailable."""
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(syntax).is_available)
    except NotImplementedError:
        return False


def _min_max_to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale the image's own range onto 0..255; a constant image becomes zeros."""
    low, high = float(values.min()), float(values.max())
    if not high > low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - low) * 255.0 / (high - low)).astype(np.uint8)
