"""The one image loader: exact pixels per format and mode, and one clear error per bad input."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageFile
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from pneumonia_cxr.data.loader import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    _pil_to_gray,
    is_image_file,
    load_xray,
)
from pneumonia_cxr.errors import (
    CorruptImageError,
    EmptyFileError,
    ImageLoadError,
    ImageTooLargeError,
    NotAnImageError,
    UnsupportedDicomError,
)

# Colours whose ITU-R 601-2 luma is nowhere near a .5 tie, so rounding is unambiguous.
COLOURS = np.array(
    [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30], [90, 90, 90]],
    dtype=np.uint8,
)


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma as PIL documents it, computed independently of PIL."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    return np.rint(r * 299 / 1000 + g * 587 / 1000 + b * 114 / 1000).astype(np.uint8)


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def gray_blocks(height: int = 32, width: int = 48) -> np.ndarray:
    """Flat 8x8 blocks of distinct grays: JPEG keeps them to within a level or two."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (height // 8, width // 8), dtype=np.uint8)
    return np.kron(blocks, np.ones((8, 8), dtype=np.uint8))


# --- writers for the pixel table: each returns (file bytes, expected gray, tolerance) -----


def l_png() -> tuple[bytes, np.ndarray, int]:
    gray = np.random.default_rng(1).integers(0, 256, (5, 7), dtype=np.uint8)
    return encode(Image.fromarray(gray, "L"), "PNG"), gray, 0


def bilevel_png() -> tuple[bytes, np.ndarray, int]:
    bits = np.random.default_rng(2).integers(0, 2, (6, 9)).astype(bool)
    return encode(Image.fromarray(bits), "PNG"), np.where(bits, 255, 0).astype(np.uint8), 0


def la_png() -> tuple[bytes, np.ndarray, int]:
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, (4, 5), dtype=np.uint8)
    alpha = rng.integers(0, 256, (4, 5), dtype=np.uint8)
    return encode(Image.fromarray(np.stack([gray, alpha], -1), "LA"), "PNG"), gray, 0


def rgba_png() -> tuple[bytes, np.ndarray, int]:
    rgb = COLOURS[None]
    alpha = np.linspace(0, 255, len(COLOURS)).astype(np.uint8)[None, :, None]
    img = Image.fromarray(np.concatenate([rgb, alpha], -1), "RGBA")
    return encode(img, "PNG"), luma(rgb), 0


def palette_png() -> tuple[bytes, np.ndarray, int]:
    img = Image.new("P", (len(COLOURS), 2))
    img.putpalette(COLOURS.ravel().tolist())
    img.putdata(list(range(len(COLOURS))) * 2)
    expected = np.repeat(luma(COLOURS[None]), 2, axis=0)
    return encode(img, "PNG", transparency=1), expected, 0


def png16() -> tuple[bytes, np.ndarray, int]:
    values = np.array([[0, 65535, 32896, 257, 128, 129, 32767, 32768, 65407, 1000]], np.uint16)
    expected = np.array([[round(Fraction(int(v) * 255, 65535)) for v in values[0]]], np.uint8)
    return encode(Image.fromarray(values), "PNG"), expected, 0


def gray_rgb_jpeg() -> tuple[bytes, np.ndarray, int]:
    gray = gray_blocks()
    img = Image.fromarray(np.repeat(gray[..., None], 3, -1), "RGB")
    return encode(img, "JPEG", quality=95), gray, 2


def l_jpeg() -> tuple[bytes, np.ndarray, int]:
    gray = gray_blocks()
    return encode(Image.fromarray(gray, "L"), "JPEG", quality=95), gray, 2


def cmyk_jpeg() -> tuple[bytes, np.ndarray, int]:
    ink = gray_blocks()  # black ink only: CMYK (0, 0, 0, k) is the gray 255 - k
    zeros = np.zeros_like(ink)
    img = Image.fromarray(np.stack([zeros, zeros, zeros, ink], -1), "CMYK")
    return encode(img, "JPEG", quality=95), 255 - ink, 2


PIXEL_CASES: dict[str, tuple[str, Callable[[], tuple[bytes, np.ndarray, int]]]] = {
    "8-bit L PNG": ("x.png", l_png),
    "1-bit PNG": ("x.png", bilevel_png),
    "LA PNG": ("x.png", la_png),
    "RGBA PNG": ("x.png", rgba_png),
    "palette PNG with transparency": ("x.png", palette_png),
    "16-bit PNG": ("x.png", png16),
    "RGB JPEG of a gray image": ("x.jpeg", gray_rgb_jpeg),
    "L JPEG": ("x.jpg", l_jpeg),
    "CMYK JPEG": ("x.jpeg", cmyk_jpeg),
    "PNG content named .jpeg": ("x.jpeg", l_png),
}


@pytest.mark.parametrize("case", PIXEL_CASES)
def test_pixels_exact_per_format_and_mode(tmp_path: Path, case: str) -> None:
    name, writer = PIXEL_CASES[case]
    data, expected, tolerance = writer()
    path = tmp_path / name
    path.write_bytes(data)

    image = load_xray(path)

    assert image.dtype == np.uint8
    assert tuple(image.shape) == (1, *expected.shape)
    diff = np.abs(image[0].astype(int) - expected.astype(int))
    assert diff.max() <= tolerance, f"{case}: max difference {diff.max()}"


def test_16bit_png_keeps_the_ends_and_the_middle(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(encode(Image.fromarray(np.array([[0, 32896, 65535]], np.uint16)), "PNG"))
    assert load_xray(path)[0, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_every_16bit_mode_scales_the_same(mode: str) -> None:
    values = np.array([[0, 257, 32896, 65535]])
    img = Image.new(mode, (4, 1))
    img.putdata(values.ravel().tolist())
    assert _pil_to_gray(Path("x.png"), img).tolist() == [[0, 1, 128, 255]]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_is_applied(tmp_path: Path, fmt: str) -> None:
    """Orientation 6 means "rotate 90 degrees clockwise to display", as every viewer does."""
    stored = gray_blocks(16, 32)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(encode(Image.fromarray(stored, "L"), fmt, exif=exif, quality=95))

    image = load_xray(path)[0]

    upright = np.rot90(stored, k=-1)
    assert image.shape == upright.shape
    assert np.abs(image.astype(int) - upright).max() <= 2


# --- DICOM ---------------------------------------------------------------------------------


def dicom_bytes(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    transfer_syntax: str = ExplicitVRLittleEndian,
    with_pixels: bool = True,
    **elements: object,
) -> bytes:
    """A minimal Secondary Capture DICOM written with pydicom (preamble + "DICM")."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = transfer_syntax
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1  # RGB pixels: (rows, columns, 3)
    ds.Rows, ds.Columns = pixels.shape[:2] if ds.SamplesPerPixel == 3 else pixels.shape[-2:]
    ds.PhotometricInterpretation = photometric
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    # What every object a PACS holds carries (patient, study, series), unless a test says
    # otherwise: the DICOM results (`dicom_results`) copy these into the same study.
    identity = {
        "PatientID": "PCX-TEST-1",
        "PatientName": "Test^Child",
        "PatientBirthDate": "",
        "PatientSex": "",
        "StudyInstanceUID": generate_uid(),
        "SeriesInstanceUID": generate_uid(),
        "StudyID": "1",
        "StudyDate": "20261206",
        "StudyTime": "120000",
        "AccessionNumber": "",
        "ReferringPhysicianName": "",
        "SeriesNumber": 1,
        "InstanceNumber": 1,
    }
    for keyword, value in (identity | elements).items():
        setattr(ds, keyword, value)
    if with_pixels:
        ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR windowing onto 0..1, written out from the standard."""
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    inside = ((x - (center - 0.5)) / (width - 1) + 0.5).clip(0, 1)
    return np.where(x <= low, 0.0, np.where(x > high, 1.0, inside))


def min_max_255(values: np.ndarray) -> np.ndarray:
    return np.rint((values - values.min()) * 255 / (values.max() - values.min())).astype(np.uint8)


def test_dicom_monochrome1_rescale_window_and_inversion(tmp_path: Path) -> None:
    stored = np.array([[0, 100, 200], [300, 400, 500]], dtype=np.uint16)
    slope, intercept, center, width = 2, -100, 400, 401
    path = tmp_path / "x.dcm"
    path.write_bytes(
        dicom_bytes(
            stored,
            photometric="MONOCHROME1",
            RescaleSlope=slope,
            RescaleIntercept=intercept,
            WindowCenter=center,
            WindowWidth=width,
        )
    )

    image = load_xray(path)[0]

    windowed = linear_window(stored.astype(np.float64) * slope + intercept, center, width)
    np.testing.assert_array_equal(image, min_max_255(1 - windowed))
    # MONOCHROME1: the lowest stored value is displayed white; the window clips both ends.
    assert image[0, 0] == image[0, 1] == 255
    assert image[1, 1] == image[1, 2] == 0


def test_dicom_monochrome2_signed_with_rescale(tmp_path: Path) -> None:
    stored = np.array([[-1000, 0], [1000, 3000], [-7, 13]], dtype=np.int16)
    path = tmp_path / "x.dicom"
    path.write_bytes(dicom_bytes(stored, RescaleSlope=3, RescaleIntercept=-1024))

    image = load_xray(path)[0]

    np.testing.assert_array_equal(image, min_max_255(stored * 3.0 - 1024))
    assert image.min() == 0 and image.max() == 255


def test_dicom_monochrome1_without_window_is_plain_inversion(tmp_path: Path) -> None:
    stored = np.array([[0, 51, 255]], dtype=np.uint8)
    path = tmp_path / "x.dcm"
    path.write_bytes(dicom_bytes(stored, photometric="MONOCHROME1"))
    assert load_xray(path)[0].tolist() == [[255, 204, 0]]


def test_dicom_constant_image_is_zeros_not_nan(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(dicom_bytes(np.full((3, 4), 777, dtype=np.uint16)))
    assert load_xray(path).tolist() == [[[0] * 4] * 3]


def test_dicom_rgb_becomes_luma(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(dicom_bytes(COLOURS[None], photometric="RGB"))
    np.testing.assert_array_equal(load_xray(path)[0], luma(COLOURS[None]))


def test_dicom_found_by_magic_whatever_the_extension(tmp_path: Path) -> None:
    stored = np.array([[0, 10], [20, 30]], dtype=np.uint16)
    path = tmp_path / "scan.jpeg"
    path.write_bytes(dicom_bytes(stored))
    np.testing.assert_array_equal(load_xray(path)[0], min_max_255(stored.astype(float)))


@pytest.mark.parametrize(("name", "loads"), [("x.dcm", True), ("x.DICOM", True), ("x.jpeg", False)])
def test_dicom_without_preamble_needs_a_dicom_extension(
    tmp_path: Path, name: str, loads: bool
) -> None:
    stored = np.array([[0, 10], [20, 30]], dtype=np.uint16)
    path = tmp_path / name
    path.write_bytes(dicom_bytes(stored)[132:])  # drop the preamble and "DICM"
    if loads:
        np.testing.assert_array_equal(load_xray(path)[0], min_max_255(stored * 1.0))
    else:
        with pytest.raises(NotAnImageError):
            load_xray(path)


# --- bad input: one clear error each ------------------------------------------------------


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def big_l_jpeg() -> bytes:
    noise = np.random.default_rng(4).integers(0, 256, (64, 64), dtype=np.uint8)
    return encode(Image.fromarray(noise, "L"), "JPEG", quality=90)


def big_l_png() -> bytes:
    noise = np.random.default_rng(5).integers(0, 256, (64, 64), dtype=np.uint8)
    return encode(Image.fromarray(noise, "L"), "PNG")


def flipped_idat_byte() -> bytes:
    data = bytearray(big_l_png())
    data[data.index(b"IDAT") + 200] ^= 0xFF
    return bytes(data)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb() -> bytes:
    """A few hundred bytes claiming 100000 x 100000 gray pixels: 10 GB if decoded."""
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 10_000)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def multi_frame_dicom() -> bytes:
    return dicom_bytes(np.zeros((2, 4, 4), np.uint16), NumberOfFrames=2)


def short_pixel_data_dicom() -> bytes:
    data = dicom_bytes(np.zeros((4, 4), np.uint16))
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PixelData = b"\0" * 6
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


BAD_CASES: dict[str, tuple[str, Callable[[], bytes], type[Exception]]] = {
    "zero bytes": ("x.jpeg", lambda: b"", EmptyFileError),
    "truncated JPEG": ("x.jpeg", lambda: truncated(big_l_jpeg()), CorruptImageError),
    "truncated PNG": ("x.png", lambda: truncated(big_l_png()), CorruptImageError),
    "PNG without IEND": ("x.png", lambda: big_l_png()[:-12], CorruptImageError),
    "flipped byte in PNG data": ("x.png", flipped_idat_byte, CorruptImageError),
    "JPEG marker then garbage": ("x.jpeg", lambda: b"\xff\xd8\xff" + bytes(64), CorruptImageError),
    "random bytes named .jpeg": (
        "x.jpeg",
        lambda: np.random.default_rng(6).bytes(4096),
        NotAnImageError,
    ),
    "text named .png": ("x.png", lambda: b"patient list\nperson1 NORMAL\n", NotAnImageError),
    "text named .dcm": ("x.dcm", lambda: b"patient list\nperson1 NORMAL\n" * 20, NotAnImageError),
    "PNG header claiming 10^10 pixels": ("x.png", png_bomb, ImageTooLargeError),
    "DICOM without pixel data": (
        "x.dcm",
        lambda: dicom_bytes(np.zeros((4, 4), np.uint16), with_pixels=False),
        UnsupportedDicomError,
    ),
    "multi-frame DICOM": ("x.dcm", multi_frame_dicom, UnsupportedDicomError),
    "DICOM with short pixel data": ("x.dcm", short_pixel_data_dicom, CorruptImageError),
}


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_raises_its_own_error(tmp_path: Path, case: str) -> None:
    name, writer, error = BAD_CASES[case]
    path = tmp_path / name
    path.write_bytes(writer())

    with pytest.raises(error) as raised:
        load_xray(path)

    assert isinstance(raised.value, ImageLoadError)
    assert raised.value.path == path
    assert str(path) in str(raised.value)
    assert raised.value.reason


@pytest.mark.parametrize(
    ("name", "data"),
    [("x.jpeg", lambda: truncated(big_l_jpeg())), ("x.png", lambda: truncated(big_l_png()))],
)
def test_truncation_caught_even_if_pil_was_told_to_accept_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, data: Callable[[], bytes]
) -> None:
    """Some libraries set PIL's global LOAD_TRUNCATED_IMAGES; a half image must still fail."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    path = tmp_path / name
    path.write_bytes(data())
    with pytest.raises(CorruptImageError):
        load_xray(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_max_pixels_is_checked_before_decoding(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(encode(Image.new("L", (100, 60), 128), fmt))
    assert load_xray(path, max_pixels=6000).shape == (1, 60, 100)
    with pytest.raises(ImageTooLargeError, match="6,000 pixels exceeds the limit of 5,999"):
        load_xray(path, max_pixels=5999)


def test_max_pixels_applies_to_dicom(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(dicom_bytes(np.zeros((10, 20), np.uint16)))
    with pytest.raises(ImageTooLargeError):
        load_xray(path, max_pixels=199)


def test_our_limit_not_pils_decides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PIL's global bomb limit is neither needed nor in the way."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    path = tmp_path / "x.png"
    path.write_bytes(encode(Image.new("L", (20, 20), 7), "PNG"))
    assert load_xray(path).shape == (1, 20, 20)


def test_undecodable_compressed_dicom_names_a_plugin(tmp_path: Path) -> None:
    if pydicom.pixels.get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here, so this file would decode")
    data = dicom_bytes(
        np.zeros((4, 4), np.uint16), transfer_syntax=JPEGLSLossless, with_pixels=False
    )
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + bytes(32)])
    ds["PixelData"].VR = "OB"
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)

    with pytest.raises(UnsupportedDicomError, match="pip install pyjpegls"):
        load_xray(path)


def test_missing_file_is_file_not_found_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.jpeg"
    with pytest.raises(FileNotFoundError) as raised:
        load_xray(path)
    assert raised.value.filename == str(path)


@pytest.mark.parametrize("kwargs", [{"min_side": 0}, {"max_pixels": 0}])
def test_nonsense_arguments_are_refused(tmp_path: Path, kwargs: dict[str, int]) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(l_png()[0])
    with pytest.raises(ValueError):
        load_xray(path, **kwargs)


# --- draft decoding of large JPEGs ---------------------------------------------------------


def test_draft_decodes_large_jpeg_smaller_but_not_below_min_side(tmp_path: Path) -> None:
    ramp = np.linspace(0, 255, 2000)[None, :] * np.linspace(0.2, 1, 1600)[:, None]
    path = tmp_path / "big.jpeg"
    path.write_bytes(encode(Image.fromarray(ramp.astype(np.uint8), "L"), "JPEG", quality=85))

    full = load_xray(path)
    small = load_xray(path, min_side=300)

    assert tuple(full.shape) == (1, 1600, 2000)
    height, width = small.shape[1:]
    assert min(height, width) >= 300
    assert height < 1600 and width < 2000
    # Same picture, just fewer pixels: the reduced decode matches a subsampled full decode.
    step = 1600 // height
    coarse = full[0, step // 2 :: step, step // 2 :: step][:height, :width].astype(float)
    assert np.abs(small[0].astype(float) - coarse).mean() < 3


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_min_side_never_changes_small_images(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(encode(Image.fromarray(gray_blocks(64, 64)), fmt, quality=90))
    assert np.array_equal(load_xray(path, min_side=64), load_xray(path))


def test_png_ignores_min_side(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(encode(Image.new("L", (800, 600), 9), "PNG"))
    assert load_xray(path, min_side=100).shape == (1, 600, 800)


# --- file discovery ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("person1_virus_6.jpeg", True),
        ("IM-0001.JPG", True),
        ("scan.png", True),
        ("scan.dcm", True),
        ("folder/scan.DICOM", True),
        (".DS_Store", False),
        ("._person1_virus_6.jpeg", False),
        ("folder/.hidden.png", False),
        ("notes.txt", False),
        ("scan.gif", False),
        ("scan", False),
    ],
)
def test_is_image_file(name: str, expected: bool) -> None:
    assert is_image_file(name) is expected
    assert is_image_file(Path(name)) is expected


def test_extension_set_and_default_limit() -> None:
    assert {".jpeg", ".jpg", ".png", ".dcm", ".dicom"} == IMAGE_EXTENSIONS
    assert all(ext == ext.lower() for ext in IMAGE_EXTENSIONS)
    assert DEFAULT_MAX_PIXELS > 3000 * 3000


# --- real data -----------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_224_image_loads_as_one_gray_channel(real_data_root: Path) -> None:
    root = real_data_root
    path = next(p for p in sorted((root / "val" / "PNEUMONIA").iterdir()) if is_image_file(p))
    image = load_xray(path)
    assert image.dtype == np.uint8
    assert tuple(image.shape) == (1, 224, 224)
    assert image.std() > 10  # a radiograph, not a blank


@pytest.mark.realdata
def test_every_full_resolution_original_loads(fullres_root: Path) -> None:
    root = fullres_root
    lines = (root / "MANIFEST.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    sizes = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split("\t"), strict=True))
        sizes[row["filename"]] = (int(row["height"]), int(row["width"]))
    paths = sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p))
    assert len(paths) == len(sizes)
    for path in paths:
        full = load_xray(path)
        assert tuple(full.shape) == (1, *sizes[path.name]), path
        assert full.std() > 10, path
        reduced = load_xray(path, min_side=224)
        assert min(reduced.shape[1:]) >= 224, path
