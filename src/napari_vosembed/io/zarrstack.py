"""Zarr arrays and OME-Zarr images (NGFF 0.4 in Zarr v2, 0.5 in Zarr v3) read frame by frame: only
the chunks of the frame asked for are read, so a stack of any length opens at once.

A time-lapse is T x Y x X (grayscale), T x Y x X x 3 (RGB), or has a channel and/or a z axis of
which one is chosen (``channel=``, ``z=``). Axes come from the OME metadata, the array's dimension
names (Zarr v3, or xarray's ``_ARRAY_DIMENSIONS``), else from the number of dimensions: YX, TYX,
TCYX (TYXC with 3 or 4 last), TCZYX. An OME-Zarr image opens at its full resolution.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ..errors import VideoReadError
from ._files import check_frame_size, describe, native

#: Axes by number of dimensions where the file names none (the OME order, t c z y x).
_DEFAULT_AXES = {2: "yx", 3: "tyx", 4: "tcyx", 5: "tczyx"}


def is_zarr(path: Path) -> bool:
    """Whether `path` is a Zarr store (v2 or v3): a folder with Zarr metadata."""
    return path.is_dir() and any((path / name).is_file() for name in ("zarr.json", ".zarray", ".zgroup"))


def _image(path: Path):
    """(array, axes): the full-resolution array of an OME-Zarr image, or the store's one array."""
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # any parser error: see _files.describe()
        raise VideoReadError(f"{path}: not a readable Zarr store ({describe(exc)})") from exc
    if isinstance(node, zarr.Array):
        return node, _named_axes(node)
    attrs = dict(node.attrs)
    ome = attrs.get("ome")
    multiscales = attrs.get("multiscales") or (ome.get("multiscales") if isinstance(ome, dict) else None)
    if multiscales:
        try:
            image = multiscales[0]
            axes = "".join(str(a["name"] if isinstance(a, dict) else a)[0].lower() for a in image.get("axes", []))
            array = node[image["datasets"][0]["path"]]
        except Exception as exc:  # any parser error: see _files.describe()
            raise VideoReadError(f"{path}: the OME-Zarr metadata or full resolution cannot be read "
                                 f"({describe(exc)})") from exc
        return array, axes or _named_axes(array)
    arrays = sorted(name for name, _ in node.arrays())
    if len(arrays) != 1:
        raise VideoReadError(f"{path}: a Zarr group with {len(arrays)} arrays ({', '.join(arrays) or 'none'}) and no "
                             "OME metadata; open one of its arrays (the folder PATH/NAME)")
    array = node[arrays[0]]
    return array, _named_axes(array)


def channel_count(path: Path) -> int | None:
    """The number of channels of a Zarr image to choose from (None: no channel to choose, e.g. one
    channel or interleaved RGB)."""
    array, axes = _image(path)
    if "c" not in axes or array.shape[axes.index("c")] == 1 or _rgb(axes, array.shape):
        return None
    return array.shape[axes.index("c")]


def z_count(path: Path) -> int | None:
    """The number of z planes of a Zarr image to choose from (None: one or none)."""
    array, axes = _image(path)
    return array.shape[axes.index("z")] if "z" in axes and array.shape[axes.index("z")] > 1 else None


def _rgb(axes: str, shape: tuple[int, ...]) -> bool:
    """Whether the c axis holds the colours of RGB(A) frames: 3 or 4 of them, after y and x."""
    return axes.endswith("yxc") and shape[-1] in (3, 4)


def _named_axes(array) -> str:
    names = getattr(array.metadata, "dimension_names", None) or array.attrs.get("_ARRAY_DIMENSIONS")
    if names and all(names):
        return "".join(str(name)[0].lower() for name in names)
    if array.ndim == 4 and array.shape[-1] in (3, 4):
        return "tyxc"
    return _DEFAULT_AXES.get(array.ndim, "")


class ZarrReader:
    """Frame reader of a Zarr array or OME-Zarr image; `channel` / `z`: the plane to read where the
    image has several."""

    def __init__(self, path: Path, channel: int | None = None, z: int | None = None):
        self.path = path
        self._lock = threading.Lock()
        self._array, axes = _image(path)
        shape = tuple(self._array.shape)
        if len(axes) != len(shape) or not {"y", "x"} <= set(axes) or len(set(axes)) != len(axes):
            raise VideoReadError(f"{path}: an array of shape {shape} with axes {axes or 'unknown'!r}; a time-lapse "
                                 "needs y and x axes (and t, c, z), one letter each")
        self._rgb = False
        index: list[int | slice] = []
        for axis, size in zip(axes, shape, strict=True):
            if axis in "yxt":
                index.append(slice(None))
            elif axis == "c" and channel is None and _rgb(axes, shape):
                self._rgb = True  # interleaved RGB(A): the frame's colours
                index.append(slice(0, 3))
            elif axis in "cz":
                chosen, what, option = (channel, "channel", "channel") if axis == "c" else (z, "z plane", "z")
                if chosen is None and size > 1:
                    raise VideoReadError(f"{path}: the image has {size} {what}s (axes {axes}, shape {shape}); choose "
                                         f"one: open_video(path, {option}=K) or `--{option} K`")
                chosen = 0 if chosen is None else chosen
                if not 0 <= chosen < size:
                    raise VideoReadError(f"{path}: {what} {chosen} does not exist; the image has {what}s 0 to "
                                         f"{size - 1}")
                index.append(chosen)
            elif size == 1:
                index.append(0)
            else:
                raise VideoReadError(f"{path}: axis {axis!r} of length {size} is not one a time-lapse has "
                                     "(t, c, z, y, x)")
        for name, value, axis in (("channel", channel, "c"), ("z", z, "z")):
            if value is not None and axis not in axes:
                raise VideoReadError(f"{path}: {name}={value} was given but the image has no {axis} axis (axes {axes})")
        self._index = index
        self._time = axes.index("t") if "t" in axes else None
        rest = [a for a, i in zip(axes, index, strict=True) if isinstance(i, slice) and a != "t"]
        self._perm = [rest.index(a) for a in "yxc" if a in rest]  # a frame's axes as y, x[, colour]
        self.n_frames = shape[self._time] if self._time is not None else 1
        height, width = shape[axes.index("y")], shape[axes.index("x")]
        check_frame_size(path, height, width)
        self.dtype = native(np.empty(0, self._array.dtype)).dtype
        self.frame_shape = (height, width, 3) if self._rgb else (height, width)
        self.frame_names = [f"{t:05d}" for t in range(self.n_frames)]

    def read(self, t: int) -> np.ndarray:
        """Frame ``t``: only its chunks are read."""
        index = list(self._index)
        if self._time is not None:
            index[self._time] = t
        with self._lock:
            try:
                frame = np.asarray(self._array[tuple(index)])
            except Exception as exc:  # any parser error: see _files.describe()
                raise VideoReadError(f"{self.path}: cannot read frame {t} ({describe(exc)})") from exc
        return native(np.ascontiguousarray(frame.transpose(self._perm)))
