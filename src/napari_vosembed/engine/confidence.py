"""How sure a method is of a frame: the margin of its label scores where an object is in question.

For grid scores p (h*w cells x K labels, label 0 the background; PML's vote fractions, TVOS's
propagated distribution), a cell is in question when some object scores at least
`CONTESTED` there; the frame's confidence is the mean margin p_(1) - p_(2) between the best and
the second-best label over those cells (1: every such cell is clear-cut, 0: every one a tie), and 1
when no cell is in question. A frame whose object boundary the method could not decide, or whose
object is split between two labels, scores low: the frames a user should look at first.
"""

from __future__ import annotations

import numpy as np

#: An object's score from which a cell counts as in question.
CONTESTED = 0.1


def frame_confidence(scores: np.ndarray) -> float:
    """The confidence of one frame from its `(..., K)` label scores (column 0: background)."""
    p = np.asarray(scores, np.float32).reshape(-1, scores.shape[-1])
    if p.shape[1] < 2:
        return 1.0
    question = p[:, 1:].max(1) >= CONTESTED
    if not question.any():
        return 1.0
    top = np.sort(p[question], axis=1)[:, -2:]
    return float(np.clip(top[:, 1] - top[:, 0], 0, 1).mean())


def least_certain(confidence: np.ndarray) -> int | None:
    """The frame with the lowest confidence (None when none is known: all NaN)."""
    c = np.asarray(confidence, np.float64)
    return None if np.isnan(c).all() else int(np.nanargmin(c))
