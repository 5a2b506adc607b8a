"""npe2 reader: videos, frame folders, (OME-)TIFF stacks and sequences with ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import VosEmbedError


def lazy_array(video):
    """A dask array over a `Video` that decodes a frame only when napari shows it."""
    import dask
    import dask.array as da

    frames = [da.from_delayed(dask.delayed(video.__getitem__)(t), video.shape[1:], video.dtype)
              for t in range(len(video))]
    return da.stack(frames)


def _is_sequence(path: Path) -> bool:
    return (path / "frames").is_dir() and (path / "masks").is_dir() or path.parent.name == "480p"


def get_reader(path):
    """Return a reader for `path` when it is something we read, else None (npe2 protocol)."""
    if isinstance(path, list):
        return None
    p = Path(path)
    if not p.exists():
        return None
    return _read


def _read(path):
    from ..io import open_video, read_sequence

    p = Path(path)
    try:
        if p.is_dir() and _is_sequence(p):
            seq = read_sequence(p)
            layers = [_image_layer(seq.video, seq.name)]
            masks = [seq.masks[t] for t in range(len(seq.masks))]
            if any(m is not None for m in masks):
                shape = seq.video.shape[1:3]
                gt = np.stack([m if m is not None else np.zeros(shape, np.int32) for m in masks])
                layers.append((gt, {"name": f"{seq.name} ground truth", "opacity": 0.5}, "labels"))
            return layers
        video = open_video(p)
    except VosEmbedError as err:
        raise ValueError(str(err)) from err
    return [_image_layer(video, p.stem)]


def _image_layer(video, name):
    rgb = len(video.shape) == 4
    meta = {"name": name, "rgb": rgb}
    if video.dtype != np.uint8:
        meta["contrast_limits"] = [float(v) for v in video.intensity_range()]
    return (lazy_array(video), meta, "image")
