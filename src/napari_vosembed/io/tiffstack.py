"""Multi-page TIFF and OME-TIFF stacks read page by page with tifffile."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import tifffile

from ..errors import VideoReadError
from ._files import native

SUPPORTED_AXES = (
    "Y,X (one grayscale image), Y,X,C or C,Y,X with 3 channels (one RGB image), "
    "T,Y,X (grayscale frames), T,Y,X,C or T,C,Y,X with 3 channels (RGB frames); "
    "the frame axis may be T, Z or any other single axis and axes of length 1 are ignored"
)
_CHANNEL_AXES = "CS"
_RGB = (3, 4)


def _layout(axes: str, shape: tuple[int, ...]) -> tuple[bool, bool] | None:
    """``(has_frame_axis, channels_first)`` for a supported stack, else ``None``."""
    if axes.endswith("YXS"):
        if shape[-1] not in _RGB:
            return None
        leading, channels_first = axes[:-3], False
    elif axes.endswith("YX"):
        leading = axes[:-2]
        channels_first = bool(leading) and leading[-1] in _CHANNEL_AXES and shape[len(leading) - 1] in _RGB
        if channels_first:
            leading = leading[:-1]
    else:
        return None
    if len(leading) > 1:
        return None
    return bool(leading), channels_first


class TiffReader:
    """Frame reader of the first series of a (multi-page) TIFF file."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._data = None
        try:
            self._tif = tifffile.TiffFile(path)
            series = self._tif.series[0]
            axes, shape = series.axes, tuple(series.shape)
            page_shape = tuple(series.keyframe.shape)
        except (OSError, ValueError, IndexError, tifffile.TiffFileError) as exc:
            raise VideoReadError(f"{path}: not a readable TIFF file ({exc})") from exc
        layout = _layout(axes, shape)
        if layout is None:
            self._tif.close()
            raise VideoReadError(
                f"{path}: a TIFF stack with axes {axes} and shape {shape} is not supported. "
                f"Supported: {SUPPORTED_AXES}. Multi-channel (other than RGB) or multi-dimensional "
                "stacks (for example T and Z, or several channels) are not: save one channel or "
                "one plane per time point first (Fiji, or tifffile in Python)."
            )
        has_frames, self._channels_first = layout
        self.n_frames = shape[0] if has_frames else 1
        self._frame_file_shape = shape[1:] if has_frames else shape
        self._pages = series.pages
        n_leading = math.prod(shape[: len(shape) - len(page_shape)])
        self._pages_per_frame = len(self._pages) // self.n_frames
        try:
            if len(self._pages) != n_leading or n_leading % self.n_frames:
                self._data = self._whole_series(series)
            first = self.read(0)
        except BaseException:
            self._tif.close()
            raise
        self.frame_shape = first.shape
        self.dtype = first.dtype
        self.frame_names = [f"{t:05d}" for t in range(self.n_frames)]

    def _whole_series(self, series) -> np.ndarray:
        """Pages that do not map to frames: memory-map the data when possible, else read it."""
        try:
            data = tifffile.memmap(self.path, series=0, mode="r")
        except ValueError:
            try:
                data = series.asarray()
            except (OSError, ValueError, tifffile.TiffFileError) as exc:
                raise VideoReadError(f"{self.path}: cannot read the TIFF data ({exc})") from exc
        return data.reshape((self.n_frames, *self._frame_file_shape))

    def _read_pages(self, t: int) -> np.ndarray:
        if self._data is not None:
            return np.asarray(self._data[t])
        k = self._pages_per_frame
        pages = [self._pages[i] for i in range(t * k, (t + 1) * k)]
        if any(page is None for page in pages):
            raise VideoReadError(f"{self.path}: frame {t} is missing (truncated file?)")
        return np.stack([page.asarray() for page in pages]).reshape(self._frame_file_shape)

    def read(self, t: int) -> np.ndarray:
        """Frame ``t`` as ``(H, W)`` or ``(H, W, 3)`` in its native dtype."""
        with self._lock:
            try:
                frame = self._read_pages(t)
            except (OSError, ValueError, tifffile.TiffFileError) as exc:
                raise VideoReadError(f"{self.path}: cannot read frame {t} ({exc})") from exc
        if self._channels_first:
            frame = np.moveaxis(frame, 0, -1)
        if frame.ndim == 3:
            frame = frame[..., :3]
        return native(np.ascontiguousarray(frame))

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._tif.close()
