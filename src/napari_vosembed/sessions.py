"""The open sessions of a viewer, shared between edits, runs and methods.

A viewer asks for a method's session of a video many times (every click, every run); opening one
embeds the video and builds what the method keeps, so it happens once per (video, method, session
parameters, device) and the result is kept here. Sessions that a method `requires` (TVOS: PML's)
are opened through the store too, so they are shared with the method that owns them.

The store knows no Qt: long work (opening, preparing) goes through the `start` callback its owner
gives, `start(work, desc, on_result, on_done, keep)`, where `work()` makes a progress generator,
`keep(handle)` is called before the work starts, `on_result(value)` and `on_done(handle)` when it
ends, and the handle has `running`, `failed`, `cancelled` and `cancel()` (the dock:
`_napari.workers.Job`; tests: a synchronous runner).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Hashable
from typing import Any

from .engine.prompt_model import PromptMasks
from .methods.base import Method, Session
from .progress import Progress


class _Pending:
    """A job opening (or preparing) a session, and who waits for it (the latest request only)."""

    def __init__(self, then: Callable[[Session], None]):
        self.then = then
        self.job: Any = None


class SessionStore:
    """Sessions by (video key, method, device, session parameters); see the module docstring.

    settings: the `EmbeddingSettings` of sessions opened without a trained head (None: the default).
    """

    def __init__(self, start: Callable[..., Any], settings=None):
        self._start = start
        self.settings = settings
        self._sessions: dict[tuple, Session] = {}
        self._pending: dict[tuple, _Pending] = {}
        self._prompt_masks: dict[tuple, PromptMasks] = {}

    @staticmethod
    def key(video_key: Hashable, method: Method) -> tuple:
        return (video_key, *method.session_key())

    def get(self, video_key: Hashable, method: Method) -> Session | None:
        """The open session, or None."""
        return self._sessions.get(self.key(video_key, method))

    @property
    def jobs(self) -> list:
        """The jobs opening or preparing sessions now."""
        return [p.job for p in self._pending.values() if p.job is not None and p.job.running]

    @property
    def busy(self) -> bool:
        """True while a session is being opened or prepared."""
        return bool(self.jobs)

    def session(self, video_key: Hashable, video, method: Method, then: Callable[[Session], None],
                prompts=None) -> None:
        """Call `then(session)` with `method`'s session of `video`: at once when it is open and
        ready for `prompts`, else when a job has opened (or prepared) it. While such a job runs, a new
        request for the same session replaces the callbacks of the one before (the latest edit wins)."""
        key = self.key(video_key, method)
        session = self._sessions.get(key)
        if session is not None:
            session.use(method)
            if not session.needs_preparing(prompts):
                then(session)
                return
        pending = self._pending.get(key)
        if pending is not None and pending.job is not None and pending.job.running:
            pending.then = then
            return
        pending = self._pending[key] = _Pending(then)

        def work() -> Generator[Progress, None, Session]:
            opened = self._sessions.get(key) or (yield from self._open(video_key, video, method))
            opened.use(method)
            yield from opened.prepare(prompts)
            return opened

        def finished(opened: Session) -> None:
            self._keep(key, opened)
            pending.then(opened)

        def done(job) -> None:
            if self._pending.get(key) is pending:
                del self._pending[key]

        desc = (f"opening {method.name} (the video's embeddings are computed once, then cached on disk)"
                if session is None else f"preparing {method.name}")
        self._start(work, desc, finished, done, lambda job: setattr(pending, "job", job))

    def _keep(self, key: tuple, session: Session) -> None:
        """Keep `session` under `key`, in place of the video's other sessions of the same method (one
        per method and video: what a session holds can take gigabytes)."""
        for other in [k for k in self._sessions if k[:2] == key[:2] and k != key]:
            del self._sessions[other]
        self._sessions[key] = session

    def prompt_masks(self, video_key: Hashable, video, device: str) -> PromptMasks:
        """The prompt model's view of a video (its frames' encodings, its decodings), one per video
        and device, shared by every session of the video."""
        key = (video_key, device)
        if key not in self._prompt_masks:
            self._prompt_masks[key] = PromptMasks(video, device)
        return self._prompt_masks[key]

    def _open(self, video_key: Hashable, video, method: Method) -> Generator[Progress, None, Session]:
        """Open `method`'s session, and first those it requires that are not open yet (kept too)."""
        shared = {}
        for name, required in method.required().items():
            key = self.key(video_key, required)
            if key not in self._sessions:
                self._keep(key, (yield from self._open(video_key, video, required)))
            shared[name] = self._sessions[key]
        masks = self.prompt_masks(video_key, video, str(method.device))
        return (yield from method.open_session(video, shared, self.settings, masks))

    def drop(self, video_key: Hashable | None = None, *, keep: Hashable | None = None) -> None:
        """Forget the sessions of one video (None: of all; with `keep`, of all but that one),
        cancelling their jobs."""
        def gone(k: tuple) -> bool:
            return (video_key is None or k[0] == video_key) and (keep is None or k[0] != keep)

        for key in [k for k in self._pending if gone(k)]:
            pending = self._pending.pop(key)
            if pending.job is not None:
                pending.job.cancel()
        for key in [k for k in self._sessions if gone(k)]:
            del self._sessions[key]
        for key in [k for k in self._prompt_masks if gone(k)]:
            del self._prompt_masks[key]

    def cancel(self) -> None:
        """Cancel every job under way (what is open stays)."""
        for pending in list(self._pending.values()):
            if pending.job is not None:
                pending.job.cancel()

