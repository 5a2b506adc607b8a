"""Writers of label volumes: indexed PNGs (DAVIS palette), multi-page TIFF, Cell Tracking Challenge, and
Zarr arrays that a run writes into frame by frame.

Every file is written to a temporary name beside it and moved into place once complete, so a
crash, a cancelled job or a full disk never leaves a half-written file or damages the file it was
to replace."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from ..errors import VosEmbedError


def davis_palette(n: int = 256) -> np.ndarray:
    """The DAVIS / PASCAL VOC colour map: ``(n, 3)`` uint8, 0 black, 1 (128, 0, 0), 2 (0, 128, 0), ..."""
    palette = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= (c & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = r, g, b
    return palette


def _labels(labels: Any) -> np.ndarray:
    """Validate a ``(T, H, W)`` volume of non-negative integer ids (any, not contiguous)."""
    array = np.asarray(labels)
    if array.ndim != 3 or 0 in array.shape:
        raise VosEmbedError(f"labels must be a (T, H, W) volume of at least one pixel, got shape {array.shape}")
    if array.dtype.kind == "b":
        return array.astype(np.uint8)
    if array.dtype.kind not in "iuf":
        raise VosEmbedError(f"labels must be integer ids, got dtype {array.dtype}")
    if array.dtype.kind == "f" and not (np.isfinite(array).all() and np.array_equal(array, np.round(array))):
        raise VosEmbedError("labels must be integer ids, found fractional or non-finite values")
    if array.size and array.min() < 0:
        raise VosEmbedError(f"labels must be non-negative, found {array.min()}")
    return array


@contextlib.contextmanager
def atomic(path: Path):
    """Write `path` through a temporary file beside it, moved into place once complete: a crash or
    a full disk mid-write leaves the file as it was (or absent), never half-written. Yields the
    temporary path; an OSError becomes a VosEmbedError naming the file."""
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        yield partial
        os.replace(partial, path)
    except OSError as err:
        raise VosEmbedError(f"{path}: could not be written ({err.strerror or err}); "
                            f"{'the existing file is unchanged' if path.exists() else 'nothing was written'}") from err
    finally:
        partial.unlink(missing_ok=True)


def _check_folder(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise VosEmbedError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise VosEmbedError(
            f"{out_dir}: the output folder is not empty; choose another folder or pass overwrite=True"
        )
    out_dir.mkdir(parents=True, exist_ok=True)


def write_png_labels(
    labels: Any,
    out_dir: str | os.PathLike,
    frame_names: list[str] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write one indexed PNG (DAVIS palette) per frame, named ``<frame name>.png``; return the paths.

    Ids must lie in 0..255 (use ``write_tiff_labels`` for more objects).
    """
    array = _labels(labels)
    out_dir = Path(out_dir)
    names = frame_names if frame_names is not None else [f"{t:05d}" for t in range(len(array))]
    if len(names) != len(array):
        raise VosEmbedError(f"{len(names)} frame names for {len(array)} label frames")
    if array.size and array.max() > 255:
        raise VosEmbedError(
            f"label id {int(array.max())} does not fit an indexed PNG (ids 0..255); "
            "write a TIFF with write_tiff_labels instead"
        )
    _check_folder(out_dir, overwrite)
    palette = davis_palette().ravel().tolist()
    paths = []
    for frame, name in zip(array, names, strict=True):
        image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
        image.putpalette(palette)
        path = out_dir / f"{name}.png"
        with atomic(path) as partial:
            image.save(partial, format="PNG")
        paths.append(path)
    return paths


def write_tiff_labels(labels: Any, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a ``(T, H, W)`` label volume as one multi-page TIFF (uint16, or uint32 if needed)."""
    array = _labels(labels)
    path = Path(path)
    if path.exists() and not overwrite:
        raise VosEmbedError(f"{path}: the file exists; choose another name or pass overwrite=True")
    top = int(array.max())
    if top > np.iinfo(np.uint32).max:
        raise VosEmbedError(f"label id {top} does not fit a TIFF's 32-bit labels (ids 0..{np.iinfo(np.uint32).max})")
    dtype = np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic(path) as partial:
        tifffile.imwrite(partial, array.astype(dtype), photometric="minisblack", compression="zlib",
                         metadata={"axes": "TYX"})
    return path


def _runs(frames: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs ``(begin, end)`` of sorted frame indices."""
    runs: list[list[int]] = []
    for t in frames:
        if runs and t == runs[-1][1] + 1:
            runs[-1][1] = t
        else:
            runs.append([t, t])
    return [(begin, end) for begin, end in runs]


def ctc_tracks(labels: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Split ids that disappear and reappear into continuous tracks.

    Returns the relabelled volume and the tracks ``(id, begin, end, parent)``, sorted by id: each
    later segment of an id gets a new id (above every existing one) whose parent is the segment
    before it.
    """
    present: dict[int, list[int]] = {}
    for t, frame in enumerate(labels):
        for label in np.unique(frame):
            if label:
                present.setdefault(int(label), []).append(t)
    next_id = max(present, default=0) + 1
    tracks = []
    out = labels.copy()
    for label in sorted(present):
        parent = 0
        for k, (begin, end) in enumerate(_runs(present[label])):
            track_id = label
            if k:
                track_id, next_id = next_id, next_id + 1
                for t in range(begin, end + 1):
                    out[t][labels[t] == label] = track_id
            tracks.append((track_id, begin, end, parent))
            parent = track_id
    return out, sorted(tracks)


def write_ctc(labels: Any, out_dir: str | os.PathLike, overwrite: bool = False) -> list[tuple[int, int, int, int]]:
    """Write a Cell Tracking Challenge result: ``maskTTT.tif`` (uint16) and ``res_track.txt``.

    Ids that disappear and reappear become separate tracks (see ``ctc_tracks``). Returns the tracks.
    """
    array = _labels(labels).astype(np.int64)
    out_dir = Path(out_dir)
    relabelled, tracks = ctc_tracks(array)
    if relabelled.size and relabelled.max() > np.iinfo(np.uint16).max:
        raise VosEmbedError(
            f"{int(relabelled.max())} tracks do not fit the Cell Tracking Challenge's 16-bit masks"
        )
    _check_folder(out_dir, overwrite)
    digits = 3 if len(relabelled) <= 1000 else 4
    for t, frame in enumerate(relabelled):
        with atomic(out_dir / f"mask{t:0{digits}d}.tif") as partial:
            tifffile.imwrite(partial, frame.astype(np.uint16))
    lines = "".join(f"{track} {begin} {end} {parent}\n" for track, begin, end, parent in tracks)
    with atomic(out_dir / "res_track.txt") as partial:  # last: a result without it is incomplete
        partial.write_text(lines)
    return tracks


@contextlib.contextmanager
def zarr_labels(path: str | os.PathLike, shape: tuple[int, int, int], max_id: int, overwrite: bool = False):
    """A Zarr array (v3, one chunk per frame, dimensions t, y, x) for a run to write its labels into
    frame by frame (`segment(..., out=)`), so that a long video's labels are never all in memory.
    Its dtype holds ids up to `max_id` (uint8, uint16 or uint32). It is written under a temporary
    name beside `path` and moved into place when the block ends without error: a crash, a
    cancelled run or a full disk leaves `path` as it was (or absent). The array yielded reads and
    writes inside the block only; open `path` afterwards."""
    import zarr

    path = Path(path)
    if path.exists() and not overwrite:
        raise VosEmbedError(f"{path}: exists; choose another name or pass overwrite=True")
    if max_id > np.iinfo(np.uint32).max:
        raise VosEmbedError(f"label id {max_id} does not fit 32-bit labels (ids 0..{np.iinfo(np.uint32).max})")
    dtype = next(d for d in (np.uint8, np.uint16, np.uint32) if max_id <= np.iinfo(d).max)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield zarr.create_array(str(partial), shape=shape, chunks=(1, *shape[1:]), dtype=dtype, fill_value=0,
                                dimension_names=("t", "y", "x"))
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            partial.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            partial.rename(path)
    except OSError as err:
        raise VosEmbedError(f"{path}: could not be written ({err.strerror or err}); "
                            f"{'the existing labels are unchanged' if path.exists() else 'nothing was written'}"
                            ) from err
    finally:
        shutil.rmtree(partial, ignore_errors=True)
