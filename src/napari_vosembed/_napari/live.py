"""Following the prompts: after every edit, the frame in view at once and the rest of the video in
the background (`Runner.live`), and the frame in view encoded for the prompt model ahead of a click.

Edits closer together than `LIVE_DELAY_MS` are handled as one; the frame in view is encoded once
the viewer rests on it for `ENCODE_DELAY_MS`.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QTimer

from ..errors import VosEmbedError
from . import layers as L
from .workers import guarded, notify_error, sync_workers

LIVE_DELAY_MS = 40
ENCODE_DELAY_MS = 150


def _timer(parent, interval_ms: int, slot) -> QTimer:
    """A single-shot timer: `start()` (again) calls `slot` once, `interval_ms` after the last start."""
    timer = QTimer(parent)
    timer.setSingleShot(True)
    timer.setInterval(interval_ms)
    timer.timeout.connect(slot)
    return timer


class Live:
    """The live updates of one dock (`dock`: the `SegmentWidget`)."""

    def __init__(self, dock):
        self.dock = dock
        self.signature = None
        self.timer = _timer(dock, LIVE_DELAY_MS, self.update)
        self.encode_timer = _timer(dock, ENCODE_DELAY_MS, guarded(self.pre_encode))

    def method_is_live(self) -> bool:
        """Whether the chosen method with these parameters answers an edit at once (`Method.live`)."""
        try:
            return self.dock._method().live
        except VosEmbedError:
            return False

    def enabled(self) -> bool:
        d = self.dock
        return bool(d.instant.value) and d.image.value is not None and self.method_is_live()

    def _signature(self):
        d = self.dock
        return hash((id(d.image.value), d.method.value, d.device.value, repr(d.params()),
                     d.prompt_layers.signature()))

    def schedule(self) -> None:
        d = self.dock
        if d.prompt_layers.writing or not d._alive() or not self.enabled():
            return
        if sync_workers():
            self.update()
        else:
            self.timer.start()

    def update(self) -> None:
        """Follow the prompts: label the frame in view now and the other frames in a worker."""
        d = self.dock
        if not self.enabled():
            return
        if d.runner.busy:
            d.runner.live_pending = True
            return
        try:
            image = d._require_image()
            prompts = d.prompts(image)
            signature = self._signature()
            if signature == self.signature and not d.runner.live_pending:
                return
            d.runner.live_pending = False
            if not prompts.object_ids:
                # nothing to segment (e.g. the last positive click was deleted): clear the output
                if d.runner.live_job is not None:
                    d.runner.live_job.cancel()
                self.signature = signature
                if d.output.value is not None:
                    n, height, width = L.video_shape(image)
                    d.out.write(image, ((t, np.zeros((height, width), np.uint8)) for t in range(n)))
                d._set_status("click an object (a positive click), draw a box or paint a mask")
                return

            def applied():
                self.signature = signature

            d.runner.live(image.unique_id, L.image_video(image), d._method(), prompts,
                          L.frame_in_view(d.viewer, image), lambda items: d.out.write(image, items),
                          lambda: d.image.value is image and self.enabled(), applied)
        except VosEmbedError as err:
            d._set_status(str(err))
        except Exception as err:  # noqa: BLE001
            notify_error(err)

    def encode_soon(self, *_) -> None:
        self.encode_timer.start()

    def pre_encode(self) -> None:
        """With a clicks or boxes layer chosen, the prompt model encodes the frame in view ahead of a click."""
        d = self.dock
        image = d.image.value
        if image is None or (d.points.value is None and d.boxes.value is None) or not d._alive():
            return
        d.runner.pre_encode(image.unique_id, L.image_video(image), d._method(), L.frame_in_view(d.viewer, image))

    def stop(self) -> None:
        self.timer.stop()
        self.encode_timer.stop()

    @property
    def waiting(self) -> bool:
        return self.timer.isActive()
