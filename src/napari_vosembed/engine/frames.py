"""Arrays with one entry per frame, whose resident memory stays bounded however long the video.

A memory-mapped file counts in a process's resident memory for every page it has touched, until
the mapping is gone: reading a 2,000-frame embedding cache once, front to back, would make it all
resident. A `FrameArray` counts the bytes of the frames read and written through it and, every
`RELEASE_BYTES`, hands its pages back to the kernel (`madvise(MADV_DONTNEED)`: the data stay in
the file and the page cache, and come back on the next access), so what it holds resident is at
most about `RELEASE_BYTES`. The embedding cache's arrays are FrameArrays, and so is any per-frame
state a session builds that grows with the video (`FrameArray.scratch`: in memory while small, else
in a temporary file on disk). A run's labels go to a `label_volume`, which may be on disk too.
"""

from __future__ import annotations

import math
import mmap
import tempfile
from pathlib import Path

import numpy as np

from ..errors import VosEmbedError

#: Bytes read or written through a memory-mapped `FrameArray` after which its pages are released.
RELEASE_BYTES = 16 * 2**20
#: A `scratch` array larger than this lives in a file on disk instead of in memory.
IN_MEMORY_BYTES = 256 * 2**20


def release(array: np.ndarray) -> None:
    """Drop the resident pages of a memory-mapped array (nothing for an array in memory)."""
    mapping = getattr(array, "_mmap", None)
    if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


class FrameArray:
    """An array (in memory or memory-mapped) indexed frame first; see the module docstring.

    Indexing reads and writes as numpy does (`a[t]`, `a[frames, rows, cols]`, `a[batch] = x`); what
    is read is a copy when the array is mapped, so it stays valid after the pages are released."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self.mapped = isinstance(array, np.memmap)
        self._touched = 0

    @classmethod
    def scratch(cls, shape: tuple[int, ...], dtype, directory: Path | None = None) -> FrameArray:
        """A new array for per-frame state: in memory up to `IN_MEMORY_BYTES`, else mapped from a
        temporary file in `directory` (default: the system's), deleted when the array is."""
        if math.prod(shape) * np.dtype(dtype).itemsize <= IN_MEMORY_BYTES:
            return cls(np.empty(shape, dtype))
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory, prefix="vosembed-frames-") as f:
            return cls(np.memmap(f, dtype=dtype, mode="w+", shape=shape))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    @property
    def ndim(self) -> int:
        return self.array.ndim

    @property
    def nbytes(self) -> int:
        return self.array.nbytes

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index) -> np.ndarray:
        if not self.mapped:
            return self.array[index]
        values = np.array(self.array[index])
        self._count(index)
        return values

    def __setitem__(self, index, values) -> None:
        self.array[index] = values
        if self.mapped:
            self._count(index)

    def _count(self, index) -> None:
        """Count the bytes of the frames `index` reaches (a part of a frame touches pages all over it)."""
        first = index[0] if isinstance(index, tuple) else index
        frames = len(range(*first.indices(len(self.array)))) if isinstance(first, slice) else np.size(first)
        self._touched += frames * (self.array.nbytes // max(len(self.array), 1))
        if self._touched >= RELEASE_BYTES:
            self.release()

    def release(self) -> None:
        """Hand the resident pages back now (see the module docstring)."""
        if self.mapped:
            self.array.flush()
            release(self.array)
        self._touched = 0


def label_volume(out, n: int, frame_shape: tuple[int, int], max_value: int):
    """Where a run writes the labels of an `n`-frame video: `out` when given, any (T, H, W) integer
    array that takes `out[t] = frame` (a Zarr array stores them on disk frame by frame, so a long
    video's labels are never all in memory; only the frames the run labels are written), else a new
    array of zeros, uint8 when the ids fit. `max_value`: the largest id the run writes."""
    if out is None:
        return np.zeros((n, *frame_shape), np.uint8 if max_value < 256 else np.int32)
    shape, dtype = tuple(out.shape), np.dtype(out.dtype)
    if shape != (n, *frame_shape):
        raise VosEmbedError(f"the output volume has shape {shape}; this video's labels need "
                            f"({n}, {frame_shape[0]}, {frame_shape[1]})")
    if dtype.kind not in "iu" or np.iinfo(dtype).max < max_value:
        raise VosEmbedError(f"the output volume's dtype {dtype} cannot hold label {max_value}; use an integer "
                            "dtype that can (uint16, int32)")
    return out
