"""A method added in one file, known to nothing else, works in the dock: it is listed with its
parameters, segments all frames, propagates, and follows every click.

The method is registered here only (not shipped): each pixel takes the label of the nearest mean
colour of the clicked pixels of each label (background included: negative clicks)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from napari_vosembed.methods import Method, Progress, Session, base


class NearestColour(Method):
    name = "nearest-colour"
    title = "Nearest colour (a test method)"
    interactive = True
    propagates = True
    quality = -1

    @dataclass
    class Params:
        spread: float = field(default=1.0, metadata={"help": "scale of the colour distance"})

    def create_session(self, video, shared, settings):
        opened.append(len(video))
        yield Progress(1, 1, "opening")
        return NearestColourSession(self, video)


class NearestColourSession(Session):
    def _means(self, prompts):
        ref = prompts.reference_pixels(*self.video.shape[1:3])
        colours = np.stack([np.asarray(self.video[f], np.float32)[y, x] for f, y, x in zip(ref.frame, ref.y, ref.x)])
        labels = np.unique(ref.label)
        return labels, np.stack([colours[ref.label == v].mean(0) for v in labels])

    def predict_frame(self, prompts, t):
        labels, means = self._means(prompts)
        frame = np.asarray(self.video[t], np.float32)
        distance = ((frame[:, :, None, :] - means) ** 2).sum(-1) * self.params.spread
        return labels[distance.argmin(-1)].astype(np.uint8)

    def segment(self, prompts, start=None, direction=0, live=False):
        self.check(prompts, start, direction)
        n = len(self.video)
        frames = range(n) if start is None else range(start, n) if direction > 0 else range(start + 1)
        out = np.zeros((n, *self.video.shape[1:3]), np.uint8)
        for i, t in enumerate(frames, 1):
            out[t] = self.predict_frame(prompts, t)
            yield Progress(i, len(frames), "colours")
        calls.append((start, direction, live))
        return out


opened: list = []
calls: list = []


@pytest.fixture
def fourth(monkeypatch):
    monkeypatch.setitem(base.METHODS.all(), NearestColour.name, NearestColour)
    opened.clear()
    calls.clear()


def test_a_method_registered_in_one_file_appears_runs_propagates_and_follows_clicks(fourth, clip, click):
    viewer, w = clip.viewer, clip.widget
    w.reset_choices()
    assert NearestColour.name in w.method.choices
    w.method.value = NearestColour.name
    assert w.params() == {"spread": 1.0}
    assert not w.instant.native.isHidden() and w.forward_button.enabled and w.backward_button.enabled
    points = w.add_points_layer()
    mask = clip.masks[6]
    y, x = np.argwhere(mask)[len(np.argwhere(mask)) // 2]
    click(viewer, points, 6, y, x)  # the first click: the frame in view at once, the rest after it
    by, bx = np.argwhere(~mask.astype(bool))[0]
    click(viewer, points, 6, by, bx, modifiers=["Shift"])
    out = w.output.value.data
    assert out[6, y, x] == 1 and out[6, by, bx] == 0 and out.any(axis=(1, 2)).all()
    assert calls[-1] == (None, 0, True) and opened == [len(out)]  # live: every frame, one session
    w.output.value.data[:] = 0
    viewer.dims.set_current_step(0, 6)
    w.forward_button.clicked.emit()
    assert calls[-1] == (6, 1, False) and out[6:].any() and not out[:6].any()
    w.segment_button.clicked.emit()
    assert calls[-1] == (None, 0, False) and out.any(axis=(1, 2)).all()
    assert opened == [len(out)] and clip.errors() == []
