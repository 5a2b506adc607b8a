"""The segmentation methods and the one entry point, `segment()`.

Every method is a module of this package (or of another package, through the entry-point group
`napari_vosembed.methods`) that registers a `Method` with `@register_method`; `base` holds the
contract every method follows (`Method.open_session` -> `Session.segment` /
`Session.predict_frame`). `segment()` opens a session and segments every frame with it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import numpy as np

from ..progress import Progress
from ..prompts import Prompts
from .base import Method, Session, available_methods, best_method, get_method, register_method


def iter_segment(
    video, prompts: Prompts | None = None, method: str | None = None, device: str = "auto", out=None, **params: Any
) -> Generator[Progress, None, np.ndarray]:
    """Generator form of `segment`: yields `Progress`, returns the label volume."""
    from ..io import as_video

    video = as_video(video)
    m = get_method(method or best_method())(device=device, **params)
    prompts = Prompts() if prompts is None else prompts
    if m.needs_prompts:
        prompts.validate(len(video), *video.shape[1:3])
    session = yield from m.open_session(video, labels_in_memory=out is None)
    if out is None:  # methods of other packages written before `out` need not take it
        return (yield from session.segment(prompts))
    return (yield from session.segment(prompts, out=out))


def iter_embed(video, method: str | None = None, device: str = "auto", **params: Any
               ) -> Generator[Progress, None, Session]:
    """What `method` computes before any prompt, cached on disk for later runs and the viewer: the
    backbone's embedding of every frame (opening the session) and, when the method reads clicks and
    boxes through the prompt model, every frame's encoding. Yields `Progress`, returns the session."""
    from ..io import as_video

    video = as_video(video)
    m = get_method(method or best_method())(device=device, **params)
    session = yield from m.open_session(video)
    if getattr(m.params, "prompt_model", "none") != "none":
        yield from session.prompt_masks.encode(range(len(video)))
    return session


def segment(
    video,
    prompts: Prompts | None = None,
    method: str | None = None,
    device: str = "auto",
    progress: Callable[[Progress], None] | None = None,
    out=None,
    **params: Any,
) -> np.ndarray:
    """Segment `video` (a path, a `Video` or a `(T, H, W[, 3])` array) from `prompts` with `method`
    (default: the best installed) on `device` ("auto", "cpu" or "cuda"); returns `(T, H, W)` labels,
    written frame by frame into `out` when given (a Zarr array: `io.zarr_labels`), else in memory."""
    gen = iter_segment(video, prompts, method, device, out, **params)
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(step)


__all__ = ["Method", "Progress", "Session", "available_methods", "best_method", "get_method", "iter_embed",
           "iter_segment", "register_method", "segment"]
