"""From stride-s label scores to full-resolution labels, following the frame's edges.

PML upsamples its stride-8 result with an edge-aware filter (Chen et al. 2018, Sec. 3.4, the
bilateral solver); we use the guided filter (He et al., ECCV 2010, Alg. 1), which needs only box
filters: guided by the colour frame (Eq. 13-15 of the journal version, TPAMI 2013) over two grid
cells, its coefficients computed on a grid subsampled 4x (the fast guided filter, He and Sun 2015),
about 15 ms per 480p frame, less once what depends on the frame alone is kept (`FrameRefiner`); by
the gray frame (microscopy) over half a grid cell. On the CPU the filter runs in OpenCV; for a
session on a GPU, the same steps run in torch on the device (`TorchGuidedFilter`), so the scores,
the filter's statistics and the labels stay there until the labels go to the host.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..io.video import stretch


#: The colour guided filter: radius in grid cells, regulariser (colours in [0, 1]; just above the
#: variance of 8-bit JPEG noise, about 6e-5) and subsampling in grid cells, chosen on the validation
#: split (docs/pml.md).
COLOUR_RADIUS_CELLS, COLOUR_EPS, COLOUR_SUBSAMPLE_CELLS = 2, 1e-4, 0.5
#: The gray guided filter's regulariser (its radius: half a grid cell) and subsampling in grid cells
#: (1 below a stride of 12 pixels: full resolution for microscopy frames of 512 x 512 and less).
GRAY_EPS, GRAY_SUBSAMPLE_CELLS = 1e-3, 0.125


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float, subsample: int = 1) -> np.ndarray:
    """Guided filter (He et al. 2010, Alg. 1) of `src` by `guide`: `GuidedFilter(guide, radius, eps,
    subsample)(src, guide)`.

    guide: (H, W) or (H, W, C) float32 in [0, 1]; src: (H, W) or (H, W, K) float32; returns src's shape.
    """
    return GuidedFilter(guide, radius, eps, subsample)(src, guide)


class GuidedFilter:
    """The guided filter (He et al. 2010, Alg. 1) with what depends on the guide alone computed once:
    q = mean(a) . I + mean(b) with, in every window, a = (Sigma + eps U)^-1 cov(I, p) and
    b = mean(p) - a . mean(I) (Eq. 5-8; Eq. 13-15 for a colour guide, Sigma its 3 x 3 covariance).
    The window means of I and the inverse of Sigma + eps U are kept; filtering a `src` then costs
    the steps that depend on it. With `subsample` s > 1, a and b come from I and p shrunk s times
    (radius r / s) and are upsampled bilinearly before the last step (the fast guided filter, He and
    Sun 2015, Alg. 2); what is kept then has 1 / s^2 of the frame's size.

    guide: (H, W) or (H, W, C) float32 in [0, 1]. The full-resolution guide is not kept: pass it
    again to `__call__`.
    """

    def __init__(self, guide: np.ndarray, radius: int, eps: float, subsample: int = 1):
        full = self._array(guide)
        self.shape, self.subsample = tuple(full.shape[:2]), subsample
        guide_s = self._shrink(full)
        radius = max(1, round(radius / subsample)) if subsample > 1 else radius
        self.size = (2 * radius + 1, 2 * radius + 1)
        channels = full.shape[-1]
        self.guide_s = guide_s if subsample > 1 else None
        self.mean_i = self._box(guide_s)
        outer = (guide_s[..., :, None] * guide_s[..., None, :]).reshape(*guide_s.shape[:2], -1)
        sigma = self._box(outer).reshape(*guide_s.shape[:2], channels, channels) \
            - self.mean_i[..., :, None] * self.mean_i[..., None, :]
        self.inverse = invert_symmetric(sigma + eps * self._eye(channels))

    @property
    def nbytes(self) -> int:
        """Memory of what the filter keeps."""
        return sum(a.nbytes for a in (self.guide_s, self.mean_i, self.inverse) if a is not None)

    @staticmethod
    def _array(x: np.ndarray) -> np.ndarray:
        return _channels_last(x.astype(np.float32, copy=False))

    @staticmethod
    def _eye(channels: int) -> np.ndarray:
        return np.eye(channels, dtype=np.float32)

    def _shrink(self, x: np.ndarray) -> np.ndarray:
        if self.subsample == 1:
            return x
        height, width = self.shape
        small = (max(1, width // self.subsample), max(1, height // self.subsample))
        return cv2.resize(x, small, interpolation=cv2.INTER_AREA).reshape(small[1], small[0], -1)

    def _box(self, x: np.ndarray) -> np.ndarray:
        """The mean over each window, any trailing shape (OpenCV sees (h, w, channels))."""
        flat = np.ascontiguousarray(x).reshape(*x.shape[:2], -1)
        return cv2.boxFilter(flat, -1, self.size, borderType=cv2.BORDER_REFLECT).reshape(x.shape)

    def _up(self, x: np.ndarray) -> np.ndarray:
        """Bilinear upsampling of (h, w, ...) to the frame's size."""
        height, width = self.shape
        return cv2.resize(x.reshape(*x.shape[:2], -1), (width, height), interpolation=cv2.INTER_LINEAR)

    def __call__(self, src: np.ndarray, guide: np.ndarray) -> np.ndarray:
        """q (float32) for src (H, W) or (H, W, K), guided by `guide`, the one this filter was built from."""
        full = self._array(guide)
        p_s = self._shrink(self._array(src))
        guide_s = full if self.guide_s is None else self.guide_s
        mean_p = self._box(p_s)
        cov_ip = self._box(guide_s[..., :, None] * p_s[..., None, :]) - self.mean_i[..., :, None] * mean_p[..., None, :]
        channels = full.shape[-1]
        a = sum(self.inverse[..., :, c, None] * cov_ip[..., c, None, :] for c in range(channels))  # (.., C, K)
        b = mean_p - (a * self.mean_i[..., :, None]).sum(-2)
        mean_a, mean_b = self._box(a), self._box(b)
        if self.subsample > 1:
            mean_a, mean_b = self._up(mean_a), self._up(mean_b)
        height, width = self.shape
        mean_a = mean_a.reshape(height, width, channels, -1)
        return self._combine(mean_a, mean_b, full).reshape(tuple(src.shape))

    @staticmethod
    def _combine(mean_a: np.ndarray, mean_b: np.ndarray, full: np.ndarray) -> np.ndarray:
        """q = mean(a) . I + mean(b), (H, W, K), from mean_a (H, W, C, K) and the guide I (H, W, C)."""
        height, width, channels = full.shape
        if mean_a.shape[-1] == 1 and channels <= 4:  # one channel out: OpenCV sums over the guide's channels
            q = cv2.transform(cv2.multiply(np.ascontiguousarray(mean_a[..., 0]), full), np.ones((1, channels), np.float32))
            q = q.reshape(height, width, 1) + mean_b.reshape(height, width, 1)
        else:
            q = mean_b.reshape(height, width, -1).copy()
            for c in range(channels):  # one guide channel at a time (a 4-d reduction is 7x slower)
                q += mean_a[:, :, c] * full[:, :, c : c + 1]
        return q


class TorchGuidedFilter(GuidedFilter):
    """`GuidedFilter` in torch on `device`: the same steps (window means by average pooling over
    the guide reflected at its edges, as OpenCV's BORDER_REFLECT; shrinking by area; bilinear
    upsampling), on tensors; what it keeps stays on the device. Guide and source may be numpy
    arrays or tensors; it returns a tensor on the device."""

    def __init__(self, guide, radius: int, eps: float, subsample: int = 1, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        super().__init__(guide, radius, eps, subsample)

    def _array(self, x) -> torch.Tensor:
        return _channels_last(torch.as_tensor(x).to(self.device, torch.float32))

    def _eye(self, channels: int) -> torch.Tensor:
        return torch.eye(channels, device=self.device)

    @staticmethod
    def _planes(x: torch.Tensor) -> torch.Tensor:
        """(h, w, ...) -> (1, C, h, w)."""
        return x.reshape(*x.shape[:2], -1).permute(2, 0, 1)[None]

    def _shrink(self, x: torch.Tensor) -> torch.Tensor:
        """Each side shrunk by the mean over the area each output pixel covers (OpenCV's INTER_AREA)."""
        if self.subsample == 1:
            return x
        height, width = self.shape
        rows = _area_weights(height, max(1, height // self.subsample), self.device)
        cols = _area_weights(width, max(1, width // self.subsample), self.device)
        flat = x.reshape(height, width, -1)
        return torch.einsum("ih,hwc,jw->ijc", rows, flat, cols).reshape(len(rows), len(cols), *x.shape[2:])

    def _box(self, x: torch.Tensor) -> torch.Tensor:
        size = self.size[0]
        planes = self._planes(x)
        for dim, length in ((2, x.shape[0]), (3, x.shape[1])):
            planes = planes.index_select(dim, _reflected(length, size // 2, self.device))
        planes = F.avg_pool2d(F.avg_pool2d(planes, (size, 1), stride=1), (1, size), stride=1)
        return planes[0].permute(1, 2, 0).reshape(x.shape)

    def _up(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self._planes(x), size=self.shape, mode="bilinear", align_corners=False)[0].permute(1, 2, 0)

    @staticmethod
    def _combine(mean_a: torch.Tensor, mean_b: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
        q = mean_b.reshape(*full.shape[:2], -1).clone()
        for c in range(full.shape[-1]):
            q += mean_a[:, :, c] * full[:, :, c : c + 1]
        return q


@lru_cache(maxsize=16)
def _area_weights(length: int, size: int, device: torch.device) -> torch.Tensor:
    """(size, length): the share of input pixel j in output pixel i when `length` pixels shrink to
    `size`, each output covering `length / size` inputs (rows sum to 1); kept for the next frame."""
    edges = torch.arange(size + 1, dtype=torch.float64) * (length / size)
    pixels = torch.arange(length, dtype=torch.float64)
    overlap = (torch.minimum(edges[1:, None], pixels + 1) - torch.maximum(edges[:-1, None], pixels)).clamp(min=0)
    return (overlap * (size / length)).float().to(device)


def _reflected(length: int, radius: int, device: torch.device) -> torch.Tensor:
    """Indices of a line of `length` padded by `radius` on each side, mirrored with the edge
    repeated (OpenCV's BORDER_REFLECT: fedcba|abcdef|fedcba), for any radius."""
    i = torch.arange(-radius, length + radius, device=device) % (2 * length)
    return torch.where(i < length, i, 2 * length - 1 - i)


def _channels_last(x):
    return x[..., None] if x.ndim == 2 else x


def invert_symmetric(matrix):
    """M^-1 for a stack of symmetric positive definite matrices `(..., C, C)` (numpy or torch), as
    float32: for 3 x 3, adj(M) / det(M) written out in float64 (Cramer's rule; numpy's batched
    LAPACK routines pay a call per matrix: its `solve` takes 3x the time of this closed form);
    1 x 1: 1 / M; other sizes the library's `inv`."""
    if isinstance(matrix, torch.Tensor):
        stack, inv, as_float32, as_float64 = torch.stack, torch.linalg.inv, torch.Tensor.float, torch.Tensor.double
    else:
        stack, inv = np.stack, np.linalg.inv
        as_float32, as_float64 = (lambda x: x.astype(np.float32)), (lambda x: x.astype(np.float64))
    size = matrix.shape[-1]
    if size == 1:
        return as_float32(1 / matrix)
    if size != 3:
        return as_float32(inv(matrix))
    m = as_float64(matrix)
    a, b, c, d, e, f = (m[..., i, j] for i, j in ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)))
    cof_a, cof_b, cof_c = d * f - e * e, c * e - b * f, b * e - c * d  # the adjugate's first row
    cof_d, cof_e, cof_f = a * f - c * c, b * c - a * e, a * d - b * b
    inv_det = 1 / (a * cof_a + b * cof_b + c * cof_c)
    adjugate = stack([cof_a, cof_b, cof_c, cof_b, cof_d, cof_e, cof_c, cof_e, cof_f], -1)
    return as_float32(adjugate * inv_det[..., None]).reshape(matrix.shape)


def gray_guide(frame: np.ndarray, low: float, high: float) -> np.ndarray:
    """The frame as a float32 (H, W) guide in [0, 1] (RGB to luma; `low`/`high` stretch microscopy)."""
    if frame.ndim == 3:
        frame = cv2.cvtColor(np.ascontiguousarray(frame[..., :3]).astype(np.float32), cv2.COLOR_RGB2GRAY)
    return stretch(frame, low, high)


def colour_guide(frame: np.ndarray, low: float, high: float) -> np.ndarray:
    """An RGB frame as a float32 (H, W, 3) guide in [0, 1], stretched by `low`/`high`."""
    return stretch(frame[..., :3], low, high)


def frame_guide(frame: np.ndarray, intensity: tuple[float, float], device: torch.device | None = None):
    """The guide of a frame: `colour_guide` of an RGB frame, `gray_guide` of a gray one; with a
    `device`, a tensor there, the frame sent as it is and stretched on the device (the same values)."""
    if device is None:
        return colour_guide(frame, *intensity) if frame.ndim == 3 else gray_guide(frame, *intensity)
    low, high = intensity
    pixels = torch.from_numpy(np.ascontiguousarray(frame[..., :3] if frame.ndim == 3 else frame)).to(device)
    scaled = (pixels.float() - np.float32(low)) * np.float32(1.0 / max(float(high) - float(low), 1e-6))
    return scaled.clamp_(0.0, 1.0)


def upsample_scores(scores, stride: float, size: tuple[int, int]):
    """Bilinearly upsample `(h, w, K)` grid scores (cell centres at `(i + 0.5) * stride`) to `size`
    (a numpy array with OpenCV, a tensor on its device)."""
    height, width = size
    h, w = scores.shape[:2]
    if isinstance(scores, torch.Tensor):
        planes = scores.reshape(h, w, -1).permute(2, 0, 1)[None]
        full = F.interpolate(planes, size=(int(round(h * stride)), int(round(w * stride))), mode="bilinear",
                             align_corners=False)
        return full[0, :, :height, :width].permute(1, 2, 0)
    full = cv2.resize(scores, (int(round(w * stride)), int(round(h * stride))), interpolation=cv2.INTER_LINEAR)
    if full.ndim == 2:
        full = full[..., None]
    return full[:height, :width]


#: Full-resolution scores filtered at once, bytes: frames with many objects are refined a few labels at a time.
LABEL_CHUNK_BYTES = 64 * 2**20


def refine_labels(scores, label_values: np.ndarray, stride: float, size: tuple[int, int], guide=None,
                  radius: int = 8, eps: float = 1e-3, subsample: int = 1, prepared: GuidedFilter | None = None
                  ) -> np.ndarray:
    """Full-resolution labels: upsample `(h, w, K)` scores to `size`, filter them with the guide
    ((H, W) or (H, W, 3), `guided_filter`; none: plain bilinear upsampling), take the argmax over
    `label_values`. `prepared`: the `GuidedFilter` of this guide, radius, eps and subsample, built
    before (`FrameRefiner`). Scores given as a tensor are refined on its device (`TorchGuidedFilter`)
    and only the labels come to the host.

    Upsampling and filtering are linear, so with two labels the sign of the filtered score
    difference is the argmax: one channel instead of two.
    """
    on_device = isinstance(scores, torch.Tensor)
    if on_device:
        scores, where = scores.float(), torch.where
    else:
        scores, where = scores.astype(np.float32, copy=False), np.where

    def filtered(x):
        if guide is None or radius <= 0:
            return x
        if prepared is None:
            make = TorchGuidedFilter(guide, radius, eps, subsample, scores.device) if on_device else \
                GuidedFilter(guide, radius, eps, subsample)
            return make(x, guide)
        return prepared(x, guide)

    if scores.shape[2] == 2:
        diff = filtered(upsample_scores(scores[..., 1] - scores[..., 0], stride, size)[..., 0])
        return np.where(_host(diff > 0), label_values[1], label_values[0]).astype(label_values.dtype, copy=False)
    chunk = max(1, LABEL_CHUNK_BYTES // (4 * size[0] * size[1]))
    best = winner = None
    for k in range(0, scores.shape[2], chunk):  # filtering is per label: a few labels at a time, the same argmax
        part = filtered(upsample_scores(scores[..., k:k + chunk], stride, size))
        if on_device:
            value, index = part.max(2)
        else:
            index = np.argmax(part, axis=2)
            value = np.take_along_axis(part, index[..., None], 2)[..., 0]
        if best is None:
            best, winner = value, index
        else:
            better = value > best  # ties keep the earlier label, as one argmax over all
            best, winner = where(better, value, best), where(better, index + k, winner)
    return label_values[_host(winner)]


def _host(x) -> np.ndarray:
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else x


#: What a `FrameRefiner` keeps at most of its frames' guided filters, bytes (a 100-frame 480p RGB video's).
KEEP_BYTES = 192 * 2**20


class FrameRefiner:
    """`refine_labels` of the frames of `video` with the frame as guide (stretched by `intensity`,
    `video.intensity_range()`): an RGB frame guides over `COLOUR_RADIUS_CELLS` grid cells (fast
    guided filter), a gray one over half a cell; `intensity` None: plain bilinear.

    With `keep`, each frame's `GuidedFilter` is kept once built (about 1.5 MB per 480p RGB frame,
    half the frame's PML embeddings; 8 bytes per pixel of a gray frame), so labelling a frame again
    costs only the steps that depend on the scores: for sessions that relabel the video at every
    click (PML). At most `KEEP_BYTES` are kept (the most recently used frames'): a long video's
    frames are then prepared again at each pass.

    device: None, OpenCV on the host; a torch device, the filter in torch there
    (`TorchGuidedFilter`; sessions on a GPU, `refine_device`): scores (numpy or tensors), the
    frame's guide and the kept statistics go to the device, and only the labels come back."""

    def __init__(self, video, stride: float, intensity: tuple[float, float] | None, keep: bool = False,
                 device: str | torch.device | None = None):
        self.video, self.stride, self.intensity, self.keep = video, stride, intensity, keep
        self.device = None if device is None else torch.device(device)
        self._filters: OrderedDict[int, GuidedFilter] = OrderedDict()
        self._kept_bytes = 0

    def __call__(self, t: int, scores, label_values: np.ndarray) -> np.ndarray:
        size = tuple(self.video.shape[1:3])
        scores = _host(scores) if self.device is None else torch.as_tensor(scores).to(self.device)
        if self.intensity is None:
            return refine_labels(scores, label_values, self.stride, size)
        frame = self.video[t]
        guide = frame_guide(frame, self.intensity, self.device)
        if frame.ndim == 3:
            radius, eps = max(1, round(COLOUR_RADIUS_CELLS * self.stride)), COLOUR_EPS
            subsample = max(1, round(COLOUR_SUBSAMPLE_CELLS * self.stride))
        else:
            radius, eps = max(1, int(self.stride) // 2), GRAY_EPS
            subsample = max(1, round(GRAY_SUBSAMPLE_CELLS * self.stride))
        prepared = self._filters.get(t)
        if prepared is None:
            prepared = GuidedFilter(guide, radius, eps, subsample) if self.device is None else \
                TorchGuidedFilter(guide, radius, eps, subsample, self.device)
            if self.keep:
                self._filters[t] = prepared
                self._kept_bytes += prepared.nbytes
                while self._kept_bytes > KEEP_BYTES and len(self._filters) > 1:
                    self._kept_bytes -= self._filters.popitem(last=False)[1].nbytes
        else:
            self._filters.move_to_end(t)
        return refine_labels(scores, label_values, self.stride, size, guide, radius, eps, subsample, prepared)


def refine_frame(video, t: int, scores, label_values: np.ndarray, stride: float,
                 intensity: tuple[float, float] | None, device: str | torch.device | None = None) -> np.ndarray:
    """`refine_labels` of frame t of `video`, guided by the frame (`FrameRefiner`, nothing kept)."""
    return FrameRefiner(video, stride, intensity, device=device)(t, scores, label_values)


def refine_device(device: str | torch.device) -> torch.device | None:
    """Where a session on `device` refines its labels (`FrameRefiner`): on a GPU, the GPU; on the
    CPU, None (OpenCV, 2-3x faster there than torch)."""
    device = torch.device(device)
    return device if device.type == "cuda" else None


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
