"""Objects of a label volume as tracks: centroids for napari's Tracks layer, and GEFF graphs.

An object is one id of a ``(T, H, W)`` label volume (0 = background). It keeps its id as its
track id, also over frames where it is missing: napari draws a straight line across such a gap,
and the GEFF links the detections on either side of it by one edge (a gap-closing edge).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VosEmbedError
from .writers import _check_folder, _labels


def _detections(array: np.ndarray) -> dict[str, np.ndarray]:
    """One row per object per frame: ``label``, ``t``, ``y``, ``x`` (centroid), ``area``; by label, then t."""
    columns: dict[str, list[np.ndarray]] = {"label": [], "t": [], "y": [], "x": [], "area": []}
    height, width = array.shape[1:]
    ys = np.repeat(np.arange(height, dtype=np.float64), width)
    xs = np.tile(np.arange(width, dtype=np.float64), height)
    for t, frame in enumerate(array):
        flat = np.asarray(frame).ravel().astype(np.int64, copy=False)
        top = int(flat.max(initial=0))
        if top <= flat.size:
            ids = np.arange(top + 1)
        else:  # ids far above the pixel count: number them densely so that bincount stays small
            ids, flat = np.unique(flat, return_inverse=True)
        area = np.bincount(flat, minlength=len(ids))
        keep = (area > 0) & (ids > 0)
        columns["label"].append(ids[keep])
        columns["t"].append(np.full(keep.sum(), t, np.int64))
        columns["y"].append(np.bincount(flat, ys, len(ids))[keep] / area[keep])
        columns["x"].append(np.bincount(flat, xs, len(ids))[keep] / area[keep])
        columns["area"].append(area[keep])
    rows = {name: np.concatenate(parts) if parts else np.empty(0, np.float64 if name in ("y", "x") else np.int64)
            for name, parts in columns.items()}
    order = np.lexsort((rows["t"], rows["label"]))
    return {name: values[order] for name, values in rows.items()}


def object_tracks(labels: Any) -> np.ndarray:
    """The objects' centroids as napari Tracks data: ``(N, 4)`` float rows ``(track_id, t, y, x)``.

    One row per object per frame where it is present, sorted by track id then t; the track id is
    the object's label, also after frames where the object is missing (napari draws a line across
    the gap). ``viewer.add_tracks(object_tracks(labels), features=track_features(labels))``.
    """
    rows = _detections(_labels(labels))
    return np.column_stack([rows["label"], rows["t"], rows["y"], rows["x"]]).astype(np.float64)


def track_features(labels: Any) -> dict[str, np.ndarray]:
    """Per-row features of ``object_tracks(labels)``: ``{"area": pixels of the object on that frame}``."""
    return {"area": _detections(_labels(labels))["area"]}


def _is_geff(path: Path) -> bool:
    import zarr

    try:
        return "geff" in zarr.open_group(str(path), mode="r").attrs
    except zarr.errors.GroupNotFoundError:
        return False


def write_geff(labels: Any, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the objects' tracks as a GEFF (Graph Exchange File Format) zarr folder; return its path.

    Nodes: one per object per frame, with ``t``, ``y``, ``x`` (centroid, pixels), ``area`` (pixels),
    ``track_id`` (the tracklet: the object's label) and ``seg_id`` (its value in ``labels``). Directed
    edges link each object's consecutive detections, over frames where it is missing too. Read it
    back with ``geff.read(path)`` (networkx) or ``geff.GeffReader(path)``.
    """
    from geff.core_io import write_arrays
    from geff_spec import Axis, DisplayHint, GeffMetadata, PropMetadata

    rows = _detections(_labels(labels))
    path = Path(path)
    _check_folder(path, overwrite)
    if not any(path.iterdir()):
        path.rmdir()  # geff makes its own folder
    elif not _is_geff(path):
        raise VosEmbedError(f"{path}: the folder holds files but no GEFF; choose another folder")
    node_ids = np.arange(len(rows["label"]), dtype=np.uint64)
    same = rows["label"][1:] == rows["label"][:-1]
    edges = np.column_stack([node_ids[:-1][same], node_ids[1:][same]])
    props = {"t": rows["t"], "y": rows["y"], "x": rows["x"], "area": rows["area"],
             "track_id": rows["label"], "seg_id": rows["label"]}
    described = {
        "area": "object area in pixels",
        "track_id": "tracklet id: the object's label, the same over all its frames",
        "seg_id": "the object's value in the label volume",
    }
    metadata = GeffMetadata(
        directed=True,
        axes=[Axis(name="t", type="time", unit="frame"), Axis(name="y", type="space", unit="pixel"),
              Axis(name="x", type="space", unit="pixel")],
        node_props_metadata={name: PropMetadata(identifier=name, dtype="int64", description=text)
                             for name, text in described.items()},
        edge_props_metadata={},
        track_node_props={"tracklet": "track_id"},
        display_hints=DisplayHint(display_horizontal="x", display_vertical="y", display_time="t"),
    )
    write_arrays(str(path), node_ids, {name: {"values": values, "missing": None} for name, values in props.items()},
                 edges, {}, metadata, overwrite=overwrite)
    return path
