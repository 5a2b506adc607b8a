"""npe2 writers of Labels layers: a folder of indexed PNGs (DAVIS palette), one multi-page TIFF,
or a Cell Tracking Challenge result folder (`maskTTT.tif` + `res_track.txt`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import write_ctc, write_png_labels, write_tiff_labels


def _volume(data) -> np.ndarray:
    array = np.asarray(data)
    return array[None] if array.ndim == 2 else array


def write_labels_png(path: str, data, meta: dict) -> list[str]:
    """One indexed PNG per frame (`00000.png`, ...) in the folder `path`."""
    return [str(p) for p in write_png_labels(_volume(data), Path(path))]


def write_labels_tiff(path: str, data, meta: dict) -> list[str]:
    """One multi-page TIFF (uint16, or uint32 for more objects). napari's save dialog has already
    asked before replacing an existing file."""
    return [str(write_tiff_labels(_volume(data), Path(path), overwrite=True))]


def write_labels_ctc(path: str, data, meta: dict) -> list[str]:
    """A Cell Tracking Challenge result in the folder `path` (e.g. `01_RES`)."""
    folder = Path(path)
    write_ctc(_volume(data), folder)
    return sorted(str(p) for p in folder.iterdir())
