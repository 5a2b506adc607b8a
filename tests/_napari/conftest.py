"""Fixtures of the napari tests: a small clip opened through our reader, the dock widget docked
from the manifest, the tiny test backbone, simulated mouse clicks and captured notifications."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import pytest

from napari_vosembed.engine.cache import EmbeddingSettings
from napari_vosembed.io import write_png_labels
from napari_vosembed.metrics import db_eval_iou
from napari_vosembed.sample import sample_clip

TINY = EmbeddingSettings(backbone="tiny", scale=1.0, levels=(4, 8), saliency_stride=0)
CLIP = (12, 120, 160)  # frames, height, width: small, so that a test embeds it in about a second
WIDGET = "Video object segmentation"


@pytest.fixture(autouse=True)
def tiny_embeddings(monkeypatch):
    """PML sessions of the widget embed with the tiny test backbone (no ISNet file needed)."""
    from napari_vosembed._napari import widget

    monkeypatch.setattr(widget, "EMBEDDING_SETTINGS", TINY)


@pytest.fixture(autouse=True)
def _no_saved_reader_preferences(monkeypatch):
    """Reader preferences set by a test (our plugin's activation sets some) are undone after it."""
    from napari.settings import get_settings

    settings = get_settings()
    monkeypatch.setattr(settings.plugins, "extension2reader", dict(settings.plugins.extension2reader))


def write_sequence(root, n=CLIP[0], height=CLIP[1], width=CLIP[2], name="horse"):
    """The sample clip as a sequence folder (lossless PNG frames + masks); returns (path, masks)."""
    frames, masks = sample_clip(n, height, width)
    seq = root / name
    (seq / "frames").mkdir(parents=True)
    names = [f"{t:05d}" for t in range(n)]
    for stem, frame in zip(names, frames):
        cv2.imwrite(str(seq / "frames" / f"{stem}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    write_png_labels(masks, seq / "masks", names)
    return seq, masks


@dataclass
class Clip:
    viewer: object
    widget: object
    image: object
    ground_truth: object
    masks: np.ndarray
    path: object = None

    def J(self, labels=None, frames=None) -> float:
        """Mean region similarity of the output (object 1) against the ground truth."""
        labels = np.asarray(self.widget.output.value.data if labels is None else labels)
        frames = range(len(self.masks)) if frames is None else frames
        return float(np.mean([db_eval_iou(self.masks[t] == 1, labels[t] == 1) for t in frames]))

    def errors(self, severity: str = "ERROR") -> list[str]:
        """The notifications of `severity` (ERROR, WARNING, ...) since the clip opened."""
        from napari.utils.notifications import NotificationSeverity, notification_manager

        return [str(n.message) for n in notification_manager.records[self._start:]
                if n.severity == getattr(NotificationSeverity, severity)]


@pytest.fixture
def clip(make_napari_viewer, tmp_path):
    """A viewer with the clip opened through our reader and the widget docked from the manifest."""
    from napari.utils.notifications import notification_manager

    seq, masks = write_sequence(tmp_path)
    viewer = make_napari_viewer()
    image, ground_truth = viewer.open(str(seq), plugin="napari-vosembed")
    _, widget = viewer.window.add_plugin_dock_widget("napari-vosembed", WIDGET)
    c = Clip(viewer, widget, image, ground_truth, masks, seq)
    c._start = len(notification_manager.records)
    return c


@dataclass
class MouseEvent:
    """What napari's mouse callbacks read from a vispy mouse event."""

    type: str
    position: tuple
    modifiers: list = field(default_factory=list)
    is_dragging: bool = False
    pos: np.ndarray = field(default_factory=lambda: np.zeros(2))
    view_direction: object = None
    up_direction: object = None
    dims_displayed: list = field(default_factory=lambda: [1, 2])
    button: int = 1


def _click(viewer, layer, t, y, x, modifiers=()):
    """A left click at (y, x) of frame t on `layer`, through napari's mouse callbacks: the same
    path as a click on the canvas (press, then release without moving)."""
    from napari.utils._proxies import ReadOnlyWrapper
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    viewer.dims.set_current_step(0, t)
    for kind, call in (("mouse_press", mouse_press_callbacks), ("mouse_release", mouse_release_callbacks)):
        event = ReadOnlyWrapper(MouseEvent(kind, (float(t), float(y), float(x)), list(modifiers)),
                                exceptions=("handled",))
        call(layer, event)


@pytest.fixture
def sequence_folder(tmp_path):
    """`sequence_folder(n, height, width)`: the sample clip written as a sequence folder; (path, masks)."""
    return lambda n, height, width: write_sequence(tmp_path, n, height, width, name=f"clip{n}")


@pytest.fixture
def click():
    """`click(viewer, layer, t, y, x, modifiers=())`: a left click through napari's mouse callbacks."""
    return _click
