"""Multi-page TIFF and OME-TIFF stacks read page by page with tifffile; a channel and z plane chosen
where the stack has several."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import tifffile

from ..errors import VideoReadError
from ._files import check_frame_size, describe, native

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


def _rgb_channels(axes: str, shape: tuple[int, ...]) -> bool:
    """Whether the C axis holds the colours of RGB frames: 3 or 4 of them, right before Y, X."""
    position = axes.find("C")
    return position >= 0 and axes[position:] == "CYX" and shape[position] in _RGB


def _planes(path: Path, axes: str, shape: tuple[int, ...], channel: int | None, z: int | None) -> dict[int, int]:
    """The chosen index of the C and Z axes (axis position -> index). A stack without a T axis has
    its frames along Z, one without either along its one other axis (`_layout`); a C axis of 3 or 4
    right before Y, X with no channel chosen stays: it is RGB."""
    fixed = {}
    frames = "T" if "T" in axes else "Z"
    for value, letter, what, option in ((channel, "C", "channel", "channel"), (z, "Z", "z plane", "z")):
        position = axes.find(letter)
        if letter == frames and value is None:
            continue
        if position < 0:
            if value is not None:
                raise VideoReadError(f"{path}: {option}={value} was given but the stack has no {letter} axis "
                                     f"(axes {axes}, shape {shape})")
            continue
        size = shape[position]
        if value is None and (size == 1 or (letter == "C" and _rgb_channels(axes, shape))):
            continue
        if value is None:
            raise VideoReadError(f"{path}: the stack has {size} {what}s (axes {axes}, shape {shape}); choose one: "
                                 f"open_video(path, {option}=K) or `--{option} K`")
        if not 0 <= value < size:
            raise VideoReadError(f"{path}: {what} {value} does not exist; the stack has {what}s 0 to {size - 1}")
        fixed[position] = value
    return fixed


def _series_axes(path: Path) -> tuple[str, tuple[int, ...]]:
    """(axes, shape) of the first series of a TIFF file."""
    try:
        with tifffile.TiffFile(path) as tif:
            return tif.series[0].axes, tuple(tif.series[0].shape)
    except Exception as exc:  # any parser error: see _files.describe()
        raise VideoReadError(f"{path}: not a readable TIFF file ({describe(exc)})") from exc


def channel_count(path: Path) -> int | None:
    """The number of channels of a TIFF stack to choose from (None: none to choose, e.g. one channel
    or RGB)."""
    axes, shape = _series_axes(path)
    position = axes.find("C")
    if position < 0 or shape[position] == 1 or _rgb_channels(axes, shape):
        return None
    return shape[position]


def z_count(path: Path) -> int | None:
    """The number of z planes of a TIFF stack to choose from (None: one or none)."""
    axes, shape = _series_axes(path)
    position = axes.find("Z")
    return None if position < 0 or shape[position] == 1 else shape[position]


class TiffReader:
    """Frame reader of the first series of a (multi-page) TIFF file; `channel` / `z`: the plane to
    read where the stack has several."""

    def __init__(self, path: Path, channel: int | None = None, z: int | None = None):
        self.path = path
        self._lock = threading.Lock()
        self._data = None
        try:
            self._tif = tifffile.TiffFile(path)
        except Exception as exc:  # any parser error: see _files.describe()
            raise VideoReadError(f"{path}: not a readable TIFF file ({describe(exc)})") from exc
        try:
            series = self._tif.series[0]
            axes, shape = series.axes, tuple(series.shape)
            keyframe = series.keyframe
            page_shape = tuple(keyframe.shape)
            check_frame_size(path, int(keyframe.imagelength), int(keyframe.imagewidth))
            # metadata declaring pages the file lacks (tifffile gives None for them): the last page
            # tells at once; the count is taken only then (iterating a series otherwise reads every page)
            if series.pages[len(series.pages) - 1] is None:
                present = sum(page is not None for page in series.pages)
                raise VideoReadError(
                    f"{path}: its metadata declare {len(series.pages):,} pages but the file holds {present:,} "
                    "(a truncated file, or metadata that do not match the data; resave the stack, e.g. with Fiji)"
                )
            n_leading = len(shape) - len(page_shape)
            fixed = _planes(path, axes, shape, channel, z)
            kept = [i for i in range(len(shape)) if i not in fixed]
            layout = _layout("".join(axes[i] for i in kept), tuple(shape[i] for i in kept))
            if layout is None:
                raise VideoReadError(
                    f"{path}: a TIFF stack with axes {axes} and shape {shape} is not supported. "
                    f"Supported: {SUPPORTED_AXES}; with several channels or z planes, choose one "
                    "(open_video(path, channel=K, z=K), or --channel / --z)."
                )
            has_frames, self._channels_first = layout
            self.n_frames = shape[kept[0]] if has_frames else 1
            self._frame_file_shape = tuple(shape[i] for i in kept[1 if has_frames else 0:])
            self._select = tuple(fixed.get(i, slice(None)) for i in range(len(shape)))
            self._in_page = self._select[n_leading:]  # the chosen planes of axes within a page
            self._pages = series.pages
            if len(self._pages) == math.prod(shape[:n_leading]) and (not has_frames or kept[0] < n_leading):
                # page numbers of the kept leading axes: (frames, RGB planes) or (RGB planes,)
                grid = np.arange(len(self._pages)).reshape(shape[:n_leading])[self._select[:n_leading]]
                self._page_grid = grid if has_frames else grid[None]
            else:
                self._data = self._whole_series(series)
            first = self.read(0)
        except BaseException as exc:
            self._tif.close()
            if isinstance(exc, VideoReadError) or not isinstance(exc, Exception):
                raise
            raise VideoReadError(f"{path}: not a readable TIFF file ({describe(exc)})") from exc
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
            except Exception as exc:  # any parser error: see _files.describe()
                raise VideoReadError(f"{self.path}: cannot read the TIFF data ({describe(exc)})") from exc
        return data[self._select].reshape((self.n_frames, *self._frame_file_shape))

    def _read_pages(self, t: int) -> np.ndarray:
        if self._data is not None:
            return np.asarray(self._data[t])
        pages = [self._pages[i] for i in np.ravel(self._page_grid[t])]
        if any(page is None for page in pages):
            raise VideoReadError(f"{self.path}: frame {t} is missing (truncated file?)")
        return np.stack([page.asarray()[self._in_page] for page in pages]).reshape(self._frame_file_shape)

    def read(self, t: int) -> np.ndarray:
        """Frame ``t`` as ``(H, W)`` or ``(H, W, 3)`` in its native dtype."""
        with self._lock:
            try:
                frame = self._read_pages(t)
            except VideoReadError:
                raise
            except Exception as exc:  # any parser error: see _files.describe()
                raise VideoReadError(f"{self.path}: cannot read frame {t} ({describe(exc)})") from exc
        if self._channels_first:
            frame = np.moveaxis(frame, 0, -1)
        if frame.ndim == 3:
            frame = frame[..., :3]
        return native(np.ascontiguousarray(frame))

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._tif.close()
