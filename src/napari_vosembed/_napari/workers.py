"""Long work (embedding, retrieval, propagation) off the main thread, with napari progress bars.

The library's long functions are generators that yield `Progress(done, total, stage)` and return
their result. `Job` runs one in a napari thread worker, draws a napari progress bar (with a cancel
button in the activity dock), and calls back on the main thread with the result, the error, or
nothing when cancelled. Cancelling quits the worker and closes the library generator, which stops
the library's work at its next step.

`VOSEMBED_SYNC_WORKERS=1` (set by the test suite) runs every job synchronously in the calling
thread instead: same callbacks, same cancellation, deterministic tests. It is read here and
nowhere else.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Generator
from typing import Any

from ..errors import VosEmbedError
from ..progress import Progress

log = logging.getLogger(__name__)

SYNC_ENV = "VOSEMBED_SYNC_WORKERS"


def sync_workers() -> bool:
    """True when jobs must run synchronously (`VOSEMBED_SYNC_WORKERS` set to 1 / true / yes)."""
    return os.environ.get(SYNC_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def error_message(err: BaseException) -> str:
    """The message a user sees: the library's own message for the errors a user can cause."""
    if isinstance(err, VosEmbedError):
        return str(err)
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def notify_error(err: BaseException | str) -> None:
    """Show an error as a napari notification (never raises)."""
    from napari.utils.notifications import show_error

    if isinstance(err, BaseException) and not isinstance(err, VosEmbedError):
        log.error("napari-vosembed: unexpected error", exc_info=err)
    show_error(err if isinstance(err, str) else error_message(err))


def guarded(func):
    """A button handler that turns every error into a notification."""

    def handler(*_):
        try:
            func()
        except Exception as err:  # noqa: BLE001
            notify_error(err)

    return handler


def _make_bar(desc: str, total: int, on_cancel: Callable[[], None]):
    from napari.utils import cancelable_progress

    class _Bar(cancelable_progress):
        def cancel(self) -> None:  # the activity dock's cancel button
            super().cancel()
            on_cancel()

    return _Bar(total=total, desc=desc)


class Job:
    """One library generator run in a thread worker (or synchronously, see `sync_workers`).

    on_progress(Progress), on_result(value), on_error(exception) and on_done(job) are called on
    the main thread; on_done always comes last, also after a cancel. `cancelled`, `failed` and
    `result` tell how it ended. Errors are shown as notifications unless `on_error` is given.
    """

    def __init__(
        self,
        make: Callable[[], Generator[Progress, Any, Any]],
        desc: str,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        on_result: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_done: Callable[[Job], None] | None = None,
        show_progress: bool = True,
    ):
        self._make = make
        self.desc = desc
        self._on_progress = on_progress
        self._on_result = on_result
        self._on_error = on_error
        self._on_done = on_done
        self._show_progress = show_progress
        self._bar = None
        self._drawing = False
        self._stage: str | None = None
        self._gen: Generator | None = None
        self._worker = None
        self.cancelled = False
        self.failed = False
        self.finished = False
        self.result: Any = None
        self.last_progress: Progress | None = None
        self._started: float | None = None
        self._ended: float | None = None
        self._stage_since: tuple[float, int] | None = None  # (time, done) at the stage's first step

    @property
    def seconds(self) -> float:
        """How long the job ran (so far, while it runs)."""
        if self._started is None:
            return 0.0
        return (self._ended if self._ended is not None else time.monotonic()) - self._started

    @property
    def eta_s(self) -> float | None:
        """Seconds left in the current stage at the rate of its steps so far (None before two steps)."""
        step = self.last_progress
        if step is None or self._stage_since is None or step.done <= self._stage_since[1]:
            return None
        since, first = self._stage_since
        return (time.monotonic() - since) / (step.done - first) * max(step.total - step.done, 0)

    # -- control -------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._gen is not None and not self.finished

    def start(self) -> Job:
        self._started = time.monotonic()
        self._gen = self._make()
        if sync_workers():
            self._run_sync()
        else:
            self._start_thread()
        return self

    def cancel(self) -> None:
        """Stop at the next step; the result is dropped and on_done still comes."""
        if self.finished or self.cancelled:
            return
        self.cancelled = True
        if self._worker is not None:
            self._worker.quit()

    # -- the two ways to run -------------------------------------------------------------------
    def _run_sync(self) -> None:
        gen = self._gen
        try:
            while not self.cancelled:
                try:
                    step = next(gen)
                except StopIteration as stop:
                    self._returned(stop.value)
                    break
                self._yielded(step)
        except Exception as err:  # noqa: BLE001 - every error becomes a notification
            self._errored(err)
        finally:
            gen.close()
            self._finish()

    def _start_thread(self) -> None:
        from napari.qt.threading import GeneratorWorker

        gen = self._gen

        def work():
            # A generator function, so that napari's GeneratorWorker checks `quit()` between steps.
            result = yield from gen
            return result

        worker = GeneratorWorker(work)
        worker.yielded.connect(self._yielded)
        worker.returned.connect(self._returned)
        worker.errored.connect(self._errored)
        worker.finished.connect(self._finish)
        self._worker = worker
        worker.start()

    # -- callbacks (main thread) ---------------------------------------------------------------
    def _yielded(self, step) -> None:
        if self.cancelled or not isinstance(step, Progress):
            return
        if self.last_progress is None or step.stage != self.last_progress.stage or step.done < self.last_progress.done:
            self._stage_since = (time.monotonic(), step.done)
        self.last_progress = step
        if self._on_progress is not None:
            self._on_progress(step)
        # napari's progress bar processes Qt events while it is made, which can deliver the next
        # steps here, and even the job's end, before this one is done: a nested step only counts
        # (one bar per stage, never a bar inside a bar), and a bar made after the end is closed
        if self._show_progress and not self._drawing:
            self._drawing = True
            try:
                if self._bar is None or step.stage != self._stage:
                    self._close_bar()
                    self._stage = step.stage
                    self._bar = _make_bar(f"{self.desc}: {step.stage}", step.total, self.cancel)
                if self.finished:
                    self._close_bar()
                else:
                    self._bar.update(max(0, step.done - self._bar.n))
            finally:
                self._drawing = False

    def _returned(self, value) -> None:
        if self.cancelled:
            return
        self.result = value
        if self._on_result is not None:
            try:
                self._on_result(value)
            except Exception as err:  # noqa: BLE001
                self._errored(err)

    def _errored(self, err: BaseException) -> None:
        if self.cancelled:
            return
        self.failed = True
        if self._on_error is not None:
            self._on_error(err)
        else:
            notify_error(err)

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._ended = time.monotonic()
        self._close_bar()
        if self._gen is not None:
            try:
                self._gen.close()  # a cancelled worker leaves the library generator suspended
            except ValueError:  # still executing in its thread: it stops at its next step
                pass
        if self._on_done is not None:
            self._on_done(self)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def wait(self, timeout_s: float = 60.0) -> bool:
        """Block, processing Qt events, until the job is done; True when it finished in time."""
        from qtpy.QtCore import QCoreApplication

        deadline = time.monotonic() + timeout_s
        while not self.finished and time.monotonic() < deadline:
            QCoreApplication.processEvents()
            time.sleep(0.005)
        return self.finished
