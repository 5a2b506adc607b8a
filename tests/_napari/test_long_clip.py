"""A long clip in a real viewer, as a user works on it: quick repeated clicks with live updates
running in real threads. napari once aborted here (a progress bar made inside another one while Qt
delivered the next step), and finished bars piled up in the activity dock."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

N = 120


def open_bars(viewer) -> list[str]:
    from napari._qt.widgets.qt_progress_bar import QtLabeledProgressBar

    dialog = viewer.window._qt_viewer.window()._activity_dialog
    return [bar.description_label.text() for bar in dialog.findChildren(QtLabeledProgressBar)]


def test_repeated_clicks_on_a_long_clip_with_live_updates_leave_one_bar_per_job(make_napari_viewer, sequence_folder,
                                                                                 click, monkeypatch, qtbot):
    from napari.utils.notifications import NotificationSeverity, notification_manager

    monkeypatch.setenv("VOSEMBED_SYNC_WORKERS", "0")
    seq, masks = sequence_folder(N, 96, 128)
    viewer = make_napari_viewer()
    (image, _) = viewer.open(str(seq), plugin="napari-vosembed")
    _, w = viewer.window.add_plugin_dock_widget("napari-vosembed", "Video object segmentation")
    for name, value in (("prompt_model", "none"), ("head", "none")):
        next(p for p in w.form.widgets if p.name == name).value = value
    start = len(notification_manager.records)
    points = w.add_points_layer()
    t = N // 2
    inside = np.argwhere(ndimage.binary_erosion(masks[t], iterations=2))
    seen = []
    for i in range(8):  # clicks while the embedding, the session and the updates before are still running
        click(viewer, points, t, *inside[(i * 37) % len(inside)])
        for _ in range(3):
            qtbot.wait(50)
            seen.append(open_bars(viewer))
    qtbot.waitUntil(lambda: not w.runner.running, timeout=180_000)
    qtbot.wait(200)
    for bars in seen:  # never two bars of one job (at most: the session opening and the update)
        assert len(bars) <= 2 and len(set(bars)) == len(bars), bars
    assert open_bars(viewer) == []  # every finished job closed its bar
    assert w.status.value.startswith("updating all frames: done in ")
    out = w.output.value.data
    assert out.shape == (N, 96, 128) and all(out[s].any() for s in (0, t, N - 1))
    assert [n for n in notification_manager.records[start:] if n.severity == NotificationSeverity.ERROR] == []
