"""From stride-s label scores to full-resolution labels, following the frame's edges.

PML upsamples its stride-8 result with an edge-aware filter (Chen et al. 2018, Sec. 3.4, the
bilateral solver); we use the guided filter (He et al., ECCV 2010, Alg. 1), which needs only box
filters: guided by the colour frame (Eq. 13-15 of the journal version, TPAMI 2013) over two grid
cells, its coefficients computed on a grid subsampled 4x (the fast guided filter, He and Sun 2015),
about 15 ms per 480p frame; by the gray frame (microscopy) over half a grid cell.
"""

from __future__ import annotations

import cv2
import numpy as np


#: The colour guided filter: radius in grid cells, regulariser (colours in [0, 1]; just above the
#: variance of 8-bit JPEG noise, about 6e-5) and subsampling in grid cells, chosen on the validation
#: split (docs/pml.md, "Edge-aware upsampling with the colour frame").
COLOUR_RADIUS_CELLS, COLOUR_EPS, COLOUR_SUBSAMPLE_CELLS = 2, 1e-4, 0.5


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float, subsample: int = 1) -> np.ndarray:
    """Guided filter (He et al. 2010, Alg. 1): q = mean(a) . I + mean(b) with, in every window,
    a = (Sigma + eps U)^-1 cov(I, p) and b = mean(p) - a . mean(I) (Eq. 5-8; Eq. 13-15 for a colour
    guide, Sigma its 3 x 3 covariance). With `subsample` s > 1, a and b come from I and p shrunk s
    times (radius r / s) and are upsampled bilinearly before the last step (the fast guided filter,
    He and Sun 2015, Alg. 2).

    guide: (H, W) or (H, W, C) float32 in [0, 1]; src: (H, W) or (H, W, K) float32; returns src's shape.
    """
    height, width = src.shape[:2]
    guide = guide.astype(np.float32)
    full = guide[..., None] if guide.ndim == 2 else guide
    p = src[..., None] if src.ndim == 2 else src
    if subsample > 1:
        small = (max(1, width // subsample), max(1, height // subsample))
        guide_s = cv2.resize(full, small, interpolation=cv2.INTER_AREA).reshape(small[1], small[0], -1)
        p_s = cv2.resize(p, small, interpolation=cv2.INTER_AREA).reshape(small[1], small[0], -1)
        radius = max(1, round(radius / subsample))
    else:
        guide_s, p_s = full, p
    size = (2 * radius + 1, 2 * radius + 1)

    def box(x):  # any trailing shape: OpenCV sees (h, w, channels)
        flat = np.ascontiguousarray(x).reshape(*x.shape[:2], -1)
        return cv2.boxFilter(flat, -1, size, borderType=cv2.BORDER_REFLECT).reshape(x.shape)

    channels = guide_s.shape[-1]
    mean_i, mean_p = box(guide_s), box(p_s)
    cov_ip = box(guide_s[..., :, None] * p_s[..., None, :]) - mean_i[..., :, None] * mean_p[..., None, :]  # (.., C, K)
    if channels == 1:
        var_i = box(guide_s * guide_s) - mean_i * mean_i
        a = cov_ip / (var_i + eps)[..., None]
    else:
        outer = (guide_s[..., :, None] * guide_s[..., None, :]).reshape(*guide_s.shape[:2], -1)
        sigma = box(outer).reshape(*guide_s.shape[:2], channels, channels) - mean_i[..., :, None] * mean_i[..., None, :]
        a = solve_symmetric(sigma + eps * np.eye(channels, dtype=np.float32), cov_ip)
    b = mean_p - (a * mean_i[..., :, None]).sum(-2)
    mean_a, mean_b = box(a), box(b)
    if subsample > 1:
        def up(x):
            return cv2.resize(x.reshape(*x.shape[:2], -1), (width, height), interpolation=cv2.INTER_LINEAR)

        mean_a, mean_b = up(mean_a), up(mean_b)
    mean_a = mean_a.reshape(height, width, channels, -1)
    q = mean_b.reshape(height, width, -1).copy()
    for c in range(channels):  # sum over the guide's channels, one at a time (a 4-d reduction is 7x slower)
        q += mean_a[:, :, c] * full[:, :, c : c + 1]
    return q.reshape(src.shape)


def solve_symmetric(matrix: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """x = M^-1 rhs for a stack of symmetric 3 x 3 matrices `(..., 3, 3)` and right-hand sides
    `(..., 3, K)`: M^-1 = adj(M) / det(M) (Cramer's rule) written out, in float64, returned as
    float32. For the colour guided filter's Sigma + eps U, positive definite, a third of the time of
    numpy's batched `solve`, which pays a LAPACK call per 3 x 3 system (docs/pml.md, "Ensembles of
    heads"); other sizes go to `np.linalg.solve`."""
    if matrix.shape[-2:] != (3, 3):
        return np.linalg.solve(matrix, rhs)
    m, y = matrix.astype(np.float64), rhs.astype(np.float64)
    a, b, c, d, e, f = (m[..., i, j, None] for i, j in ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)))
    cof_a, cof_b, cof_c = d * f - e * e, c * e - b * f, b * e - c * d  # the adjugate's first row
    cof_d, cof_e, cof_f = a * f - c * c, b * c - a * e, a * d - b * b
    inv_det = 1 / (a * cof_a + b * cof_b + c * cof_c)
    y0, y1, y2 = y[..., 0, :], y[..., 1, :], y[..., 2, :]
    return (np.stack([cof_a * y0 + cof_b * y1 + cof_c * y2, cof_b * y0 + cof_d * y1 + cof_e * y2,
                      cof_c * y0 + cof_e * y1 + cof_f * y2], -2) * inv_det[..., None, :]).astype(np.float32)


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """`values` mapped from [low, high] to float32 [0, 1], clipped."""
    return np.clip((values.astype(np.float32) - low) / max(high - low, 1e-6), 0, 1)


def gray_guide(frame: np.ndarray, low: float, high: float) -> np.ndarray:
    """The frame as a float32 (H, W) guide in [0, 1] (RGB to luma; `low`/`high` stretch microscopy)."""
    if frame.ndim == 3:
        frame = cv2.cvtColor(np.ascontiguousarray(frame[..., :3]).astype(np.float32), cv2.COLOR_RGB2GRAY)
    return _stretch(frame, low, high)


def colour_guide(frame: np.ndarray, low: float, high: float) -> np.ndarray:
    """An RGB frame as a float32 (H, W, 3) guide in [0, 1], stretched by `low`/`high`."""
    return _stretch(frame[..., :3], low, high)


def upsample_scores(scores: np.ndarray, stride: float, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly upsample `(h, w, K)` grid scores (cell centres at `(i + 0.5) * stride`) to `size`."""
    height, width = size
    h, w = scores.shape[:2]
    full = cv2.resize(scores, (int(round(w * stride)), int(round(h * stride))), interpolation=cv2.INTER_LINEAR)
    if full.ndim == 2:
        full = full[..., None]
    return full[:height, :width]


def refine_labels(scores: np.ndarray, label_values: np.ndarray, stride: float, size: tuple[int, int],
                  guide: np.ndarray | None = None, radius: int = 8, eps: float = 1e-3, subsample: int = 1
                  ) -> np.ndarray:
    """Full-resolution labels: upsample `(h, w, K)` scores to `size`, filter them with the guide
    ((H, W) or (H, W, 3), `guided_filter`; none: plain bilinear upsampling), take the argmax over
    `label_values`.

    Upsampling and filtering are linear, so with two labels the sign of the filtered score
    difference is the argmax: one channel instead of two.
    """
    scores = scores.astype(np.float32)
    if scores.shape[2] == 2:
        diff = upsample_scores(scores[..., 1] - scores[..., 0], stride, size)[..., 0]
        if guide is not None and radius > 0:
            diff = guided_filter(guide, diff, radius, eps, subsample)
        return label_values[(diff > 0).astype(np.intp)]
    full = upsample_scores(scores, stride, size)
    if guide is not None and radius > 0:
        full = guided_filter(guide, full, radius, eps, subsample)
    return label_values[np.argmax(full, axis=2)]


def refine_frame(video, t: int, scores: np.ndarray, label_values: np.ndarray, stride: float,
                 intensity: tuple[float, float] | None) -> np.ndarray:
    """`refine_labels` of frame t of `video` with the frame as guide (stretched by `intensity`,
    `video.intensity_range()`): an RGB frame guides over `COLOUR_RADIUS_CELLS` grid cells (fast
    guided filter), a gray one over half a cell; `intensity` None: plain bilinear."""
    size = tuple(video.shape[1:3])
    if intensity is None:
        return refine_labels(scores, label_values, stride, size)
    frame = video[t]
    if frame.ndim == 3:
        return refine_labels(scores, label_values, stride, size, colour_guide(frame, *intensity),
                             radius=max(1, round(COLOUR_RADIUS_CELLS * stride)), eps=COLOUR_EPS,
                             subsample=max(1, round(COLOUR_SUBSAMPLE_CELLS * stride)))
    return refine_labels(scores, label_values, stride, size, gray_guide(frame, *intensity),
                         radius=max(1, int(stride) // 2))


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
