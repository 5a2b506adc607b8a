"""From stride-s label scores to full-resolution labels, following the frame's edges.

PML upsamples its stride-8 result with an edge-aware filter (Chen et al. 2018, Sec. 3.4, the
bilateral solver); we use the guided filter (He et al., ECCV 2010, Alg. 1), which needs only box
filters and runs in a few milliseconds per 480p frame.
"""

from __future__ import annotations

import cv2
import numpy as np


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Guided filter with a grayscale guide (He et al. 2010, Alg. 1; Eq. 5-8).

    guide: (H, W) float32 in [0, 1]; src: (H, W) or (H, W, K) float32; returns src's shape.
    """
    size = (2 * radius + 1, 2 * radius + 1)

    def box(x):
        return cv2.boxFilter(x, -1, size, borderType=cv2.BORDER_REFLECT)

    guide = guide.astype(np.float32)
    multi = src.ndim == 3
    g = guide[..., None] if multi else guide
    mean_i, mean_p = box(guide), box(src)
    mean_i_ = mean_i[..., None] if multi else mean_i
    cov_ip = box(g * src) - mean_i_ * mean_p
    var_i = box(guide * guide) - mean_i * mean_i
    a = cov_ip / ((var_i + eps)[..., None] if multi else var_i + eps)
    b = mean_p - a * mean_i_
    return box(a) * g + box(b)


def gray_guide(frame: np.ndarray, low: float, high: float) -> np.ndarray:
    """The frame as a float32 (H, W) guide in [0, 1] (RGB to luma; `low`/`high` stretch microscopy)."""
    if frame.ndim == 3:
        frame = cv2.cvtColor(np.ascontiguousarray(frame[..., :3]).astype(np.float32), cv2.COLOR_RGB2GRAY)
    return np.clip((frame.astype(np.float32) - low) / max(high - low, 1e-6), 0, 1)


def upsample_scores(scores: np.ndarray, stride: float, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly upsample `(h, w, K)` grid scores (cell centres at `(i + 0.5) * stride`) to `size`."""
    height, width = size
    h, w = scores.shape[:2]
    full = cv2.resize(scores, (int(round(w * stride)), int(round(h * stride))), interpolation=cv2.INTER_LINEAR)
    if full.ndim == 2:
        full = full[..., None]
    return full[:height, :width]


def refine_labels(scores: np.ndarray, label_values: np.ndarray, stride: float, size: tuple[int, int],
                  guide: np.ndarray | None = None, radius: int = 8, eps: float = 1e-3) -> np.ndarray:
    """Full-resolution labels: upsample `(h, w, K)` scores to `size`, filter them with the guide
    (none: plain bilinear upsampling), take the argmax over `label_values`.

    Upsampling and filtering are linear, so with two labels the sign of the filtered score
    difference is the argmax: one channel instead of two.
    """
    scores = scores.astype(np.float32)
    if scores.shape[2] == 2:
        diff = upsample_scores(scores[..., 1] - scores[..., 0], stride, size)[..., 0]
        if guide is not None and radius > 0:
            diff = guided_filter(guide, diff, radius, eps)
        return label_values[(diff > 0).astype(np.intp)]
    full = upsample_scores(scores, stride, size)
    if guide is not None and radius > 0:
        full = guided_filter(guide, full if full.shape[2] > 1 else full[..., 0], radius, eps).reshape(*size, -1)
    return label_values[np.argmax(full, axis=2)]


def refine_frame(video, t: int, scores: np.ndarray, label_values: np.ndarray, stride: float,
                 intensity: tuple[float, float] | None) -> np.ndarray:
    """`refine_labels` of frame t of `video` with the frame as guide (stretched by `intensity`,
    `video.intensity_range()`), radius half a grid cell; `intensity` None: plain bilinear."""
    guide = gray_guide(video[t], *intensity) if intensity is not None else None
    return refine_labels(scores, label_values, stride, tuple(video.shape[1:3]), guide, radius=max(1, int(stride) // 2))


#: Spatial consistency between consecutive frames: grid cells an object may lie beyond its previous
#: region (8, the motion prior's sigma for recent frames in TVOS, Zhang et al. 2020, Sec. 3.3; docs/pml.md).
STRAY_DISTANCE = 8


def drop_stray_regions(scores: np.ndarray, previous: np.ndarray, label_values: np.ndarray, distance: int
                       ) -> np.ndarray:
    """Spatial consistency with the previous frame (beyond the papers): each object's connected
    regions (8-connected grid cells where it wins the vote) that come no closer than `distance` cells
    to its cells in `previous` give their votes to the background (label value 0); a second, similar
    object entering the scene then does not take the label. An object whose regions are all that far
    keeps the one with the largest vote sum (it moved fast); one absent from `previous` is left alone
    (it may reappear). `scores`: (h, w, K) votes over `label_values`, changed in place; `previous`:
    (h, w) label indices of the previous frame. Returns the (h, w) mask of the cells given to the
    background (none without a background label)."""
    winners = scores.argmax(-1)
    cleared = np.zeros(winners.shape, bool)
    background = np.flatnonzero(np.asarray(label_values) == 0)
    if len(background) == 0:
        return cleared
    kernel = np.ones((2 * distance + 1, 2 * distance + 1), np.uint8)
    for k in range(scores.shape[-1]):
        if k == background[0] or not (previous == k).any():
            continue
        n, regions = cv2.connectedComponents((winners == k).astype(np.uint8), connectivity=8)
        near = cv2.dilate((previous == k).astype(np.uint8), kernel).astype(bool)
        stray = np.setdiff1d(np.arange(1, n), regions[near])
        if len(stray) == n - 1 > 0:
            mass = np.bincount(regions.ravel(), weights=scores[..., k].ravel(), minlength=n)
            stray = stray[stray != 1 + np.argmax(mass[1:])]
        cells = np.isin(regions, stray)
        scores[cells, background[0]] += scores[cells, k]
        scores[cells, k] = 0
        cleared |= cells
    return cleared
