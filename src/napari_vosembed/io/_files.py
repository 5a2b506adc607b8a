"""File helpers shared by the readers: extensions, natural sort, image headers and decoding."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image

from ..errors import VideoReadError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
TIFF_EXTENSIONS = (".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".webm", ".mkv")
LABEL_EXTENSIONS = (".png", ".tif", ".tiff")

_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_NATIVE_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
#: the most pixels a frame may declare (16384 x 16384): more is an image bomb or a whole-slide image
MAX_FRAME_PIXELS = 1 << 28


def natural_key(path: str | Path) -> list:
    """Sort key that orders ``frame2`` before ``frame10`` (case-insensitive)."""
    name = Path(path).name
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_files(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Visible files of ``folder`` with one of ``extensions``, in natural order."""
    files = [
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions
    ]
    return sorted(files, key=natural_key)


def describe(exc: Exception) -> str:
    """A parser's error in a few words. Parsers of damaged files raise far more than OSError and
    ValueError: tifffile raises IndexError, TypeError, ZeroDivisionError or struct.error on bytes it
    cannot make sense of (tests/reliability/test_io_properties.py), so the readers catch every
    Exception around them and report it as the file's problem."""
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, (OSError, ValueError)) else str(exc)


def check_frame_size(path: Path, height: int, width: int) -> None:
    """Refuse, before anything is decoded, a frame whose header declares no pixels or more than
    ``MAX_FRAME_PIXELS`` (an image bomb: a small file that would decode to gigabytes)."""
    if height <= 0 or width <= 0:
        raise VideoReadError(f"{path}: the file declares an empty {width} x {height} frame")
    if height * width > MAX_FRAME_PIXELS:
        raise VideoReadError(
            f"{path}: the file declares a {width} x {height} frame ({height * width:,} pixels), more than "
            f"the {MAX_FRAME_PIXELS:,} a frame may have (an image bomb, or a whole-slide image: crop or "
            "downscale it first)"
        )


def image_header(path: Path) -> tuple[tuple[int, int], bool]:
    """``((height, width), is_grayscale)`` of an image file, read from its header only; a frame too
    large to decode is refused (``check_frame_size``)."""
    try:
        if path.suffix.lower() in TIFF_EXTENSIONS:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                size, gray = (int(page.imagelength), int(page.imagewidth)), page.samplesperpixel == 1
        else:
            with Image.open(path) as im:
                size, gray = (im.height, im.width), im.mode in _GRAY_MODES
    except Image.DecompressionBombError as exc:
        raise VideoReadError(f"{path}: refused as an image bomb ({exc})") from exc
    except Exception as exc:  # any parser error: see describe()
        raise VideoReadError(f"{path}: not a readable image ({describe(exc)})") from exc
    check_frame_size(path, *size)
    return size, gray


def native(frame: np.ndarray) -> np.ndarray:
    """Keep uint8, uint16 and float32 (in native byte order); convert every other dtype to float32."""
    dtype = frame.dtype.newbyteorder("=")
    if dtype in _NATIVE_DTYPES:
        return frame.astype(dtype, copy=False)
    return frame.astype(np.float32)


def read_image(path: Path) -> np.ndarray:
    """Decode one frame: ``(H, W)`` grayscale or ``(H, W, 3)`` RGB in its native dtype."""
    _, is_gray = image_header(path)
    try:
        if path.suffix.lower() in TIFF_EXTENSIONS:
            frame = tifffile.imread(path, key=0)
            if frame.ndim == 3 and frame.shape[-1] in (3, 4):
                frame = frame[..., :3]
        else:
            frame = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
            if frame is not None and frame.ndim == 3:
                frame = frame[..., 0] if is_gray else cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    except Exception as exc:  # any parser error: see describe()
        raise VideoReadError(f"{path}: cannot decode image ({describe(exc)})") from exc
    if frame is None:
        raise VideoReadError(f"{path}: cannot decode image (corrupt or truncated file)")
    frame = np.squeeze(frame) if frame.ndim == 3 and frame.shape[-1] == 1 else frame
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[-1] != 3):
        raise VideoReadError(
            f"{path}: image of shape {frame.shape} is not a 2D grayscale or RGB frame"
        )
    return native(frame)
