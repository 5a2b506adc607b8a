"""Rough masks from true ones: the deformations MaskTrack trains on (Perazzi et al. 2017, Sec. 3.2).

A mask is moved by an affine transform (its scale changed by up to `scale` of the object's size, its
centre shifted by up to `shift` of the object's width and height), warped by a thin-plate spline
whose `points` control points on the object move by up to `shift` of its width and height, and
coarsened by a dilation of `dilation` pixels. The network that learns to undo them learns to turn
the previous frame's mask into the current frame's.
"""

from __future__ import annotations

import cv2
import numpy as np


def _tps_kernel(r2: np.ndarray) -> np.ndarray:
    """U(r) = r^2 log r^2 of the thin-plate spline (0 at r = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(r2 > 0, r2 * np.log(r2), 0.0)


def tps_map(src: np.ndarray, dst: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The thin-plate spline that sends the points `dst` (N, 2; x, y) to `src`, evaluated on every
    pixel of `shape`: maps (x, y) for `cv2.remap`, so that the output at `dst` shows the input at
    `src` (the image moves from `src` to `dst`)."""
    n = len(dst)
    k = _tps_kernel(((dst[:, None] - dst[None]) ** 2).sum(-1))
    p = np.hstack([np.ones((n, 1)), dst])
    system = np.zeros((n + 3, n + 3))
    system[:n, :n], system[:n, n:], system[n:, :n] = k, p, p.T
    coef = np.linalg.solve(system + 1e-8 * np.eye(n + 3), np.vstack([src, np.zeros((3, 2))]))
    h, w = shape
    ys, xs = np.mgrid[:h, :w].astype(np.float64)
    grid = np.stack([xs.ravel(), ys.ravel()], 1)
    u = _tps_kernel(((grid[:, None] - dst[None]) ** 2).sum(-1))
    mapped = u @ coef[:n] + np.hstack([np.ones((len(grid), 1)), grid]) @ coef[n:]
    return mapped[:, 0].reshape(h, w).astype(np.float32), mapped[:, 1].reshape(h, w).astype(np.float32)


#: The coarsening dilation of Sec. 3.2, pixels.
DILATION = 5


def coarsen(mask: np.ndarray, dilation: int = DILATION) -> np.ndarray:
    """`mask` dilated by a disk of radius `dilation`."""
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilation + 1, 2 * dilation + 1))
    return cv2.dilate(np.asarray(mask).astype(np.uint8), disk) > 0


def deform_mask(mask: np.ndarray, rng: np.random.Generator, scale: float = 0.05, shift: float = 0.10,
                points: int = 5, dilation: int = DILATION) -> np.ndarray:
    """A rough copy of the binary `mask` (affine, thin-plate spline, dilation; module docstring)."""
    mask = np.asarray(mask) > 0
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return mask.copy()
    h, w = mask.shape
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    oh, ow = y1 - y0, x1 - x0
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    s = 1 + rng.uniform(-scale, scale)
    ty, tx = rng.uniform(-shift, shift) * oh, rng.uniform(-shift, shift) * ow
    affine = np.array([[s, 0, (1 - s) * cx + tx], [0, s, (1 - s) * cy + ty]], np.float32)
    out = cv2.warpAffine(mask.astype(np.uint8), affine, (w, h), flags=cv2.INTER_NEAREST)
    pick = rng.choice(len(ys), min(points, len(ys)), replace=False)
    src = np.stack([xs[pick] * s + affine[0, 2], ys[pick] * s + affine[1, 2]], 1).astype(np.float64)
    dst = src + rng.uniform(-shift, shift, src.shape) * [ow, oh]
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], np.float64)  # the frame stays put
    small = (max(1, h // 4), max(1, w // 4))  # the spline is smooth: evaluate it on a quarter grid
    map_x, map_y = tps_map(np.vstack([src, corners]) / [w / small[1], h / small[0]],
                           np.vstack([dst, corners]) / [w / small[1], h / small[0]], small)
    map_x = cv2.resize(map_x * (w / small[1]), (w, h), interpolation=cv2.INTER_LINEAR)
    map_y = cv2.resize(map_y * (h / small[0]), (w, h), interpolation=cv2.INTER_LINEAR)
    out = cv2.remap(out, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return coarsen(out, dilation) if dilation else out > 0
