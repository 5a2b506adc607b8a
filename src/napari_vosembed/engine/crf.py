"""Dense CRF on a frame's label probabilities: mean-field inference with edge-aware filtering.

The fully connected CRF of Kraehenbuehl and Koltun (NIPS 2011), Potts compatibility, two kernels:
an appearance kernel (pixels of similar colour nearby) and a smoothness kernel (pixels nearby). Each
mean-field step filters the current marginals Q with both kernels and sets
Q_i(l) ~ exp(log P_i(l) + w_a [K_a Q(l)]_i + w_s [K_s Q(l)]_i) (their Eq. 5 with Potts, up to a
constant per pixel). The bilateral appearance filter is approximated by the guided filter (He et
al. 2010) guided by the frame, which is edge-aware at the cost of a few box filters (the fast
guided filter, its coefficients on a subsampled grid); the smoothness kernel is a Gaussian. No
extra dependency (pydensecrf, the usual implementation, has no maintained wheels); its cost per
frame is in `vosembed benchmark masktrack` (the flow + CRF row).
"""

from __future__ import annotations

import cv2
import numpy as np

from .refine import GuidedFilter, frame_guide, upsample_scores

#: (weight, radius in pixels, regulariser) of the appearance kernel, (weight, sigma in pixels) of the
#: smoothness kernel, and the mean-field steps.
APPEARANCE = (4.0, 24, 1e-2)
SMOOTHNESS = (1.0, 3.0)
STEPS = 5


def dense_crf(guide: np.ndarray, probabilities: np.ndarray, steps: int = STEPS,
              appearance: tuple[float, int, float] = APPEARANCE, smoothness: tuple[float, float] = SMOOTHNESS
              ) -> np.ndarray:
    """Mean-field marginals (H, W, K) of the dense CRF whose unaries are -log `probabilities`
    (H, W, K), guided by `guide` ((H, W) or (H, W, 3) float32 in [0, 1]); module docstring."""
    weight_a, radius, eps = appearance
    weight_s, sigma = smoothness
    unary = np.log(np.clip(probabilities.astype(np.float32), 1e-6, 1.0))
    subsample = max(1, radius // 8)
    appearance_filter = GuidedFilter(guide, radius, eps, subsample)
    q = _softmax(unary)
    for _ in range(steps):
        message = weight_a * appearance_filter(q, guide).reshape(q.shape)
        message += weight_s * cv2.GaussianBlur(q, (0, 0), sigma).reshape(q.shape)
        q = _softmax(unary + message)
    return q


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def crf_frame(video, t: int, scores: np.ndarray, label_values: np.ndarray, stride: float,
              intensity: tuple[float, float]) -> np.ndarray:
    """Full-resolution labels of frame t of `video` from its (h, w, K) grid probabilities over
    `label_values`: bilinearly upsampled, then `dense_crf` guided by the frame (`intensity`:
    `video.intensity_range()`)."""
    size = tuple(video.shape[1:3])
    marginals = dense_crf(frame_guide(video[t], intensity), upsample_scores(scores.astype(np.float32), stride, size))
    return label_values[marginals.argmax(-1)]
