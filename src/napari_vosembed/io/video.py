"""The lazy ``Video`` and ``open_video`` / ``as_video``: video files, frame folders, TIFF stacks,
single images and arrays behind one read-only sequence-of-frames API."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import VideoReadError
from . import tiffstack, zarrstack
from ._files import IMAGE_EXTENSIONS, TIFF_EXTENSIONS, VIDEO_EXTENSIONS, image_header, list_files, native, read_image
from .container import ContainerReader
from .tiffstack import TiffReader
from .zarrstack import ZarrReader, is_zarr

_MAX_RANGE_FRAMES = 16
_MAX_RANGE_PIXELS = 1 << 20


class Video:
    """A read-only sequence of frames, decoded only when asked for.

    ``video[t]`` is one frame, ``(H, W)`` or ``(H, W, 3)`` RGB, in its native dtype (uint8,
    uint16 or float32); negative indices count from the end; a slice or a list of indices gives
    a stacked array; a tuple indexes the frame axis first, then within the frames.
    """

    def __init__(self, reader: Any, source: Path | None):
        self._reader = reader
        self.source = source
        self._range: tuple[float, float] | None = None

    def __len__(self) -> int:
        return self._reader.n_frames

    @property
    def shape(self) -> tuple[int, ...]:
        """``(T, H, W)`` or ``(T, H, W, 3)``."""
        return (len(self), *self._reader.frame_shape)

    @property
    def dtype(self) -> np.dtype:
        """The frames' dtype: uint8, uint16 or float32."""
        return np.dtype(self._reader.dtype)

    @property
    def frame_names(self) -> list[str]:
        """File stems for frame folders, ``00000``, ``00001``, ... otherwise."""
        return list(self._reader.frame_names)

    @property
    def ndim(self) -> int:
        """Number of dimensions of ``shape``."""
        return len(self.shape)

    def _frame(self, t: int) -> np.ndarray:
        n = len(self)
        if not -n <= t < n:
            raise IndexError(f"frame {t} out of range for a video of {n} frames")
        return self._reader.read(t % n)

    def __getitem__(self, index: int | slice | list[int] | np.ndarray | tuple) -> np.ndarray:
        if isinstance(index, tuple):
            frames = self[index[0]]
            rest = index[1:] if isinstance(index[0], (int, np.integer)) else (slice(None), *index[1:])
            return frames[rest]
        if isinstance(index, (int, np.integer)):
            return self._frame(int(index))
        indices = range(len(self))[index] if isinstance(index, slice) else [int(i) for i in index]
        out = np.empty((len(indices), *self._reader.frame_shape), self.dtype)
        for i, t in enumerate(indices):
            out[i] = self._frame(t)
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        for t in range(len(self)):
            yield self._reader.read(t)

    def to_array(self) -> np.ndarray:
        """Decode every frame into one ``(T, H, W[, 3])`` array."""
        return self[:]

    def intensity_range(self) -> tuple[float, float]:
        """``(low, high)``: the 0.5 and 99.5 percentiles over at most 16 evenly spaced frames.

        8-bit RGB video uses ``(0, 255)``. ``high`` is always greater than ``low``.
        """
        if self.dtype == np.uint8 and len(self._reader.frame_shape) == 3:
            return 0.0, 255.0
        if self._range is None:
            n = min(len(self), _MAX_RANGE_FRAMES)
            indices = np.unique(np.linspace(0, len(self) - 1, n).round().astype(int))
            samples = []
            for t in indices:
                frame = self._reader.read(int(t))
                step = max(1, int(np.sqrt(frame.shape[0] * frame.shape[1] / _MAX_RANGE_PIXELS)))
                samples.append(frame[::step, ::step].ravel())
            values = np.concatenate(samples)
            values = values[np.isfinite(values)] if values.dtype.kind == "f" else values
            if values.size == 0:
                raise VideoReadError(f"{self.source}: the frames contain no finite values")
            low, high = (float(v) for v in np.percentile(values, (0.5, 99.5)))
            self._range = (low, high if high > low else low + 1.0)
        return self._range

    def close(self) -> None:
        """Release the file the frames are read from (if any)."""
        close = getattr(self._reader, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Video:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Video(source={str(self.source)!r}, shape={self.shape}, dtype={self.dtype})"


def stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """`values` mapped from [low, high] to float32 [0, 1]: ``(values - low) / (high - low)``, clipped;
    8-bit values through a 256-entry table (one pass instead of four)."""
    if values.dtype == np.uint8:
        return cv2.LUT(np.ascontiguousarray(values), stretch(np.arange(256, dtype=np.float32), low, high))
    out = (values.astype(np.float32) - np.float32(low)) * np.float32(1.0 / max(float(high) - float(low), 1e-6))
    return np.clip(out, 0.0, 1.0, out=out)


def normalize_frame(frame: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map a frame to float32 ``(H, W, 3)`` in [0, 1] (`stretch`).

    Grayscale frames are replicated to 3 channels; ``high`` must exceed ``low``.
    """
    if not high > low:
        raise ValueError(f"normalize_frame needs high > low, got low={low}, high={high}")
    frame = np.asarray(frame)
    if frame.ndim == 3 and frame.shape[-1] == 1:
        frame = frame[..., 0]
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[-1] != 3):
        raise ValueError(f"expected an (H, W) or (H, W, 3) frame, got shape {frame.shape}")
    out = stretch(frame, low, high)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    return np.ascontiguousarray(out)


class ImageFilesReader:
    """Frames stored one per image file (a frame folder, or a single image)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self.n_frames = len(paths)
        self.frame_names = [p.stem for p in paths]
        size, gray = image_header(paths[0])
        for path in paths[1:]:
            other_size, other_gray = image_header(path)
            if other_size != size:
                raise VideoReadError(
                    f"{path}: frame size {other_size[1]}x{other_size[0]} (WxH) differs from "
                    f"{size[1]}x{size[0]} of the first frame {paths[0].name}"
                )
            if other_gray != gray:
                kinds = ("grayscale", "colour") if other_gray else ("colour", "grayscale")
                raise VideoReadError(
                    f"{path}: a {kinds[0]} frame in a folder whose first frame "
                    f"{paths[0].name} is {kinds[1]}"
                )
        first = read_image(paths[0])
        self.frame_shape = first.shape
        self.dtype = first.dtype

    def read(self, t: int) -> np.ndarray:
        """Decode frame ``t`` from its file."""
        frame = read_image(self.paths[t])
        if frame.shape != self.frame_shape or frame.dtype != self.dtype:
            raise VideoReadError(
                f"{self.paths[t]}: frame of shape {frame.shape} and dtype {frame.dtype} differs "
                f"from the first frame {self.paths[0].name} ({self.frame_shape}, {self.dtype})"
            )
        return frame


class ArrayReader:
    """Frames taken one at a time from a ``(T, H, W)`` or ``(T, H, W, 3)`` array-like."""

    def __init__(self, array: Any):
        shape = tuple(int(s) for s in array.shape)
        if len(shape) == 4 and shape[-1] == 1:
            shape = shape[:3]
        if len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] != 3) or shape[0] == 0:
            raise VideoReadError(
                f"an array of shape {shape} is not a video: expected (T, H, W) or (T, H, W, 3) "
                "with T >= 1"
            )
        self._array = array
        self.n_frames = shape[0]
        self.frame_shape = shape[1:]
        self.dtype = native(np.empty(0, np.dtype(array.dtype))).dtype
        self.frame_names = [f"{t:05d}" for t in range(self.n_frames)]

    def read(self, t: int) -> np.ndarray:
        """Frame ``t`` as a numpy array in the video's dtype."""
        frame = np.asarray(self._array[t]).reshape(self.frame_shape)
        return np.array(native(frame), copy=True)


class MirrorReader:
    """The frames of another reader, mirrored left to right."""

    def __init__(self, reader: Any):
        self._reader = reader
        self.n_frames, self.frame_shape, self.dtype = reader.n_frames, reader.frame_shape, reader.dtype
        self.frame_names = list(reader.frame_names)

    def read(self, t: int) -> np.ndarray:
        """Frame ``t`` of the other reader, mirrored."""
        return np.ascontiguousarray(self._reader.read(t)[:, ::-1])


def _supported() -> str:
    return (
        f"video files ({', '.join(VIDEO_EXTENSIONS)}), images ({', '.join(IMAGE_EXTENSIONS)}), "
        "multi-page TIFF / OME-TIFF stacks, Zarr arrays and OME-Zarr images, and folders of frame images"
    )


def _open_folder(folder: Path) -> Video:
    try:
        frames = list_files(folder, IMAGE_EXTENSIONS)
        if not frames and (folder / "frames").is_dir():
            folder = folder / "frames"
            frames = list_files(folder, IMAGE_EXTENSIONS)
    except OSError as exc:
        raise VideoReadError(f"{folder}: the folder cannot be listed ({exc.strerror or exc})") from exc
    if not frames:
        raise VideoReadError(
            f"{folder}: no frames found in this folder (looked for {', '.join(IMAGE_EXTENSIONS)} files)"
        )
    return Video(ImageFilesReader(frames), folder)


def open_video(path: str | os.PathLike, channel: int | None = None, z: int | None = None) -> Video:
    """Open a video file, a folder of frames, a (multi-page) TIFF, a Zarr array or OME-Zarr image,
    or a single image, lazily. `channel` / `z`: the plane of a TIFF or Zarr stack that has several.

    A folder holding no images but a ``frames/`` subfolder (a sequence of ours) opens that.
    """
    path = Path(path).expanduser()
    if not path.exists():
        if path.is_symlink():
            raise VideoReadError(f"{path}: a symbolic link to nothing (broken, or a loop of links)")
        raise VideoReadError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if is_zarr(path):
        return Video(ZarrReader(path, channel, z), path)
    if suffix in TIFF_EXTENSIONS and path.is_file():
        return Video(TiffReader(path, channel, z), path)
    if channel is not None or z is not None:
        raise VideoReadError(f"{path}: a channel or z plane is chosen only in TIFF and Zarr stacks")
    if path.is_dir():
        return _open_folder(path)
    if suffix in VIDEO_EXTENSIONS:
        return Video(ContainerReader(path), path)
    if suffix in IMAGE_EXTENSIONS:
        return Video(ImageFilesReader([path]), path)
    raise VideoReadError(f"{path}: unsupported file type {suffix or '(no extension)'}; supported: {_supported()}")


def _stack(path: Path):
    """The module reading the planes of a TIFF or Zarr stack at `path` (None: another kind of file)."""
    if is_zarr(path):
        return zarrstack
    if path.suffix.lower() in TIFF_EXTENSIONS and path.is_file():
        return tiffstack
    return None


def channel_count(path: str | os.PathLike) -> int | None:
    """The number of channels to choose from in a TIFF or Zarr stack (`open_video(path, channel=K)`);
    None where there is none to choose (one channel, RGB, or another kind of file)."""
    stack = _stack(Path(path))
    return stack.channel_count(Path(path)) if stack else None


def z_count(path: str | os.PathLike) -> int | None:
    """The number of z planes to choose from in a TIFF or Zarr stack (`open_video(path, z=K)`); None
    where there is none to choose."""
    stack = _stack(Path(path))
    return stack.z_count(Path(path)) if stack else None


def as_video(obj: Any) -> Video:
    """A ``Video`` from a path, an existing ``Video``, or a ``(T, H, W[, 3])`` array-like.

    Array-likes (numpy, dask, zarr, ...) are read one frame at a time with ``np.asarray``.
    """
    if isinstance(obj, Video):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return open_video(obj)
    if not hasattr(obj, "shape") or not hasattr(obj, "dtype"):
        obj = np.asarray(obj)
    return Video(ArrayReader(obj), None)


def mirrored(video: Any) -> Video:
    """The left-right mirror image of a video (anything ``as_video`` takes), read lazily. It has no
    source file, so the embedding cache keys it on its pixels, apart from the original."""
    return Video(MirrorReader(as_video(video)._reader), None)
