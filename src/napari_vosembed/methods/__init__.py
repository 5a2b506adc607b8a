"""The method registry and the one entry point, `segment()`.

Every method is a class derived from `Method` and registered with `@register_method`. Running it
is a generator (`Method.run`) that yields `Progress` and returns the `(T, H, W)` label volume, so
the CLI draws a progress bar, the napari widget wraps it in a `thread_worker`, and closing the
generator cancels the work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import MethodError
from ..progress import Progress
from ..prompts import Prompts


class Method:
    """Base class of a segmentation method.

    Subclasses set `name`, `description`, `needs_prompts` (False for unsupervised methods),
    `propagates` (True when the method can run forward / backward from a frame), `shares_pml_session`
    (True when it can run on an open PML session of the video), a `Params` dataclass of their few
    user-facing parameters, and implement `run`.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    needs_prompts: ClassVar[bool] = True
    propagates: ClassVar[bool] = False
    #: Whether the method runs on an open PML session of the video (`open_session`, `segment_with`):
    #: the viewer shares its PML session (embeddings, anchor graph) with it and keeps the method's
    #: own session between runs.
    shares_pml_session: ClassVar[bool] = False
    #: Rank among installed methods for "the best available method" (higher is better).
    quality: ClassVar[int] = 0

    @dataclass
    class Params:
        pass

    def __init__(self, device: str = "auto", **params: Any):
        from ..engine.backbone import resolve_device

        self.device = resolve_device(device)
        names = {f.name for f in dataclasses.fields(self.Params)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise MethodError(
                f"method {self.name!r} has no parameter {', '.join(unknown)}; "
                f"its parameters are: {', '.join(sorted(names)) or 'none'}"
            )
        self.params = self.Params(**params)

    def run(self, video, prompts: Prompts | None) -> Generator[Progress, None, np.ndarray]:
        """Segment every frame; yields `Progress`, returns the `(T, H, W)` labels."""
        raise NotImplementedError

    def propagate(self, video, prompts: Prompts, start: int, direction: int
                  ) -> Generator[Progress, None, np.ndarray]:
        """Labels of the frames from `start` on (direction +1) or up to it (-1), propagated from the
        prompts; the other frames are 0. Methods with `propagates = True` implement it."""
        raise MethodError(f"method {self.name!r} does not propagate; use segment instead")

    @classmethod
    def pml_head(cls, head: str | None) -> str | None:
        """The head of the PML session that goes with this method's `head` parameter (None: the raw
        features); methods with `shares_pml_session` that train their own head override it."""
        return head

    def open_session(self, video, matcher=None) -> Generator[Progress, None, Any]:
        """This method's session of `video`, sharing `matcher`, an open PML session of it, for one run
        or many (`segment_with`). Methods with `shares_pml_session = True` implement it."""
        raise MethodError(f"method {self.name!r} does not run on a PML session")

    def segment_with(self, session, prompts: Prompts, start: int | None = None, direction: int = 0, matcher=None
                     ) -> Generator[Progress, None, np.ndarray]:
        """Labels from `prompts` on an open `session`: every frame, or with `start` and `direction`
        one way from that frame (as `propagate`). Methods with `shares_pml_session = True` implement it."""
        raise MethodError(f"method {self.name!r} does not run on a PML session")


_REGISTRY: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator that makes a method available by its `name`."""
    _REGISTRY[cls.name] = cls
    return cls


def available_methods() -> dict[str, type[Method]]:
    """The installed methods by name, best first."""
    return dict(sorted(_REGISTRY.items(), key=lambda item: -item[1].quality))


def get_method(name: str) -> type[Method]:
    if not _REGISTRY:
        raise MethodError("no segmentation method is installed yet")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MethodError(f"unknown method {name!r}; installed: {', '.join(available_methods())}") from None


def best_method() -> str:
    """Name of the best installed method; MethodError when there is none."""
    if not _REGISTRY:
        raise MethodError("no segmentation method is installed yet")
    return next(iter(available_methods()))


def iter_segment(
    video, prompts: Prompts | None = None, method: str | None = None, device: str = "auto", **params: Any
) -> Generator[Progress, None, np.ndarray]:
    """Generator form of `segment`: yields `Progress`, returns the label volume."""
    from ..io import as_video

    video = as_video(video)
    cls = get_method(method or best_method())
    if cls.needs_prompts:
        if prompts is None:
            prompts = Prompts()
        prompts.validate(len(video), *video.shape[1:3])
    labels = yield from cls(device=device, **params).run(video, prompts)
    return labels


def segment(
    video,
    prompts: Prompts | None = None,
    method: str | None = None,
    device: str = "auto",
    progress: Callable[[Progress], None] | None = None,
    **params: Any,
) -> np.ndarray:
    """Segment `video` (a path, a `Video` or a `(T, H, W[, 3])` array) from `prompts` with `method`
    (default: the best installed) on `device` ("auto", "cpu" or "cuda"); returns `(T, H, W)` labels."""
    gen = iter_segment(video, prompts, method, device, **params)
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(step)


from . import pml, tvos  # noqa: E402  (registers the methods; they need the names above)

__all__ = ["Method", "available_methods", "best_method", "get_method", "iter_segment", "pml", "register_method",
           "segment", "tvos"]
