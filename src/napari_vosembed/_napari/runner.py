"""The dock's work on sessions: runs over all frames or one way, and the live update after an edit.

A run asks the session store for the method's session of the video (opened in a worker the first
time) and runs `session.segment` in a worker. A live update labels the frame in view at once
(`session.predict_frame`) and the rest of the video in a worker (`session.segment(live=True)`),
cancelled by the next edit. Every job reports its progress through `status` and calls `on_state`
when it starts and ends (the dock enables and disables its buttons then).
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import MethodError, VosEmbedError
from ..progress import Progress
from ..sessions import SessionStore
from .progress_panel import duration
from .workers import Job


class Runner:
    """Runs and live updates of one dock; `settings`: see `SessionStore`."""

    def __init__(self, status: Callable[[str], None], on_state: Callable[[], None], settings=None,
                 on_step: Callable[[str, Progress, float | None], None] | None = None):
        self._status = status
        self._on_step = on_step
        self._on_state = on_state
        self.store = SessionStore(self.start_job, settings)
        self.run_job: Job | None = None
        self.live_job: Job | None = None
        self.encode_job: Job | None = None
        #: an edit came while a run was under way: the dock updates once the run ends
        self.live_pending = False
        self.on_idle: Callable[[], None] | None = None
        #: called with (session, labels) after each result for the whole video (a run or a live update)
        self.on_video: Callable | None = None
        self._latest: Job | None = None

    def start_job(self, work, desc: str, on_result, on_done=None, keep=None, quiet: bool = False) -> Job:
        """Start `work()` (a progress generator) in a worker, handing the job to `keep` first (so that a
        cancel reaches it even while it runs synchronously); also how the store runs its work. A
        `quiet` job (work ahead of the user) shows no progress and says nothing when it ends."""
        def done(job):
            if on_done is not None:
                on_done(job)
            latest = self._latest
            if job.cancelled and not quiet:
                self._status(f"{desc}: cancelled")
            elif latest is not None and latest.finished and not (latest.cancelled or latest.failed or self.running):
                self._status(f"{latest.desc}: done in {duration(latest.seconds)}")
            self._on_state()
            if self.live_pending and not self.busy and self.on_idle is not None:
                self.on_idle()

        def progress(step):
            if quiet:
                return
            if self._on_step is not None:
                self._on_step(desc, step, job.eta_s)
            else:
                self._status(f"{desc}: {step.stage} {step.done}/{step.total}")

        job = Job(work, desc, on_progress=progress, on_result=on_result, on_done=done, show_progress=not quiet)
        if keep is not None:
            keep(job)
        if not quiet:
            self._latest = job  # the status line tells how the latest job ended (one it started may end first)
            self._status(desc)
        job.start()
        self._on_state()
        return job

    @property
    def busy(self) -> bool:
        """True while a session opens or a run is under way (live updates do not count)."""
        return self.store.busy or (self.run_job is not None and self.run_job.running)

    @property
    def running(self) -> bool:
        return self.busy or (self.live_job is not None and self.live_job.running)

    def run(self, video_key, video, method, prompts, start: int | None, direction: int, desc: str,
            write: Callable, then: Callable | None = None) -> None:
        """`method` on every frame (`start` None) or one way from `start`; `write(labels)` at the end,
        then `then(session)` (after `on_video`)."""
        if self.busy:
            raise VosEmbedError("a job is running: wait for it or press Cancel")
        if self.live_job is not None:
            self.live_job.cancel()

        def go(session):
            self.start_job(lambda: session.segment(prompts, start, direction), desc,
                           self._video(session, write, then), keep=lambda job: setattr(self, "run_job", job))

        self.store.session(video_key, video, method, go)

    def live(self, video_key, video, method, prompts, t: int, write: Callable, wanted: Callable[[], bool],
             applied: Callable[[], None]) -> None:
        """Frame t of `method` from `prompts` at once, then the others in a worker; `write(items)`
        takes (frame, labels) pairs. With the prompt model and clicks or boxes on frame t, frame t is
        its masks, shown as soon as the frame is encoded (before the method's session opens);
        otherwise an interactive session's `predict_frame`. `wanted()` tells whether the update is
        still wanted once the session is ready; `applied()` is called once frame t is written."""
        for job in (self.live_job, self.encode_job):
            if job is not None:
                job.cancel()
        masks = self.store.prompt_masks(video_key, video, str(method.device))
        quick = getattr(method.params, "prompt_model", "none") != "none" and t in masks.frames(prompts)

        def follow(session):
            if not wanted():
                return
            if not quick:
                try:
                    write([(t, session.predict_frame(prompts, t))])
                    self._status(f"frame {t} updated; the other frames follow")
                except MethodError:
                    pass  # no answer for this frame by itself: the whole video follows
                except VosEmbedError as err:
                    self._status(str(err))
                    return
                applied()

            self.start_job(lambda: session.segment(prompts, live=True), "updating all frames",
                           self._video(session, lambda labels: write(enumerate(labels))),
                           keep=lambda job: setattr(self, "live_job", job))

        def show(_=None):
            if not wanted():
                return
            try:
                write([(t, masks.frame_labels(prompts, t))])
            except VosEmbedError as err:
                self._status(str(err))
                return
            applied()
            self._status(f"frame {t} updated; the other frames follow")
            self.store.session(video_key, video, method, follow, prompts)

        if quick:
            self.start_job(lambda: masks.encode([t]), f"prompt model: encoding frame {t}", show,
                           keep=lambda job: setattr(self, "live_job", job))
        else:
            self.store.session(video_key, video, method, follow, prompts)

    def _video(self, session, write: Callable, then: Callable | None = None) -> Callable:
        """`write`, then `on_video` with the session that made the labels, then `then(session)`."""
        def written(labels):
            write(labels)
            if self.on_video is not None:
                self.on_video(session, labels)
            if then is not None:
                then(session)

        return written

    def embed(self, video_key, video, method) -> None:
        """Compute ahead of the first click what `method` needs: its session (the backbone's embedding
        of every frame) and, with the prompt model, every frame's encoding."""
        if self.busy:
            raise VosEmbedError("a job is running: wait for it or press Cancel")
        for job in (self.live_job, self.encode_job):
            if job is not None:
                job.cancel()

        def encode(session):
            if getattr(method.params, "prompt_model", "none") == "none":
                return
            self.start_job(lambda: session.prompt_masks.encode(range(len(video))),
                           "computing embeddings", lambda _: None,
                           keep=lambda job: setattr(self, "run_job", job))

        self.store.session(video_key, video, method, encode)

    def pre_encode(self, video_key, video, method, t: int) -> None:
        """Encode frame t for the prompt model in the background, so that a first click there waits
        for nothing but the decoder (a method reading clicks as they are: nothing to do)."""
        if getattr(method.params, "prompt_model", "none") == "none" or self.running:
            return
        if self.encode_job is not None:
            self.encode_job.cancel()
        masks = self.store.prompt_masks(video_key, video, str(method.device))
        self.start_job(lambda: masks.encode([t]), f"prompt model: encoding frame {t}", lambda _: None,
                       keep=lambda job: setattr(self, "encode_job", job), quiet=True)

    def cancel(self) -> None:
        self.store.cancel()
        for job in (self.run_job, self.live_job, self.encode_job):
            if job is not None:
                job.cancel()
