"""napari layers <-> the library: videos from Image layers, prompts from prompt layers, the
prompt layers the widget makes, undo-able writes into Labels layers, and the Shapes layer of the
boxes a method tracked.

Colours follow the DAVIS palette (`napari_vosembed.io.davis_palette`): object 1 is dark red,
2 green, 3 olive, ... in points, boxes, masks and the output alike, as in the PNGs we write.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import PromptError, VosEmbedError
from ..io import as_video, davis_palette, open_video
from ..prompts import (
    SCRIBBLE_BACKGROUND,
    Prompts,
    prompts_from_labels_layer,
    prompts_from_points_layer,
    prompts_from_rectangles,
)

#: Image layer metadata key holding the file or folder a layer was read from (set by our reader).
SOURCE_KEY = "vosembed_source"
#: Layer metadata: the channel / z plane of the source our reader opened ({"channel": K, "z": K}).
PLANE_KEY = "vosembed_plane"
#: Layer metadata key marking the layers the widget made, with their role.
ROLE_KEY = "vosembed_role"

PALETTE = davis_palette()
#: Colour of negative (background, label 0) clicks: the palette's black would vanish on dark video.
NEGATIVE_COLOR = (0.1, 0.1, 0.1, 1.0)


def label_color(label: int) -> tuple[float, float, float, float]:
    """RGBA in [0, 1] of object `label` (DAVIS palette; 0 gets `NEGATIVE_COLOR`)."""
    if label == 0:
        return NEGATIVE_COLOR
    r, g, b = PALETTE[int(label) % 256] / 255.0
    return (float(r), float(g), float(b), 1.0)


def label_hex(label: int) -> str:
    """`label_color` as a hex string (what Shapes colours accept)."""
    r, g, b, _ = label_color(label)
    return "#{:02x}{:02x}{:02x}".format(*(int(round(255 * v)) for v in (r, g, b)))


def label_color_cycle() -> dict[int, tuple[float, float, float, float]]:
    """Object id -> colour, for a Points / Shapes colour cycle keyed by the `label` feature."""
    return {i: label_color(i) for i in range(256)}


def labels_colormap():
    """A napari label colormap with the DAVIS colours (0 transparent)."""
    from napari.utils.colormaps import DirectLabelColormap

    colors = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)}
    colors.update({i: label_color(i) for i in range(1, 256)})
    return DirectLabelColormap(color_dict=colors)


# -- images ----------------------------------------------------------------------------------------

def video_shape(image) -> tuple[int, int, int]:
    """(T, H, W) of an Image layer that holds a time series, else a clear `VosEmbedError`."""
    shape = tuple(int(s) for s in image.data.shape)
    spatial = shape[:-1] if image.rgb else shape
    if image.rgb and shape[-1] not in (3, 4):
        raise VosEmbedError(f"image layer {image.name!r}: RGB with {shape[-1]} channels is not supported")
    if len(spatial) == 2:
        raise VosEmbedError(
            f"image layer {image.name!r} is a single 2D image of shape {shape}; the widget segments "
            "time series (T, Y, X) or (T, Y, X, RGB). Add a time axis first, e.g. "
            "viewer.add_image(image[None])."
        )
    if len(spatial) != 3:
        raise VosEmbedError(
            f"image layer {image.name!r} has shape {shape}: expected (T, Y, X) or (T, Y, X, RGB). "
            "Split channels or z planes into separate layers first."
        )
    return spatial


class _RGBView:
    """The first three channels of an RGBA array-like, frame by frame."""

    def __init__(self, array):
        self._array = array
        self.shape = (*array.shape[:-1], 3)
        self.dtype = array.dtype

    def __getitem__(self, index):
        return np.asarray(self._array[index])[..., :3]


def image_video(image):
    """A lazy `Video` of an Image layer. A layer our reader opened re-opens its file (so the
    embedding cache keys on the file, and the widget's thread never shares a decoder with napari's
    display); any other layer is read frame by frame from its data."""
    shape = video_shape(image)
    source = image.metadata.get(SOURCE_KEY)
    if source:
        try:
            video = open_video(source, **image.metadata.get(PLANE_KEY, {}))
        except VosEmbedError:
            video = None
        if video is not None and tuple(video.shape[:3]) == shape:
            return video
    data = image.data
    if isinstance(data, (list, tuple)):  # multiscale: segment the full resolution
        data = data[0]
    if image.rgb and data.shape[-1] == 4:
        data = _RGBView(data)
    return as_video(data)


def frame_in_view(viewer, layer) -> int:
    """The frame (first data axis of `layer`) the viewer shows now."""
    position = np.asarray(viewer.dims.point, dtype=float)
    coords = layer.world_to_data(position[-layer.ndim :] if len(position) >= layer.ndim else position)
    n = layer.data.shape[0] if not isinstance(layer.data, list) else len(layer.data)
    return int(np.clip(np.round(coords[0]), 0, max(n - 1, 0)))


def _same_space(layer, image) -> bool:
    return (
        layer.ndim == 3
        and np.allclose(layer.scale, image.scale[-3:])
        and np.allclose(layer.translate, image.translate[-3:])
        and np.allclose(layer.affine.affine_matrix, np.eye(4))
        and np.allclose(image.affine.affine_matrix[-4:, -4:], np.eye(4))
        and np.allclose(np.asarray(layer.rotate), np.eye(3))
        and np.allclose(np.asarray(image.rotate)[-3:, -3:], np.eye(3))
    )


def _to_image_coords(layer, image, coords: np.ndarray) -> np.ndarray:
    """(N, 3) data coordinates of `layer` -> data coordinates (t, y, x) of `image`."""
    coords = np.asarray(coords, dtype=float).reshape(-1, layer.ndim)
    if layer.ndim != 3:
        raise PromptError(
            f"layer {layer.name!r} has {layer.ndim} dimensions; prompt layers need 3 (frame, y, x). "
            "Make one with the widget's New buttons."
        )
    if _same_space(layer, image):
        return coords
    out = [np.asarray(image.world_to_data(layer.data_to_world(c)))[-3:] for c in coords]
    return np.asarray(out, dtype=float).reshape(-1, 3)


# -- prompts from layers ---------------------------------------------------------------------------

def _labels_feature(layer, n: int, default=None) -> np.ndarray | None:
    features = layer.features
    if "label" in features:
        return np.asarray(features["label"]).astype(np.int64)
    return default


def points_prompts(points, image) -> Prompts:
    """Prompts from a Points layer; the `label` feature is the object id (0 = negative click),
    and points without one count as object 1."""
    data = _to_image_coords(points, image, points.data)
    labels = _labels_feature(points, len(data), np.ones(len(data), np.int64))
    return prompts_from_points_layer(data, labels)


def box_prompts(shapes, image) -> Prompts:
    """Prompts from the rectangles of a Shapes layer (object id from the `label` feature, else
    1, 2, ... in drawing order)."""
    kinds = list(shapes.shape_type)
    others = sorted({k for k in kinds if k != "rectangle"})
    if others:
        raise PromptError(
            f"layer {shapes.name!r} holds {', '.join(others)} shapes; only rectangles are boxes "
            "(delete the others, or draw boxes in a layer of their own)"
        )
    rects = [_to_image_coords(shapes, image, corners) for corners in shapes.data]
    labels = _labels_feature(shapes, len(rects))
    return prompts_from_rectangles(rects, None if labels is None else labels)


def mask_prompts(labels_layer, image, kind: str = "mask") -> Prompts:
    """Prompts from a Labels layer: each painted frame is a dense mask (`kind="mask"`) or a
    scribble (`kind="scribble"`: 0 = not annotated, 255 = background)."""
    shape = video_shape(image)
    data = labels_layer.data
    if tuple(data.shape) != shape:
        raise PromptError(
            f"mask layer {labels_layer.name!r} has shape {tuple(data.shape)}, but the image "
            f"{image.name!r} is {shape} (T, Y, X); paint in a layer of the image's shape "
            "(the widget's New button makes one)"
        )
    return prompts_from_labels_layer(data, kind)


def merge(*parts: Prompts) -> Prompts:
    """One `Prompts` holding everything in `parts`."""
    out = Prompts()
    for p in parts:
        out.points += p.points
        out.boxes += p.boxes
        out.masks.update(p.masks)
        for frame, image in p.scribbles.items():
            out.scribbles[frame] = image
    return out


# -- prompt layers the widget makes ----------------------------------------------------------------

def _size(shape: tuple[int, int, int], fraction: float, least: float) -> float:
    return max(least, round(fraction * max(shape[1:]), 1))


def new_points_layer(viewer, image, object_id: int = 1):
    """A Points layer for clicks on `image`, in add mode, with an object id feature `label`."""
    shape = video_shape(image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "label looks categorical": it is
        layer = viewer.add_points(
            np.zeros((0, 3)),
            ndim=3,
            name=f"{image.name} clicks",
            features={"label": np.zeros(0, np.int64)},
            feature_defaults={"label": int(object_id)},
            face_color="label",
            face_color_cycle=label_color_cycle(),
            border_color="white",
            border_width=0.15,
            size=_size(shape, 1 / 40, 4),
            out_of_slice_display=False,
            scale=image.scale[-3:],
            translate=image.translate[-3:],
            metadata={ROLE_KEY: "clicks"},
        )
    layer.mode = "add"
    return layer


def new_boxes_layer(viewer, image, object_id: int = 1):
    """A Shapes layer for boxes on `image`, in rectangle mode, with an object id feature `label`."""
    shape = video_shape(image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        layer = viewer.add_shapes(
            None,
            ndim=3,
            name=f"{image.name} boxes",
            features={"label": np.zeros(0, np.int64)},
            feature_defaults={"label": int(object_id)},
            edge_color=label_hex(object_id),  # Shapes take no colour-by-value map: the widget
            face_color="transparent",         # sets the current edge colour per object id
            edge_width=_size(shape, 1 / 100, 2),
            scale=image.scale[-3:],
            translate=image.translate[-3:],
            metadata={ROLE_KEY: "boxes"},
        )
    layer.mode = "add_rectangle"
    return layer


def new_mask_layer(viewer, image, object_id: int = 1, kind: str = "mask"):
    """An empty Labels layer of the image's (T, Y, X) shape to paint masks or scribbles in."""
    shape = video_shape(image)
    layer = viewer.add_labels(
        np.zeros(shape, np.uint8),
        name=f"{image.name} {'scribbles' if kind == 'scribble' else 'masks'}",
        colormap=labels_colormap(),
        opacity=0.6,
        scale=image.scale[-3:],
        translate=image.translate[-3:],
        metadata={ROLE_KEY: kind},
    )
    layer.brush_size = _size(shape, 1 / 30, 3)
    layer.selected_label = int(object_id)
    layer.mode = "paint"
    return layer


def new_output_layer(viewer, image, dtype=np.uint8):
    """An empty Labels layer "<image> segmentation" right above the image; the layer that was
    active stays active (so clicking goes on where it was)."""
    from napari.layers import Labels

    shape = video_shape(image)
    layer = Labels(
        np.zeros(shape, dtype),
        name=f"{image.name} segmentation",
        colormap=labels_colormap(),
        opacity=0.7,
        scale=image.scale[-3:],
        translate=image.translate[-3:],
        metadata={ROLE_KEY: "segmentation"},
    )
    active = viewer.layers.selection.active
    selected = set(viewer.layers.selection)
    index = viewer.layers.index(image) + 1 if image in viewer.layers else len(viewer.layers)
    viewer.layers.insert(index, layer)
    viewer.layers.selection.clear()
    viewer.layers.selection.update(selected & set(viewer.layers))
    if active is not None and active in viewer.layers:
        viewer.layers.selection.active = active
    return layer


# -- tracked boxes ---------------------------------------------------------------------------------

#: `ROLE_KEY` of the Shapes layer "<image> tracked boxes" the dock writes after a run.
TRACKED_BOXES_ROLE = "tracked boxes"


def box_rectangles(boxes) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Shapes data of tracked boxes. `boxes`: object label -> `(T, 4)` boxes (y0, x0, y1, x1 in the
    frame's pixels, y1 / x1 exclusive; NaN rows where the object is absent), as `Session.boxes`.

    Returns the rectangles, an `(N, 4, 3)` array: one per object and frame with a finite box, its
    corners `(t, y0, x0), (t, y0, x1), (t, y1, x1), (t, y1, x0)` (clockwise from the top left; the
    corners a box drawn in a prompt layer is read from), ordered by label, then frame; and their
    features `label` and `frame`, `(N,)` int64 each."""
    rects, labels, frames = [], [], []
    for label in sorted(boxes):
        b = np.asarray(boxes[label], dtype=float).reshape(-1, 4)
        t = np.flatnonzero(np.isfinite(b).all(axis=1))
        y0, x0, y1, x1 = b[t].T
        tt = t.astype(float)
        rects.append(np.stack([np.stack([tt, y0, x0], -1), np.stack([tt, y0, x1], -1),
                               np.stack([tt, y1, x1], -1), np.stack([tt, y1, x0], -1)], axis=1))
        labels.append(np.full(len(t), int(label), np.int64))
        frames.append(t.astype(np.int64))
    if not rects:
        return np.zeros((0, 4, 3)), {"label": np.zeros(0, np.int64), "frame": np.zeros(0, np.int64)}
    return np.concatenate(rects), {"label": np.concatenate(labels), "frame": np.concatenate(frames)}


def object_colors(labels, colormap=None) -> np.ndarray:
    """`(N, 4)` RGBA of object `labels`: from a Labels layer's `colormap` (the output's), else, and
    where that gives nothing visible, the DAVIS palette (`label_color`)."""
    labels = np.asarray(labels, np.int64)
    colors = np.array([label_color(v) for v in labels], np.float64).reshape(-1, 4)
    if colormap is not None and len(labels):
        try:
            mapped = np.asarray(colormap.map(labels), np.float64).reshape(-1, 4)
        except (TypeError, ValueError, AttributeError, IndexError):
            return colors
        visible = mapped[:, 3] > 0
        colors[visible] = mapped[visible]
        colors[:, 3] = 1.0
    return colors


def new_tracked_boxes_layer(viewer, image, rectangles, features, colors):
    """The Shapes layer "<image> tracked boxes": `rectangles` (`box_rectangles`) drawn in `colors`,
    unfilled, on the frames they belong to; the layer that was active stays active."""
    shape = video_shape(image)
    active = viewer.layers.selection.active
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "label looks categorical": it is
        layer = viewer.add_shapes(
            list(rectangles),
            ndim=3,
            shape_type="rectangle",
            name=f"{image.name} tracked boxes",
            features=features,
            edge_color=colors,
            face_color="transparent",
            edge_width=tracked_box_width(shape),
            scale=image.scale[-3:],
            translate=image.translate[-3:],
            metadata={ROLE_KEY: TRACKED_BOXES_ROLE},
        )
    if active is not None and active in viewer.layers:
        viewer.layers.selection.active = active
    return layer


def tracked_box_width(shape: tuple[int, int, int]) -> float:
    """Edge width of tracked boxes on a video of `shape`: that of the boxes layer's rectangles."""
    return _size(shape, 1 / 100, 2)


def set_tracked_boxes(layer, image, rectangles, features, colors) -> None:
    """Replace what a tracked boxes layer holds (one data assignment, then its features and colours)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        layer.data = (list(rectangles), ["rectangle"] * len(rectangles))
        layer.features = features
        layer.edge_color = colors
        layer.face_color = "transparent"
        layer.edge_width = tracked_box_width(video_shape(image))


# -- writing results -------------------------------------------------------------------------------

def write_labels(layer, labels: np.ndarray, frames=None) -> int:
    """Write `labels[t]` (a full `(T, H, W)` volume) into `layer` for each t in `frames` (default:
    all), as one undo step: Ctrl+Z in the layer reverts it. Returns the number of changed pixels."""
    labels = np.asarray(labels)
    frames = range(len(labels)) if frames is None else frames
    return write_frames(layer, ((t, labels[t]) for t in frames))


def write_frames(layer, items) -> int:
    """Write `(t, (H, W) labels)` pairs into `layer` as one undo step; returns the changed pixels.

    napari records undo history only for edits made through `Labels.data_setitem` (assigning
    `layer.data[t] = ...` cannot be undone), so that is what we use, with only the changed pixels
    (int32 indices: 14 bytes of history per changed pixel; napari keeps the last 100 steps).
    """
    data = layer.data
    if not isinstance(data, np.ndarray):  # dask / zarr: make it editable, in memory
        layer.data = data = np.array(data)
    changed_total = 0
    with layer.block_history():
        for t, new in items:
            new = np.asarray(new)
            if new.size and data.dtype.kind in "iu" and int(new.max()) > np.iinfo(data.dtype).max:
                layer.data = data = data.astype(np.int32)  # more objects than the dtype holds
            ys, xs = np.nonzero(data[t] != new)
            if ys.size == 0:
                continue
            index = (np.full(ys.size, t, np.int32), ys.astype(np.int32), xs.astype(np.int32))
            layer.data_setitem(index, new[ys, xs].astype(data.dtype), refresh=False)
            changed_total += int(ys.size)
    if changed_total:
        layer.refresh()
    return changed_total


__all__ = [
    "NEGATIVE_COLOR",
    "PLANE_KEY",
    "ROLE_KEY",
    "SCRIBBLE_BACKGROUND",
    "SOURCE_KEY",
    "TRACKED_BOXES_ROLE",
    "box_prompts",
    "box_rectangles",
    "frame_in_view",
    "image_video",
    "label_color",
    "labels_colormap",
    "mask_prompts",
    "merge",
    "new_boxes_layer",
    "new_mask_layer",
    "new_output_layer",
    "new_points_layer",
    "new_tracked_boxes_layer",
    "object_colors",
    "points_prompts",
    "set_tracked_boxes",
    "video_shape",
    "write_frames",
    "write_labels",
]
