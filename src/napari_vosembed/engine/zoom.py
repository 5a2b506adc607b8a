"""Zoom-in geometry (Ci et al. 2018, Sec. 4.1): the tight box of a mask, the enlarged search box, the
crop of a frame resized to the network's working size, and the crop's scores pasted back at full
resolution.

Boxes are `(y0, x0, y1, x1)` in pixels of the frame, y1 / x1 exclusive (as `prompts.Box`). A search
box may reach past the frame: the crop repeats the frame's border there, and pasting keeps only
what lies inside the frame.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

#: The side of the square crop the network reads (the paper's 321, rounded to a multiple of 32, the
#: backbone's coarsest stride).
CROP_SIZE = 320
#: Each side of the search box is the object's box side times this (the context around the object).
CONTEXT = 1.5
#: The smallest search box side, in frame pixels (a tiny object is not zoomed beyond 10x).
MIN_SIDE = 32
#: A search box is at most this many times as long as it is wide (thin objects keep some context).
MAX_ASPECT = 2.0
#: After a frame where the object was not found, the search box grows by this factor.
LOST_GROWTH = 1.25
#: From one frame to the next, the tracked box's sides grow by at most this factor.
MAX_GROWTH = 1.3


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The tight box of the non-zero pixels of `mask`, None when it has none."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def search_box(box, frame_shape: tuple[int, int], context: float = CONTEXT) -> tuple[int, int, int, int]:
    """`box` enlarged about its centre by `context` (each side at least `MIN_SIDE`, the longer at
    most `MAX_ASPECT` times the shorter, neither beyond twice the frame's), in whole pixels."""
    y0, x0, y1, x1 = map(float, box)
    height, width = frame_shape
    h, w = max((y1 - y0) * context, MIN_SIDE), max((x1 - x0) * context, MIN_SIDE)
    h, w = max(h, w / MAX_ASPECT), max(w, h / MAX_ASPECT)
    h, w = min(h, 2 * height), min(w, 2 * width)
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    top, left = math.floor(cy - h / 2), math.floor(cx - w / 2)
    return top, left, top + max(1, round(h)), left + max(1, round(w))


def whole_frame(frame_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The search box that is the frame (the zoom-in switched off)."""
    return 0, 0, int(frame_shape[0]), int(frame_shape[1])


def grown(box, frame_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The search box after a frame without the object: `LOST_GROWTH` times larger, at most the
    frame's size (the object is searched for wider, not followed off the frame)."""
    y0, x0, y1, x1 = box
    height, width = frame_shape
    h, w = min((y1 - y0) * LOST_GROWTH, height), min((x1 - x0) * LOST_GROWTH, width)
    cy = min(max((y0 + y1) / 2, h / 2), height - h / 2)
    cx = min(max((x0 + x1) / 2, w / 2), width - w / 2)
    top, left = math.floor(cy - h / 2), math.floor(cx - w / 2)
    return top, left, top + round(h), left + round(w)


def crop(image: np.ndarray, box, size: int = CROP_SIZE) -> np.ndarray:
    """The part of `image` ((H, W) or (H, W, C)) under `box`, the border repeated where the box
    leaves the image, resized to `size` x `size` (area averaging when shrinking)."""
    y0, x0, y1, x1 = box
    height, width = image.shape[:2]
    inner = image[max(0, y0):min(height, y1), max(0, x0):min(width, x1)]
    if inner.size == 0:  # the box lies wholly outside: the nearest border pixel everywhere
        yy, xx = min(max(y0, 0), height - 1), min(max(x0, 0), width - 1)
        inner = image[yy:yy + 1, xx:xx + 1]
        pads = (0, y1 - y0 - 1, 0, x1 - x0 - 1)
    else:
        pads = (max(0, -y0), max(0, y1 - height), max(0, -x0), max(0, x1 - width))
    padded = cv2.copyMakeBorder(np.ascontiguousarray(inner), *pads, cv2.BORDER_REPLICATE) if any(pads) else inner
    shrink = (y1 - y0) * (x1 - x0) > size * size
    out = cv2.resize(np.ascontiguousarray(padded), (size, size),
                     interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out.reshape(size, size, *image.shape[2:])


def paste(scores: np.ndarray, box, frame_shape: tuple[int, int]) -> tuple[tuple[slice, slice], np.ndarray]:
    """A crop's (s, s) scores back in the frame: the frame's region under `box` (slices) and the
    scores resized to the box, cut to that region (bilinear)."""
    y0, x0, y1, x1 = box
    height, width = frame_shape
    full = cv2.resize(np.ascontiguousarray(scores, np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    top, left, bottom, right = max(0, y0), max(0, x0), min(height, y1), min(width, x1)
    region = (slice(top, max(top, bottom)), slice(left, max(left, right)))
    return region, full[top - y0:max(top, bottom) - y0, left - x0:max(left, right) - x0]


def box_in_crop(box, search) -> tuple[float, float, float, float]:
    """`box` (frame pixels) in the coordinates of the crop of `search`, as fractions of its sides."""
    y0, x0, y1, x1 = search
    h, w = y1 - y0, x1 - x0
    return (box[0] - y0) / h, (box[1] - x0) / w, (box[2] - y0) / h, (box[3] - x0) / w


def follow(mask: np.ndarray, previous) -> np.ndarray:
    """The part of a frame's `mask` that continues the track: its connected components that overlap
    the `previous` box (all in the same coordinates), or the largest one when none does; the other
    components are other objects or stray pixels."""
    count, components, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 2:
        return mask.astype(bool)
    y0, x0, y1, x1 = (max(0, v) for v in previous)
    overlapping = np.unique(components[y0:y1, x0:x1])
    overlapping = overlapping[overlapping > 0]
    if not len(overlapping):
        overlapping = [1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))]
    return np.isin(components, overlapping)


def limited(box, previous) -> tuple[int, int, int, int]:
    """`box` with its sides at most `MAX_GROWTH` times those of `previous`, about its own centre (a
    burst of false foreground does not blow the next crop up)."""
    y0, x0, y1, x1 = box
    h = min(y1 - y0, MAX_GROWTH * (previous[2] - previous[0]))
    w = min(x1 - x0, MAX_GROWTH * (previous[3] - previous[1]))
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    top, left = math.floor(cy - h / 2), math.floor(cx - w / 2)
    return top, left, top + max(1, round(h)), left + max(1, round(w))
