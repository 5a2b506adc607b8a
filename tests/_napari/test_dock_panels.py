"""The dock's panels as a user meets them: the explicit embedding step, the progress bar with the
time left, the object list, the confidence track, the Tracks layer and the hints."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_vosembed._napari.progress_panel import ProgressPanel, duration
from napari_vosembed._napari.workers import Job
from napari_vosembed.progress import Progress

FRAME = 6


def clicks_as_they_are(w):
    next(p for p in w.form.widgets if p.name == "prompt_model").value = "none"


def inside(mask, i=0):
    points = np.argwhere(ndimage.binary_erosion(mask, iterations=2))
    return points[(i * 37) % len(points)]


def test_a_job_reports_the_time_left_and_the_panel_shows_it(qapp, monkeypatch):
    clock = iter(np.arange(0.0, 100.0, 1.0))  # every reading of the clock is one second later
    monkeypatch.setattr("napari_vosembed._napari.workers.time.monotonic", lambda: float(next(clock)))
    panel = ProgressPanel()
    seen = []

    def work():
        for done in range(1, 11):
            yield Progress(done, 10, "embedding")

    job = Job(work, "opening pml", show_progress=False,
              on_progress=lambda step: (panel.step(job.desc, step, job.eta_s), seen.append(panel.status.value)))
    job.start()
    assert seen[0] == "opening pml: embedding 1/10"  # no rate yet after one step
    assert seen[2] == "opening pml: embedding 3/10, about 7.0 s left"  # 1 s per step, 7 steps to go
    assert panel.bar.maximum() == 10 and panel.bar.value() == 10
    assert duration(0.84) == "0.8 s" and duration(75) == "1 min 15 s"


def test_compute_embeddings_prepares_the_video_before_the_first_click(clip, monkeypatch):
    from napari_vosembed.engine import prompt_model

    encoded = []
    monkeypatch.setattr(prompt_model.FrameEncodings, "encode",
                        lambda self, model, frames: (encoded.extend(frames), (yield Progress(1, 1, "prompt model"))))
    monkeypatch.setattr(prompt_model.PromptMasks, "model", property(lambda self: type("M", (), {"id": "stand-in"})))
    w = clip.widget
    assert w.store.get(clip.image.unique_id, w._method()) is None
    w.embed_button.clicked.emit()
    assert w.store.get(clip.image.unique_id, w._method()) is not None  # the session: every frame embedded
    assert encoded == list(range(len(clip.masks)))  # and every frame encoded for the prompt model
    assert ": done in " in w.status.value
    assert not w.progress.bar.isVisible()
    assert clip.errors() == []


def test_the_object_list_names_chooses_and_deletes_objects(clip, click):
    viewer, w = clip.viewer, clip.widget
    clicks_as_they_are(w)
    points = w.add_points_layer()
    click(viewer, points, FRAME, *inside(clip.masks[FRAME]))
    click(viewer, points, FRAME, *inside(clip.masks[FRAME], 1))
    w.prompt_layers.next_object()
    click(viewer, points, FRAME, 5, 5)
    table = w.objects.table
    assert w.objects.ids() == [1, 2]
    assert [table.item(r, 2).text() for r in range(2)] == ["2 clicks", "1 click"]
    table.item(0, 1).setText("horse")  # typed into the list
    out = w.output.value
    assert list(out.features["name"])[:3] == ["background", "horse", "object 2"]
    assert out.get_status(position=(FRAME, *inside(clip.masks[FRAME])))["coordinates"].count("horse") == 1
    table.selectRow(0)
    assert w.object_id.value == 1  # new clicks go to the chosen object
    w.objects.delete_button.clicked.emit()
    assert np.asarray(points.features["label"]).tolist() == [2]
    assert not (out.data == 1).any() and w.objects.ids() == [2]
    w.objects.clear_button.clicked.emit()
    assert len(points.data) == 0 and not out.data.any() and w.objects.ids() == []
    assert clip.errors() == []


def test_deleting_an_object_without_choosing_one_says_so(clip):
    clip.widget.objects.delete_button.clicked.emit()
    assert "choose the object" in clip.errors()[-1]


def test_after_a_run_the_confidence_track_finds_the_least_certain_frame_and_goes_there(clip, qtbot):
    viewer, w = clip.viewer, clip.widget
    w.instant.value = False
    mask = w.add_mask_layer()
    mask.data[FRAME] = clip.masks[FRAME]
    w.segment_all()
    values = w.confidence.values
    assert values.shape == (len(clip.masks),) and np.isfinite(values).all() and ((0 <= values) & (values <= 1)).all()
    worst = int(np.argmin(values))
    assert f"least certain: frame {worst} " in w.confidence.label.value
    viewer.dims.set_current_step(0, FRAME)
    w.confidence.button.clicked.emit()
    assert viewer.dims.current_step[0] == worst and w.confidence.strip.current == worst
    assert clip.errors() == []


def test_a_tracks_layer_follows_each_objects_centroid(clip):
    viewer, w = clip.viewer, clip.widget
    w.instant.value = False
    mask = w.add_mask_layer()
    mask.data[FRAME] = clip.masks[FRAME]
    w.segment_all()
    tracks = viewer.layers[f"{clip.image.name} tracks"]
    out = w.output.value.data
    frames = [t for t in range(len(out)) if (out[t] == 1).any()]
    assert tracks.data[:, 1].tolist() == frames and set(tracks.data[:, 0]) == {1}
    y, x = np.argwhere(out[FRAME] == 1).mean(0)
    row = tracks.data[tracks.data[:, 1] == FRAME][0]
    assert row[2] == pytest.approx(y) and row[3] == pytest.approx(x)
    assert list(tracks.features["name"])[0] == "object 1"


def test_the_dock_says_why_a_control_is_off(clip, monkeypatch):
    w = clip.widget
    assert "does not propagate" in w.hint.value and not w.forward_button.enabled  # PML
    w.method.value = "tvos"
    clicks_as_they_are(w)
    assert not w.instant.enabled and "does not update as you click" in w.hint.value
    assert w.forward_button.enabled and "does not propagate" not in w.hint.value
    assert not w.instant.native.isHidden()  # the option stays in view, greyed, with the reason beside it


def test_layer_names_are_shown_whole_and_a_renamed_layer_stays_chosen(clip, click):
    w = clip.widget
    points = w.add_points_layer()
    click(clip.viewer, points, FRAME, *inside(clip.masks[FRAME]))
    for layer in (points, clip.image, w.output.value):
        layer.name = f"{layer.name}, renamed after the first click"
    assert (w.points.value, w.image.value) == (points, clip.image) and w.output.value.name.endswith("click")
    combo = w.points.native
    assert combo.currentText() == points.name
    assert combo.sizeHint().width() > combo.fontMetrics().horizontalAdvance(points.name)
    assert clip.errors() == []
