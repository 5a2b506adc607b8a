"""Every kind of user input, reduced to labelled reference pixels.

A user can give positive / negative clicks, boxes, dense masks and scribbles, on any frames and for
any number of objects. Methods see one `Prompts` object; retrieval methods (PML) only need
`reference_pixels()`, while box-driven methods (LSE) read `boxes` directly.

Object ids are positive integers; id 0 is the background. A point with id 0 is a negative click.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from .errors import PromptError

#: Value that marks a background stroke in a scribble image (0 there means "not annotated").
SCRIBBLE_BACKGROUND = 255
#: The largest object id: label images are at most int32.
MAX_LABEL = 2**31 - 1
#: The most objects one run segments: every object costs a reference set and a score map per frame.
MAX_OBJECTS = 65535


@dataclass(frozen=True)
class Point:
    """A click on `frame` at row `y`, column `x`; `label` 0 is a negative (background) click."""

    frame: int
    y: float
    x: float
    label: int


@dataclass(frozen=True)
class Box:
    """An axis-aligned box around object `label` on `frame` (pixel corners, y1/x1 exclusive)."""

    frame: int
    y0: float
    x0: float
    y1: float
    x1: float
    label: int = 1


@dataclass
class ReferencePixels:
    """Labelled pixels: parallel integer arrays `frame`, `y`, `x`, `label`."""

    frame: np.ndarray
    y: np.ndarray
    x: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.label)

    @property
    def object_ids(self) -> list[int]:
        """The positive object ids present (background 0 excluded)."""
        return sorted(int(v) for v in np.unique(self.label) if v > 0)


@dataclass
class Prompts:
    """All user input for one video.

    masks: frame -> dense label image (every pixel is a reference; 0 = background).
    scribbles: frame -> sparse label image (0 = not annotated, `SCRIBBLE_BACKGROUND` = background).
    """

    points: list[Point] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    scribbles: dict[int, np.ndarray] = field(default_factory=dict)

    def add_point(self, frame: int, y: float, x: float, label: int) -> Prompts:
        self.points.append(Point(int(frame), float(y), float(x), int(label)))
        return self

    def add_box(self, frame: int, y0: float, x0: float, y1: float, x1: float, label: int = 1) -> Prompts:
        y0, y1 = sorted((float(y0), float(y1)))
        x0, x1 = sorted((float(x0), float(x1)))
        self.boxes.append(Box(int(frame), y0, x0, y1, x1, int(label)))
        return self

    def add_mask(self, frame: int, labels: np.ndarray) -> Prompts:
        self.masks[int(frame)] = np.asarray(labels)
        return self

    def add_scribble(self, frame: int, labels: np.ndarray) -> Prompts:
        self.scribbles[int(frame)] = np.asarray(labels)
        return self

    def extend(self, other: Prompts) -> Prompts:
        """Add `other`'s prompts to these (its masks and scribbles replace those of the same frames)."""
        self.points += other.points
        self.boxes += other.boxes
        self.masks.update(other.masks)
        self.scribbles.update(other.scribbles)
        return self

    def is_empty(self) -> bool:
        return not (self.points or self.boxes or self.masks or self.scribbles)

    @property
    def frames(self) -> list[int]:
        """Frames that carry any annotation, sorted."""
        found = {p.frame for p in self.points} | {b.frame for b in self.boxes}
        return sorted(found | set(self.masks) | set(self.scribbles))

    @property
    def object_ids(self) -> list[int]:
        """Every positive object id the user named."""
        ids = {p.label for p in self.points} | {b.label for b in self.boxes}
        for image in self.masks.values():
            ids |= {int(v) for v in np.unique(image)}
        for image in self.scribbles.values():
            ids |= {int(v) for v in np.unique(image)} - {SCRIBBLE_BACKGROUND}
        return sorted(i for i in ids if i > 0)

    def drop_outside(self, n_frames: int, height: int, width: int) -> list[str]:
        """Remove the points off the video (a frame it does not have, a pixel off the frame) and the
        boxes wholly off it; return what was removed, described. The dock ignores such prompts
        (napari lets a click land beside the image) where `validate` refuses them."""
        dropped = []
        kept_points = []
        for p in self.points:
            if 0 <= p.frame < n_frames and 0 <= p.y < height and 0 <= p.x < width:
                kept_points.append(p)
            else:
                dropped.append(f"point (frame {p.frame}, y={p.y:g}, x={p.x:g})")
        kept_boxes = []
        for b in self.boxes:
            if 0 <= b.frame < n_frames and b.y1 > 0 and b.x1 > 0 and b.y0 < height and b.x0 < width:
                kept_boxes.append(b)
            else:
                dropped.append(f"box (frame {b.frame}, y {b.y0:g}..{b.y1:g}, x {b.x0:g}..{b.x1:g})")
        self.points, self.boxes = kept_points, kept_boxes
        return dropped

    def validate(self, n_frames: int, height: int, width: int, *, require_object: bool = True) -> None:
        """Raise `PromptError` naming the first problem: no input, a frame that does not exist,
        a coordinate that is not a finite number, a point or box outside the frame, an object id
        beyond `MAX_LABEL`, a mask of the wrong shape, or no object at all."""
        if self.is_empty():
            raise PromptError("no prompts: click an object, draw a box or paint a mask first")

        def check_frame(frame: int, what: str) -> None:
            if not 0 <= frame < n_frames:
                raise PromptError(f"{what} is on frame {frame}, but the video has frames 0..{n_frames - 1}")

        def check_numbers(what: str, label: int, *coordinates: float) -> None:
            if not all(np.isfinite(coordinates)):
                raise PromptError(f"{what} has a coordinate that is not a finite number")
            if label > MAX_LABEL:
                raise PromptError(f"{what} has object id {label}; ids go up to {MAX_LABEL}")

        for p in self.points:
            what = f"point (frame {p.frame}, y={p.y:g}, x={p.x:g}, label {p.label})"
            check_frame(p.frame, what)
            check_numbers(what, p.label, p.y, p.x)
            if not (0 <= p.y < height and 0 <= p.x < width):
                raise PromptError(f"{what} lies outside the {height}x{width} frame")
            if p.label < 0:
                raise PromptError(f"{what} has a negative object id")
        for b in self.boxes:
            what = f"box (frame {b.frame}, y {b.y0:g}..{b.y1:g}, x {b.x0:g}..{b.x1:g})"
            check_frame(b.frame, what)
            check_numbers(what, b.label, b.y0, b.x0, b.y1, b.x1)
            if b.y1 <= 0 or b.x1 <= 0 or b.y0 >= height or b.x0 >= width:
                raise PromptError(f"{what} lies outside the {height}x{width} frame")
            if b.y1 - b.y0 < 1 or b.x1 - b.x0 < 1:
                raise PromptError(f"{what} is empty")
            if b.label <= 0:
                raise PromptError(f"{what} needs a positive object id")
        for kind, images in (("mask", self.masks), ("scribble", self.scribbles)):
            for frame, image in images.items():
                check_frame(frame, f"the {kind}")
                if image.shape != (height, width):
                    raise PromptError(
                        f"the {kind} on frame {frame} is {'x'.join(map(str, image.shape))}, "
                        f"but the frames are {height}x{width}"
                    )
                if image.dtype.kind not in "iub":
                    raise PromptError(f"the {kind} on frame {frame} must hold integer labels, not {image.dtype}")
                if image.dtype.kind == "i" and image.min() < 0:
                    raise PromptError(f"the {kind} on frame {frame} has negative labels")
                if image.size and image.max() > MAX_LABEL:
                    raise PromptError(f"the {kind} on frame {frame} has object id {image.max()}; ids go up to "
                                      f"{MAX_LABEL}")
        n_objects = len(self.object_ids)
        if n_objects > MAX_OBJECTS:
            raise PromptError(f"the prompts name {n_objects:,} objects; one run segments at most {MAX_OBJECTS:,} "
                              "(split the objects over several runs)")
        if require_object and not n_objects:
            raise PromptError("the prompts name no object: add a positive click, a box or a mask with a label > 0")

    def reference_pixels(self, height: int, width: int) -> ReferencePixels:
        """Reduce every prompt to labelled pixels (PML's reference pool, Chen et al. 2018, Sec. 3.2).

        Points give one pixel each; masks give every pixel; scribbles give their strokes; a box
        gives the pixels of a band just outside it as background and a small ellipse at its centre
        (a sixth of its size) as the object, the part of a box that is almost surely foreground.
        """
        parts: list[tuple[np.ndarray, ...]] = []
        if self.points:
            f, y, x, lab = (np.array(v) for v in zip(*((p.frame, p.y, p.x, p.label) for p in self.points)))
            y = np.clip(np.floor(y), 0, height - 1)
            x = np.clip(np.floor(x), 0, width - 1)
            parts.append((f, y, x, lab))
        for frame, image in self.masks.items():
            yy, xx = np.indices(image.shape).reshape(2, -1)
            parts.append((np.full(yy.size, frame), yy, xx, image.reshape(-1)))
        for frame, image in self.scribbles.items():
            yy, xx = np.nonzero(image)
            lab = image[yy, xx].astype(np.int64)
            lab[lab == SCRIBBLE_BACKGROUND] = 0
            parts.append((np.full(yy.size, frame), yy, xx, lab))
        for b in self.boxes:
            parts.extend(_box_pixels(b, height, width))
        if not parts:
            empty = np.zeros(0, np.int64)
            return ReferencePixels(empty, empty, empty, empty)
        f, y, x, lab = (np.concatenate([np.asarray(p[i]) for p in parts]).astype(np.int64) for i in range(4))
        return ReferencePixels(f, y, x, lab)


def masks_digest(masks: dict[int, np.ndarray]) -> str:
    """A fingerprint of painted masks (frames, shapes, types and every pixel): what a head fine-tuned on
    them depends on, so that a tuned head is reused while the masks stay the same."""
    digest = hashlib.blake2b(digest_size=16)
    for t in sorted(masks):
        mask = np.ascontiguousarray(masks[t])
        digest.update(repr((t, mask.shape, str(mask.dtype))).encode())
        digest.update(mask.tobytes())
    return digest.hexdigest()


def _box_pixels(b: Box, height: int, width: int) -> list[tuple[np.ndarray, ...]]:
    """Background band (a tenth of the box size wide, at least 2 px) and a central ellipse."""
    y0, x0 = int(np.floor(max(b.y0, 0))), int(np.floor(max(b.x0, 0)))
    y1, x1 = int(np.ceil(min(b.y1, height))), int(np.ceil(min(b.x1, width)))
    band = max(2, int(round(0.1 * max(y1 - y0, x1 - x0))))
    yy, xx = np.mgrid[max(y0 - band, 0) : min(y1 + band, height), max(x0 - band, 0) : min(x1 + band, width)]
    outside = (yy < y0) | (yy >= y1) | (xx < x0) | (xx >= x1)
    cy, cx = (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2
    ry, rx = max((y1 - y0) / 6, 0.5), max((x1 - x0) / 6, 0.5)
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    bg = (np.full(int(outside.sum()), b.frame), yy[outside], xx[outside], np.zeros(int(outside.sum())))
    fg = (np.full(int(inside.sum()), b.frame), yy[inside], xx[inside], np.full(int(inside.sum()), b.label))
    return [bg, fg]


def prompts_from_points_layer(data: np.ndarray, labels) -> Prompts:
    """Prompts from a napari Points layer's data `(N, 3)` rows `(t, y, x)` and its `label` feature
    (object id, 0 = background). Each point goes to the pixel napari shows it on (coordinates
    rounded: pixel i spans i - 0.5 to i + 0.5). Extra leading axes are not supported."""
    data = np.asarray(data, dtype=float)
    labels = np.asarray(labels)
    if data.ndim != 2 or data.shape[1] != 3:
        raise PromptError(f"points must have 3 coordinates (frame, y, x), got an array of shape {data.shape}")
    if len(labels) != len(data):
        raise PromptError(f"{len(data)} points but {len(labels)} labels")
    prompts = Prompts()
    for (t, y, x), label in zip(np.round(data), labels):
        prompts.add_point(int(t), y, x, int(label))
    return prompts


def prompts_from_rectangles(rectangles, labels=None) -> Prompts:
    """Prompts from napari Shapes rectangles: each a `(4, 3)` array of `(t, y, x)` corners on one
    frame; `labels` gives their object ids (default 1, 2, ... in drawing order)."""
    prompts = Prompts()
    for i, corners in enumerate(rectangles):
        corners = np.asarray(corners, dtype=float)
        if corners.ndim != 2 or corners.shape[1] != 3:
            raise PromptError(f"box {i} must have (frame, y, x) corners, got an array of shape {corners.shape}")
        frames = np.unique(np.round(corners[:, 0]))
        if len(frames) != 1:
            raise PromptError(f"box {i} spans frames {frames.astype(int).tolist()}; draw a box on a single frame")
        label = i + 1 if labels is None else int(labels[i])
        prompts.add_box(int(frames[0]), corners[:, 1].min(), corners[:, 2].min(), corners[:, 1].max(),
                        corners[:, 2].max(), label)
    return prompts


def prompts_from_labels_layer(volume, kind: str = "mask") -> Prompts:
    """Prompts from a napari Labels layer `(T, H, W)`: every frame with any label becomes a dense
    mask (`kind="mask"`) or a scribble (`kind="scribble"`, 0 = not annotated)."""
    if kind not in ("mask", "scribble"):
        raise ValueError(f"kind must be 'mask' or 'scribble', not {kind!r}")
    prompts = Prompts()
    for t in range(len(volume)):
        frame = np.asarray(volume[t])
        if frame.any():
            (prompts.add_mask if kind == "mask" else prompts.add_scribble)(t, frame)
    return prompts


def prompts_from_points_table(rows: np.ndarray) -> Prompts:
    """Prompts from an (N, 4) table of `frame, y, x, label` rows (the CLI's CSV)."""
    rows = np.asarray(rows, dtype=float).reshape(-1, 4)
    prompts = Prompts()
    for frame, y, x, label in rows:
        prompts.add_point(int(frame), y, x, int(label))
    return prompts
