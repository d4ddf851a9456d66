"""Bytes or a path -> `XrayImage`: PNG, JPEG (8/16-bit) and single-frame DICOM, with strict limits.

Every rejection is an `ImageLoadError` carrying a sentence for people and a short `.reason` code.
DICOM is recognised by its `DICM` preamble, never by the file name. The pydicom dataset lives only
inside `_load_dicom`; no tag (patient or otherwise) is stored on the result or logged.

Windowing follows the DICOM LINEAR VOI function: for centre c and width w, values up to
c - 0.5 - (w - 1) / 2 are black, values above c - 0.5 + (w - 1) / 2 are white, and in between
y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255. The full range [lo, hi] is the window
((lo + hi + 1) / 2, hi - lo + 1), so `window_display(img, *img.default_window)` reproduces
`img.display` whenever the display came from a linear window or a min-max stretch.
"""

from __future__ import annotations

import hashlib
import io
import warnings
import zlib
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pydicom
from PIL import Image
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder

from model_backend.types import XrayImage

MAX_BYTES = 100 * 1024 * 1024
MAX_PIXELS = 50_000_000
MIN_SIDE = 64
MAX_ASPECT = 4.0
ACCEPTED_FORMATS = "PNG, JPEG or DICOM (.dcm)"

# Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that; our own header check below
# rejects anything over MAX_PIXELS before a single pixel is decoded.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

_PIL_FORMATS = ("PNG", "JPEG")
_DICM_OFFSET = 128


class ImageLoadError(ValueError):
    """An input that cannot be used as a radiograph; `reason` is a short machine-readable code.

    Codes: empty, too_many_bytes, not_an_image, truncated, too_large, zero_size, too_small,
    aspect_ratio, blank, multi_frame, no_pixel_data, unsupported_transfer_syntax, unsupported_mode,
    unreadable.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def load_image_path(path: str | Path) -> XrayImage:
    """Read a file and decode it with `load_image_bytes` (size limit checked before reading)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        _check_byte_size(size, path.name)
        data = path.read_bytes()
    except OSError as exc:
        raise ImageLoadError("unreadable", f"Cannot read {path.name}: {exc.strerror or exc}.") from exc
    return load_image_bytes(data, path.name)


def load_image_bytes(data: bytes, name: str = "") -> XrayImage:
    """Decode PNG/JPEG/DICOM bytes into an `XrayImage` or raise `ImageLoadError`.

    Colour images become grayscale by ITU-R 601 luma; an alpha channel is composited on black
    (transparent pixels become black, which matches the black border of a radiograph).
    """
    label = f" {name!r}" if name else ""
    if not data:
        raise ImageLoadError("empty", f"The file{label} is empty. Upload a {ACCEPTED_FORMATS} chest X-ray.")
    _check_byte_size(len(data), name)
    if data[_DICM_OFFSET : _DICM_OFFSET + 4] == b"DICM":
        return _load_dicom(data, label)
    return _load_pillow(data, label)


def window_display(image: XrayImage, centre: float, width: float, invert: bool = False) -> np.ndarray:
    """Render `image.pixels` through a DICOM LINEAR window to uint8 (inverted for MONOCHROME1 viewing)."""
    return _window_array(image.pixels, centre, width, invert)


def downscale_for_display(arr: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink so the longer side is at most `max_side` (area averaging); smaller arrays are returned as is."""
    if max_side <= 0:
        raise ValueError(f"max_side must be positive, got {max_side}")
    height, width = arr.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return arr
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(arr, size, interpolation=cv2.INTER_AREA)


# --- windowing -------------------------------------------------------------------------------


def _window_array(pixels: np.ndarray, centre: float, width: float, invert: bool) -> np.ndarray:
    if not (np.isfinite(centre) and np.isfinite(width)) or width < 1:
        raise ValueError(f"window width must be >= 1 and both values finite, got centre={centre}, width={width}")
    if pixels.dtype in (np.uint8, np.uint16):
        lut = _window_lut(int(np.iinfo(pixels.dtype).max) + 1, float(centre), float(width), invert)
        return np.take(lut, pixels)
    return _linear_window(pixels.astype(np.float32, copy=False), float(centre), float(width), invert)


@lru_cache(maxsize=32)
def _window_lut(levels: int, centre: float, width: float, invert: bool) -> np.ndarray:
    lut = _linear_window(np.arange(levels, dtype=np.float64), centre, width, invert)
    lut.flags.writeable = False
    return lut


def _linear_window(values: np.ndarray, centre: float, width: float, invert: bool) -> np.ndarray:
    if width <= 1:
        out = np.where(values > centre - 0.5, 255.0, 0.0)
    else:
        out = ((values - (centre - 0.5)) / (width - 1) + 0.5) * 255.0
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return np.subtract(255, out, dtype=np.uint8) if invert else out


def _full_range_window(pixels: np.ndarray) -> tuple[float, float]:
    lo, hi = float(pixels.min()), float(pixels.max())
    return (lo + hi + 1.0) / 2.0, hi - lo + 1.0


# --- Pillow formats --------------------------------------------------------------------------


def _load_pillow(data: bytes, label: str) -> XrayImage:
    try:
        im = Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(
            "too_large", f"The image{label} is larger than the {MAX_PIXELS / 1e6:.0f}-megapixel limit."
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(
            "not_an_image", f"The file{label} is not a readable image. Accepted formats: {ACCEPTED_FORMATS}."
        ) from exc
    with im:
        _check_dimensions(im.width, im.height, label)
        source_format = str(im.format).lower()
        if getattr(im, "n_frames", 1) > 1:
            raise ImageLoadError("multi_frame", f"The image{label} is animated; upload a single still image.")
        _full_decode(im, data, label)
        pixels, bits = _pillow_to_gray(im, label)
    return _finish(pixels, bits, source_format, window=None, label=label)


def _full_decode(im: Image.Image, data: bytes, label: str) -> None:
    """Decode every pixel now so that truncation cannot pass silently; PNG chunks (and their
    CRCs) are also verified on a second handle. Relies on Pillow's default LOAD_TRUNCATED_IMAGES=False."""
    try:
        if im.format == "PNG":
            with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as probe:
                probe.verify()
        im.load()
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as exc:
        raise ImageLoadError(
            "truncated", f"The image{label} is truncated or corrupt and cannot be fully decoded ({exc})."
        ) from exc


def _pillow_to_gray(im: Image.Image, label: str) -> tuple[np.ndarray, int]:
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("L", "1"):
        return np.asarray(im.convert("L"), dtype=np.uint8), 8
    if mode in ("LA", "RGBA", "La", "RGBa", "PA"):
        rgba = im.convert("RGBA")
        gray = np.asarray(rgba.convert("L"), dtype=np.float32)
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
        return np.rint(gray * alpha).astype(np.uint8), 8
    if mode in ("RGB", "CMYK", "YCbCr"):
        return np.asarray(im.convert("L"), dtype=np.uint8), 8
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im)
        if arr.dtype.kind == "i" and arr.size and (arr.min() < 0 or arr.max() > 65535):
            return arr.astype(np.float32), 32
        return arr.astype(np.uint16), 16
    if mode == "F":
        return np.asarray(im, dtype=np.float32), 32
    raise ImageLoadError("unsupported_mode", f"The image{label} uses pixel mode {mode!r}, which is not supported.")


# --- DICOM ---------------------------------------------------------------------------------


def _load_dicom(data: bytes, label: str) -> XrayImage:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(io.BytesIO(data))
        cut_short = any("end of file" in str(w.message).lower() for w in caught)
        has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
        frames = int(ds.get("NumberOfFrames") or 1)
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        bits = int(ds.get("BitsStored") or 0)
        invert = str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"
        function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
        has_voi_lut = "VOILUTSequence" in ds
        window = _dicom_window(ds.get("WindowCenter"), ds.get("WindowWidth"))
        tsyntax = ds.file_meta.get("TransferSyntaxUID")
        tsyntax_name = str(getattr(tsyntax, "name", tsyntax))
    except Exception as exc:  # pydicom raises many types for malformed headers
        raise ImageLoadError("not_an_image", f"The DICOM file{label} cannot be parsed.") from exc
    if cut_short:
        raise ImageLoadError("truncated", f"The DICOM file{label} is truncated: it ends in the middle of an element.")
    if not has_pixels:
        raise ImageLoadError("no_pixel_data", f"The DICOM file{label} contains no image (no Pixel Data element).")
    if frames > 1:
        raise ImageLoadError(
            "multi_frame", f"The DICOM file{label} has {frames} frames; only single-frame radiographs are supported."
        )
    _check_dimensions(cols, rows, label)
    _check_native_pixel_length(ds, tsyntax, label)
    try:
        raw = ds.pixel_array
    except Exception as exc:  # missing decoder plug-in, corrupt codestream, ...
        if _can_decode(tsyntax):
            raise ImageLoadError(
                "truncated",
                f"The DICOM file{label} has compressed pixel data ({tsyntax_name}) that is corrupt or truncated.",
            ) from exc
        raise ImageLoadError(
            "unsupported_transfer_syntax",
            f"The DICOM file{label} uses transfer syntax {tsyntax_name!r}, which cannot be decoded here.",
        ) from exc
    if raw.ndim == 3 and raw.shape[-1] in (3, 4):  # colour DICOM (pydicom converts YBR to RGB): ITU-R 601 luma
        raw = _compact_dtype(np.rint(raw[..., :3].astype(np.float32) @ np.float32([0.299, 0.587, 0.114])))
    if raw.ndim != 2:
        raise ImageLoadError("unsupported_mode", f"The DICOM file{label} does not hold a 2-D grayscale image.")

    modality = apply_modality_lut(raw, ds)
    pixels = _compact_dtype(modality)
    bits = bits or pixels.dtype.itemsize * 8
    if has_voi_lut or (window is not None and function not in ("LINEAR", "LINEAR_EXACT")):
        voi = np.asarray(apply_voi_lut(modality, ds, prefer_lut=True), dtype=np.float32)
        display = _window_array(voi, *_full_range_window(voi), invert)
        return _finish(pixels, bits, "dicom", window=window, label=label, display=display)
    return _finish(pixels, bits, "dicom", window=window, label=label, invert=invert)


def _can_decode(tsyntax: object) -> bool:
    """Whether pydicom has a working decoder for this transfer syntax (False for unknown ones)."""
    try:
        return bool(get_decoder(tsyntax).is_available)  # type: ignore[arg-type]
    except Exception:  # unknown or missing UID
        return False


def _check_native_pixel_length(ds: pydicom.Dataset, tsyntax: object, label: str) -> None:
    """Uncompressed Pixel Data must hold rows x columns x samples at BitsAllocated (one pad byte allowed)."""
    if getattr(tsyntax, "is_compressed", True) or "PixelData" not in ds:
        return
    allocated = int(ds.get("BitsAllocated") or 0)
    if allocated not in (8, 16, 32, 64):
        return  # 1-bit and odd layouts: let pydicom judge
    samples = int(ds.get("SamplesPerPixel") or 1)
    expected = int(ds.Rows) * int(ds.Columns) * samples * allocated // 8
    actual = len(ds.PixelData)
    if actual < expected or actual > expected + 1:
        kind = "truncated" if actual < expected else "wrongly sized"
        raise ImageLoadError(
            "truncated",
            f"The DICOM file{label} is {kind}: its pixel data has {actual:,} bytes, but {ds.Rows}×{ds.Columns} "
            f"pixels of {allocated} bits need {expected:,}.",
        )


def _dicom_window(centre: object, width: object) -> tuple[float, float] | None:
    """First (centre, width) pair of the dataset, or None when absent or unusable."""
    if centre is None or width is None:
        return None
    centre = centre[0] if isinstance(centre, MultiValue | list | tuple) else centre
    width = width[0] if isinstance(width, MultiValue | list | tuple) else width
    try:
        centre_f, width_f = float(centre), float(width)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not (np.isfinite(centre_f) and np.isfinite(width_f)) or width_f < 1:
        return None
    return centre_f, width_f


def _compact_dtype(arr: np.ndarray) -> np.ndarray:
    """uint8/uint16 when integer values fit, else float32."""
    if arr.dtype.kind in "ui" and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi <= 255 and arr.dtype.itemsize == 1:
            return arr.astype(np.uint8, copy=False)
        if lo >= 0 and hi <= 65535:
            return arr.astype(np.uint16, copy=False)
    return arr.astype(np.float32)


# --- shared checks and assembly --------------------------------------------------------------


def _check_byte_size(size: int, name: str) -> None:
    if size > MAX_BYTES:
        label = f" {name!r}" if name else ""
        raise ImageLoadError(
            "too_many_bytes",
            f"The file{label} is {size / 2**20:.0f} MB; the limit is {MAX_BYTES // 2**20} MB.",
        )


def _check_dimensions(width: int, height: int, label: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageLoadError("zero_size", f"The image{label} has no pixels ({width}x{height}).")
    if width * height > MAX_PIXELS:
        raise ImageLoadError(
            "too_large",
            f"The image{label} is {width}x{height} = {width * height / 1e6:.0f} megapixels; "
            f"the limit is {MAX_PIXELS / 1e6:.0f} megapixels.",
        )
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise ImageLoadError(
            "aspect_ratio",
            f"The image{label} is {width}x{height}; a chest radiograph is at most {MAX_ASPECT:g}:1 long-to-short.",
        )
    if min(width, height) < MIN_SIDE:
        raise ImageLoadError(
            "too_small", f"The image{label} is {width}x{height}; each side must be at least {MIN_SIDE} pixels."
        )


def _finish(
    pixels: np.ndarray,
    bits: int,
    source_format: str,
    window: tuple[float, float] | None,
    label: str,
    invert: bool = False,
    display: np.ndarray | None = None,
) -> XrayImage:
    """Reject blank images, build the 8-bit display, freeze the arrays and key the content."""
    lo, hi = pixels.min(), pixels.max()
    if lo == hi:
        raise ImageLoadError("blank", f"The image{label} is blank (all pixels have the same value).")
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ImageLoadError("unreadable", f"The image{label} contains non-finite pixel values.")
    if display is None:
        if window is None and pixels.dtype == np.uint8 and not invert:
            window, display = (128.0, 256.0), pixels
        else:
            window = window or _full_range_window(pixels)
            display = _window_array(pixels, *window, invert)
    window = window or _full_range_window(pixels)
    pixels = np.ascontiguousarray(pixels)
    display = np.ascontiguousarray(display, dtype=np.uint8)
    pixels.flags.writeable = False
    display.flags.writeable = False
    digest = hashlib.sha256(f"{display.shape[0]}x{display.shape[1]}:".encode())
    digest.update(display.tobytes())
    return XrayImage(
        pixels=pixels,
        display=display,
        source_format=source_format,
        bits_stored=bits,
        content_key=digest.hexdigest(),
        default_window=window,
    )
