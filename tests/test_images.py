"""model_backend.images: sample decoding, 16-bit and DICOM pipelines, every rejection, windowing, privacy."""

from __future__ import annotations

import functools
import io
import struct
import tracemalloc
import zlib
from dataclasses import fields
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, SecondaryCaptureImageStorage, generate_uid

from model_backend import images
from model_backend.images import (
    ImageLoadError,
    downscale_for_display,
    load_image_bytes,
    load_image_path,
    window_display,
)
from model_backend.types import XrayImage

SAMPLES = Path(__file__).resolve().parents[1] / "assets" / "samples"
RG1 = SAMPLES / "dicom" / "RG1_J2KI.dcm"
SIIM = next((SAMPLES / "dicom").glob("siim_*.dcm"))
RADIOPAEDIA_PA = SAMPLES / "noncommercial" / "radiopaedia_pcp_pa_lateral" / "pneumocystis-pneumonia-2-PA.png"

load_sample = functools.cache(load_image_path)  # each sample is decoded once per test run


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with one tiny IDAT: enough for Pillow to read the header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def dicom_bytes(
    arr: np.ndarray | None = None,
    frames: int = 1,
    transfer_syntax: str = ExplicitVRLittleEndian,
    pixel_data: bytes | None = None,
    **tags: object,
) -> bytes:
    """A Secondary Capture DICOM file (with preamble) holding `arr` (uint16) and a fake patient."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "SECRET-12345"
    if arr is not None:
        ds.Rows, ds.Columns = arr.shape[-2:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.PixelData = arr.astype(np.uint16).tobytes() if pixel_data is None else pixel_data
    for key, value in tags.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def reason_of(data: bytes) -> str:
    with pytest.raises(ImageLoadError) as info:
        load_image_bytes(data, "x")
    assert str(info.value)
    return info.value.reason


# --- the bundled samples ---------------------------------------------------------------------

SAMPLE_SIZES = [
    *((p, 1024, 1024, "png") for p in sorted((SAMPLES / "nih_cxr14_bbox").glob("*.png"))),
    (SAMPLES / "nih_cxr14_normal" / "00000550_000.png", 1024, 1024, "png"),
    (SAMPLES / "hannover_covid19_ccby" / "a361d7b7.png", 640, 639, "png"),
    (SAMPLES / "hannover_covid19_ccby" / "d9d6ca9a.png", 640, 600, "png"),
    (SIIM, 1024, 1024, "dicom"),
    (RG1, 1841, 1955, "dicom"),
    (RADIOPAEDIA_PA, 955, 954, "png"),
    (RADIOPAEDIA_PA.with_name("pneumocystis-pneumonia-2-L.png"), 906, 907, "png"),
]


@pytest.mark.parametrize(("path", "width", "height", "fmt"), SAMPLE_SIZES, ids=lambda v: getattr(v, "name", str(v)))
def test_every_sample_loads_with_its_size(path: Path, width: int, height: int, fmt: str) -> None:
    image = load_sample(path)
    assert (image.width, image.height, image.source_format) == (width, height, fmt)
    assert image.pixels.shape == image.display.shape == (height, width)
    assert image.display.dtype == np.uint8
    assert len(image.content_key) == 64
    assert not image.pixels.flags.writeable and not image.display.flags.writeable


def test_nih_png_display_is_the_original_pixels() -> None:
    path = SAMPLES / "nih_cxr14_normal" / "00000550_000.png"
    image = load_image_path(path)
    original = np.asarray(Image.open(path))
    assert np.array_equal(image.display, original) and image.bits_stored == 8
    assert np.array_equal(window_display(image, *image.default_window), image.display)


def test_monochrome1_dicom_is_inverted_so_lungs_are_darker_than_mediastinum() -> None:
    image = load_sample(RG1)
    assert image.pixels.dtype == np.uint16 and image.bits_stored == 15
    assert image.default_window == (15000.0, 30000.0)
    height, width = image.display.shape
    band = image.display[height // 3 : 2 * height // 3].astype(float)
    mediastinum = band[:, 2 * width // 5 : 3 * width // 5].mean()
    lungs = (band[:, width // 6 : width // 3].mean() + band[:, 2 * width // 3 : 5 * width // 6].mean()) / 2
    assert mediastinum > lungs + 20
    assert np.array_equal(image.display, window_display(image, *image.default_window, invert=True))
    raw_window = window_display(image, *image.default_window)  # un-inverted: the other way round
    assert raw_window[height // 3 : 2 * height // 3, 2 * width // 5 : 3 * width // 5].mean() < 255 - mediastinum + 1


def test_rgba_png_becomes_grayscale_composited_on_black() -> None:
    image = load_image_path(RADIOPAEDIA_PA)
    rgba = np.asarray(Image.open(RADIOPAEDIA_PA))
    alpha = rgba[..., 3]
    assert image.display.ndim == 2 and image.pixels.dtype == np.uint8
    assert np.array_equal(image.display[alpha == 255], rgba[..., 0][alpha == 255])
    assert (image.display[alpha == 0] == 0).all()


def test_sixteen_bit_png_round_trip() -> None:
    arr = np.random.default_rng(1).integers(1000, 40000, (96, 128)).astype(np.uint16)
    image = load_image_bytes(png_bytes(arr), "16bit.png")
    assert image.pixels.dtype == np.uint16 and np.array_equal(image.pixels, arr)
    assert image.bits_stored == 16
    lo, hi = int(arr.min()), int(arr.max())
    assert image.default_window == ((lo + hi + 1) / 2, hi - lo + 1)
    assert image.display.min() == 0 and image.display.max() == 255
    assert np.array_equal(image.display, window_display(image, *image.default_window))


def test_jpeg_and_palette_png_load() -> None:
    arr = noise(80, 100)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    assert load_image_bytes(buf.getvalue()).source_format == "jpeg"
    palette = Image.fromarray(arr).convert("P")
    buf = io.BytesIO()
    palette.save(buf, format="PNG")
    assert load_image_bytes(buf.getvalue()).display.shape == (80, 100)


def test_dicom_rescale_and_window_from_tags() -> None:
    raw = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    data = dicom_bytes(raw, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=40, WindowWidth=401)
    image = load_image_bytes(data, "ct-like.dcm")
    assert image.pixels.dtype == np.float32
    assert np.array_equal(image.pixels, raw * 2.0 - 1000)
    assert image.default_window == (40.0, 401.0)
    hu = image.pixels
    assert (image.display[hu <= 40 - 0.5 - 200] == 0).all() and (image.display[hu > 40 - 0.5 + 200] == 255).all()
    assert image.display[hu == 40].item() == 128  # ((40 - 39.5) / 400 + 0.5) * 255 = 127.8


def test_dicom_voi_lut_sequence_is_applied() -> None:
    raw = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    lut = (np.sqrt(np.arange(4096) / 4095) * 65535).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    image = load_image_bytes(dicom_bytes(raw, VOILUTSequence=[item]))
    assert np.array_equal(image.pixels, raw)
    assert np.array_equal(image.display, np.rint(lut[raw] / lut.max() * 255).astype(np.uint8))


def test_content_key_follows_display_content() -> None:
    a, b = noise(70, 70, seed=1), noise(70, 70, seed=2)
    assert load_image_bytes(png_bytes(a)).content_key == load_image_bytes(png_bytes(a)).content_key
    assert load_image_bytes(png_bytes(a)).content_key != load_image_bytes(png_bytes(b)).content_key


# --- rejections ------------------------------------------------------------------------------


def test_empty_and_non_image_bytes_name_the_accepted_formats() -> None:
    assert reason_of(b"") == "empty"
    with pytest.raises(ImageLoadError, match="PNG, JPEG or DICOM") as info:
        load_image_bytes(b"this is a text file, not an x-ray\n" * 10, "notes.txt")
    assert info.value.reason == "not_an_image"


def test_truncated_png_and_jpeg_are_rejected() -> None:
    data = (SAMPLES / "nih_cxr14_normal" / "00000550_000.png").read_bytes()
    assert reason_of(data[: len(data) // 2]) == "truncated"
    buf = io.BytesIO()
    Image.fromarray(noise(256, 256)).save(buf, format="JPEG")
    assert reason_of(buf.getvalue()[: buf.tell() // 2]) == "truncated"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [8000, 40000])
def test_huge_dimensions_rejected_from_the_header(side: int) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(ImageLoadError, match=r"megapixel") as info:
            load_image_bytes(png_header_only(side, side))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.reason == "too_large"
    assert peak < 16 * 2**20  # nothing was allocated or decoded (the pixels alone would be >= 64 MB)


def test_huge_dicom_dimensions_rejected_before_decoding() -> None:
    data = dicom_bytes(np.zeros((64, 64), np.uint16), pixel_data=b"\0\0" * 16)
    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.Rows = dataset.Columns = 10000
    buf = io.BytesIO()
    dataset.save_as(buf, enforce_file_format=True)
    assert reason_of(buf.getvalue()) == "too_large"


def test_constant_image_is_blank() -> None:
    with pytest.raises(ImageLoadError, match=r"blank \(all pixels have the same value\)") as info:
        load_image_bytes(png_bytes(np.full((100, 100), 7, np.uint8)))
    assert info.value.reason == "blank"


@pytest.mark.parametrize(
    ("height", "width", "reason"), [(1, 5000, "aspect_ratio"), (100, 500, "aspect_ratio"), (32, 40, "too_small")]
)
def test_shape_limits(height: int, width: int, reason: str) -> None:
    assert reason_of(png_bytes(noise(height, width))) == reason


def test_byte_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "MAX_BYTES", 1000)
    assert reason_of(png_bytes(noise(100, 100))) == "too_many_bytes"


def test_multi_frame_dicom_rejected() -> None:
    frames = np.stack([noise(64, 64, 1), noise(64, 64, 2)]).astype(np.uint16)
    assert reason_of(dicom_bytes(frames, frames=2)) == "multi_frame"


def test_dicom_without_pixel_data_rejected() -> None:
    assert reason_of(dicom_bytes(None)) == "no_pixel_data"


def test_dicom_with_undecodable_pixel_data_rejected() -> None:
    data = dicom_bytes(noise(64, 64), transfer_syntax=JPEGLSLossless, pixel_data=encapsulate([b"not a codestream"]))
    with pytest.raises(ImageLoadError, match="JPEG-LS") as info:
        load_image_bytes(data)
    assert info.value.reason == "unsupported_transfer_syntax"


def test_dicom_is_detected_by_preamble_not_extension(tmp_path: Path) -> None:
    path = tmp_path / "scan.png"
    path.write_bytes(SIIM.read_bytes())
    assert load_image_path(path).source_format == "dicom"


# --- privacy ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [SIIM, RG1], ids=["siim", "rg1"])
def test_no_patient_tag_reaches_the_image(path: Path) -> None:
    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    secrets = {str(dataset.PatientName), str(dataset.PatientID)}
    image = load_sample(path)
    for field in fields(image):
        value = getattr(image, field.name)
        if isinstance(value, np.ndarray):
            assert value.dtype.kind in "uif"
        else:
            assert not any(s in repr(value) for s in secrets), field.name
    assert set(vars(image)) == {f.name for f in fields(XrayImage)}


def test_error_messages_carry_no_patient_tags() -> None:
    with pytest.raises(ImageLoadError) as info:
        load_image_bytes(dicom_bytes(None))
    assert "Doe" not in str(info.value) and "SECRET" not in str(info.value)


# --- windowing and downscaling ---------------------------------------------------------------


def _image(pixels: np.ndarray) -> XrayImage:
    return XrayImage(
        pixels=pixels, display=np.zeros(pixels.shape, np.uint8), source_format="test", bits_stored=16, content_key="k"
    )


def test_window_display_matches_the_dicom_linear_formula() -> None:
    values = np.array([[0, 99, 100, 150, 199, 200, 65535]], dtype=np.uint16)
    expected = np.array([[0, 0, 1, 129, 254, 255, 255]], dtype=np.uint8)  # c=150, w=101: 99.5 < x <= 199.5 ramps
    assert np.array_equal(window_display(_image(values), 150, 101), expected)
    assert np.array_equal(window_display(_image(values), 150, 101, invert=True), 255 - expected)
    assert np.array_equal(window_display(_image(values.astype(np.float32)), 150, 101), expected)
    assert np.array_equal(window_display(_image(values), 150, 1), [[0, 0, 0, 255, 255, 255, 255]])
    with pytest.raises(ValueError):
        window_display(_image(values), 150, 0)


def test_downscale_for_display() -> None:
    arr = noise(1955, 1841)
    small = downscale_for_display(arr, 512)
    assert small.shape == (512, 482) and small.dtype == np.uint8
    assert downscale_for_display(arr, 4000) is arr


def dicom_error(data: bytes) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        load_image_bytes(data, "scan.dcm")
    return info.value


@pytest.mark.parametrize(
    ("cut", "kind"), [(lambda d: d[: len(d) // 2], "truncated"), (lambda d: d + b"\0\0\0\0", "wrongly sized")]
)
def test_wrongly_sized_native_pixel_data_is_named_as_such(cut, kind: str) -> None:
    arr = noise(80, 90).astype(np.uint16) * 16
    error = dicom_error(dicom_bytes(arr, pixel_data=cut(arr.astype(np.uint16).tobytes())))
    assert error.reason == "truncated"
    assert f"is {kind}: its pixel data has" in str(error) and "80×90 pixels of 16 bits need 14,400" in str(error)


def test_a_cut_compressed_dicom_file_is_truncated_not_an_unsupported_transfer_syntax() -> None:
    data = RG1.read_bytes()
    error = dicom_error(data[: len(data) * 2 // 3])
    assert error.reason == "truncated" and "truncated" in str(error)
    siim = pydicom.dcmread(SIIM)
    siim.PixelData = siim.PixelData[: len(siim.PixelData) // 2]  # a JPEG codestream cut in half, file intact
    buffer = io.BytesIO()
    siim.save_as(buffer)
    error = dicom_error(buffer.getvalue())
    assert error.reason == "truncated" and "corrupt or truncated" in str(error)
