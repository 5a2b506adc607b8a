"""The boxes a method tracked, written into the viewer as the Shapes layer "<image> tracked boxes":
the pure conversion, LSE on a 100-frame clip in a real viewer, and the option's rules (a method
registered here that reports boxes without tracking anything)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from napari_vosembed._napari import layers as L
from napari_vosembed.engine.cache import EmbeddingSettings
from napari_vosembed.engine.nets.lse import LSENet
from napari_vosembed.methods import Method, Progress, Session, base
from napari_vosembed.sample import moving_square

WIDGET = "Video object segmentation"
TINY = EmbeddingSettings(backbone="tiny", scale=1.0, levels=(4, 8), saliency_stride=0)
N, GONE = 100, 70  # the clip's frames; the square is gone from frame GONE on


# -- the conversion --------------------------------------------------------------------------------

def test_box_rectangles_skip_absent_frames_and_put_each_rectangle_on_its_frame():
    nan = np.nan
    boxes = {2: np.array([[nan] * 4, [1, 2, 5, 7], [nan, 3, 4, 5]]),
             1: np.array([[0, 0, 3, 4], [nan] * 4, [10, 11, 20, 21]])}
    rectangles, features = L.box_rectangles(boxes)
    assert rectangles.shape == (3, 4, 3)
    assert features["label"].tolist() == [1, 1, 2] and features["frame"].tolist() == [0, 2, 1]
    assert features["label"].dtype == features["frame"].dtype == np.int64
    # corners (t, y0, x0), (t, y0, x1), (t, y1, x1), (t, y1, x0): clockwise from the top left
    np.testing.assert_array_equal(rectangles[1], [[2, 10, 11], [2, 10, 21], [2, 20, 21], [2, 20, 11]])
    np.testing.assert_array_equal(rectangles[2], [[1, 1, 2], [1, 1, 7], [1, 5, 7], [1, 5, 2]])
    # a box drawn in a prompt layer with these corners is read as the same box
    prompts = L.prompts_from_rectangles(list(rectangles), features["label"])
    assert [(b.frame, b.y0, b.x0, b.y1, b.x1, b.label) for b in prompts.boxes] == [
        (0, 0, 0, 3, 4, 1), (2, 10, 11, 20, 21, 1), (1, 1, 2, 5, 7, 2)]


def test_box_rectangles_of_nothing_and_the_colours_of_objects():
    rectangles, features = L.box_rectangles({1: np.full((4, 4), np.nan)})
    assert rectangles.shape == (0, 4, 3) and len(features["label"]) == len(features["frame"]) == 0
    assert L.box_rectangles({})[0].shape == (0, 4, 3)
    colormap = L.labels_colormap()
    np.testing.assert_allclose(L.object_colors([1, 2], colormap), [L.label_color(1), L.label_color(2)])
    np.testing.assert_allclose(L.object_colors([300]), [L.label_color(300)])  # beyond the map: the palette


# -- LSE on a 100-frame clip -----------------------------------------------------------------------

def square_that_leaves(n=N, gone=GONE):
    """`moving_square` (a fur square moving right over a brick wall, 96 x 160), with the wall alone
    from frame `gone` on: frames and masks."""
    frames, masks = moving_square(n, 96, 160, side=24, step=1)
    first, last = masks[0].astype(bool), masks[-1].astype(bool)
    wall = frames[-1].copy()
    wall[last] = frames[0][last]  # where the square ends, the wall of frame 0 (the square was elsewhere)
    assert not (first & last).any()
    frames[gone:], masks[gone:] = wall, 0
    return frames, masks


def fur_network(path):
    """Save at `path` a tiny LSE network (the shapes of tests/methods/test_lse.py) with weights set by
    hand, so that it finds the fur without training: a cell is foreground where its mean colour is
    redder than it is blue (the tiny backbone's first channels are the cell's mean RGB; the wall is
    grey), and its appearance embedding says so too (the fusion then keeps it)."""
    net = LSENet(48, hidden=16, trunk=8, dim=8, centre_dim=4)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.project.weight[0, 0], net.project.weight[0, 2], net.project.bias[0] = 1.0, -1.0, -0.012
        for conv in net.trunk:
            if isinstance(conv, torch.nn.Conv2d):
                conv.weight[0, 0, 1, 1] = 1.0  # channel 0 passes through, unchanged
        net.foreground.weight[0, 0], net.foreground.bias[0] = 400.0, -2.0
        net.appearance.weight[0, 0], net.appearance.bias[1] = 400.0, 1.0
    net.save(path, TINY, {})
    return path


@pytest.fixture
def fur_net(tmp_path):
    return fur_network(tmp_path / "fur.pt")


def set_params(w, **values):
    for widget in w.form.widgets:
        if widget.name in values:
            widget.value = values.pop(widget.name)
    assert not values, f"no such parameters: {values}"


def tracked_layers(viewer) -> list:
    return [layer for layer in viewer.layers if layer.metadata.get(L.ROLE_KEY) == L.TRACKED_BOXES_ROLE]


def lse_dock(make_napari_viewer, network, **show):
    """A viewer with the clip, the dock on LSE (`network`, no adaptation) and a box around the square
    on frame 0: (viewer, dock, the boxes layer, masks)."""
    frames, masks = square_that_leaves()
    viewer = make_napari_viewer(**show)
    viewer.add_image(frames, rgb=True, name="square")
    _, w = viewer.window.add_plugin_dock_widget("napari-vosembed", WIDGET)
    w.method.value = "lse"
    set_params(w, network=str(network), prompt_model="none", adapt_steps=0)
    boxes = w.add_boxes_layer()
    ys, xs = np.nonzero(masks[0])
    y0, x0, y1, x1 = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
    boxes.add_rectangles(np.array([[0, y0, x0], [0, y0, x1], [0, y1, x1], [0, y1, x0]], float))
    return viewer, w, boxes, masks


def test_lse_writes_its_tracked_boxes_as_a_shapes_layer_replaced_at_each_run(make_napari_viewer, fur_net):
    from napari.utils.notifications import NotificationSeverity, notification_manager

    start = len(notification_manager.records)
    viewer, w, boxes, masks = lse_dock(make_napari_viewer, fur_net)
    mine = (np.array(boxes.data), boxes.features.copy(), boxes.name)
    assert w.write_boxes.value and not w.write_boxes.native.isHidden()  # LSE tracks boxes: the option shows
    w.segment_button.clicked.emit()
    out = np.asarray(w.output.value.data)
    present = out.reshape(N, -1).any(1)
    # the hand-made network follows the square and loses it once it has gone
    assert present[:GONE].all() and not present[GONE:].any()
    assert np.mean([(out[t] == 1)[masks[t] == 1].mean() for t in range(GONE)]) > 0.8

    (layer,) = tracked_layers(viewer)
    assert layer.name == "square tracked boxes" and layer.ndim == 3
    frames = np.asarray(layer.features["frame"])
    assert frames.tolist() == np.flatnonzero(present).tolist()  # a rectangle where the object is, none elsewhere
    assert (np.asarray(layer.features["label"]) == 1).all() and set(layer.shape_type) == {"rectangle"}
    for corners, t in zip(layer.data, frames):
        ys, xs = np.nonzero(out[t] == 1)
        assert (corners[:, 0] == t).all()  # on its frame only
        assert (corners[:, 1].min(), corners[:, 2].min(), corners[:, 1].max(), corners[:, 2].max()) == (
            ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
    np.testing.assert_allclose(layer.edge_color, np.tile(w.output.value.colormap.map(1), (len(frames), 1)))
    assert (layer.face_color[:, 3] == 0).all()  # no fill
    viewer.dims.set_current_step(0, 5)
    assert frames[layer._view_indices].tolist() == [5]  # the viewer shows frame 5's rectangle alone
    assert not w.write_boxes.native.isHidden() and viewer.layers.selection.active is boxes

    # a second run replaces our layer (a new object as the method tracks it), never the user's boxes
    layer.data = list(layer.data[:3])  # our layer, edited: the run puts the boxes back
    viewer.layers.move(viewer.layers.index(layer), 0)
    w.segment_button.clicked.emit()
    assert tracked_layers(viewer) == [layer] and viewer.layers.index(layer) == 0
    assert np.asarray(layer.features["frame"]).tolist() == np.flatnonzero(present).tolist()
    assert len([x for x in viewer.layers if x._type_string == "shapes"]) == 2
    np.testing.assert_array_equal(boxes.data, mine[0])
    assert boxes.features.equals(mine[1]) and boxes.name == mine[2] and w.boxes.value is boxes
    assert [n.message for n in notification_manager.records[start:] if n.severity == NotificationSeverity.ERROR] == []


def test_a_method_without_boxes_makes_no_tracked_boxes_layer(clip, qtbot):
    w = clip.widget
    w.instant.value = False
    masks = w.add_mask_layer()
    ys, xs = np.nonzero(clip.masks[6])
    masks.data_setitem((np.full(len(ys), 6), ys, xs), 1)
    qtbot.wait(20)
    w.segment_button.clicked.emit()
    assert w.output.value.data.any()
    assert tracked_layers(clip.viewer) == [] and w.write_boxes.native.isHidden()
    assert clip.errors() == []


# -- the option's rules, with a method that reports boxes ------------------------------------------

class BoxEcho(Method):
    """Labels each box's rectangle on every frame but each third (the object is absent there) and
    reports those boxes."""

    name = "test-box-echo"
    propagates = True
    tracks_boxes = True
    quality = -1

    @dataclass
    class Params:
        pass

    def create_session(self, video, shared, settings):
        yield Progress(1, 1, "opening")
        return BoxEchoSession(self, video)


class BoxEchoSession(Session):
    def segment(self, prompts, start=None, direction=0, live=False):
        self.check(prompts, start, direction)
        n = len(self.video)
        out = np.zeros((n, *self.video.shape[1:3]), np.uint8)
        self.boxes = {}
        for b in prompts.boxes:
            rows = np.full((n, 4), np.nan)
            for t in range(n):
                if t % 3 != 1 and (start is None or (t - start) * direction >= 0):
                    y0, x0, y1, x1 = int(b.y0), int(b.x0), int(b.y1), int(b.x1)
                    out[t, y0:y1, x0:x1] = b.label
                    rows[t] = y0, x0, y1, x1
            self.boxes[b.label] = rows
        yield Progress(1, 1, "boxes")
        return out


@pytest.fixture
def box_echo(monkeypatch):
    monkeypatch.setitem(base.METHODS.all(), BoxEcho.name, BoxEcho)


def test_the_option_writes_after_segment_all_frames_only(box_echo, clip):
    viewer, w = clip.viewer, clip.widget
    w.reset_choices()
    w.method.value = BoxEcho.name
    w.instant.value = False  # for the other method at the end
    boxes = w.add_boxes_layer()
    boxes.add_rectangles(np.array([[2, 10, 20], [2, 10, 50], [2, 40, 50], [2, 40, 20]], float))
    w.prompt_layers.next_object()
    boxes.add_rectangles(np.array([[2, 60, 80], [2, 60, 90], [2, 70, 90], [2, 70, 80]], float))
    viewer.dims.set_current_step(0, 2)
    w.forward_button.clicked.emit()  # one way: no tracked boxes layer
    assert w.output.value.data.any() and tracked_layers(viewer) == []
    assert not w.write_boxes.native.isHidden()  # the method tracks boxes: the option shows
    w.segment_button.clicked.emit()
    (layer,) = tracked_layers(viewer)
    n = clip.masks.shape[0]
    present = [t for t in range(n) if t % 3 != 1]
    assert np.asarray(layer.features["label"]).tolist() == [1] * len(present) + [2] * len(present)
    assert np.asarray(layer.features["frame"]).tolist() == present * 2
    np.testing.assert_allclose(layer.edge_color[[0, -1]], [L.label_color(1), L.label_color(2)])
    assert layer.data[-1].tolist() == [[n - 1, 60, 80], [n - 1, 60, 90], [n - 1, 70, 90], [n - 1, 70, 80]]

    w.write_boxes.value = False  # off: a run leaves our layer as it is
    boxes.data = [boxes.data[0] + [0, 5, 5]]
    w.segment_button.clicked.emit()
    assert tracked_layers(viewer) == [layer] and len(layer.data) == 2 * len(present)
    w.write_boxes.value = True
    w.segment_button.clicked.emit()
    assert tracked_layers(viewer) == [layer] and len(layer.data) == len(present)
    assert layer.data[0][0].tolist() == [0, 15, 25]
    assert np.allclose(layer.edge_color, L.label_color(1))

    w.boxes.value = layer  # our layer chosen as the prompt boxes: the user's now, never replaced
    before = np.array(layer.data)
    w.segment_button.clicked.emit()
    w.segment_button.clicked.emit()  # the new layer (napari names it "... [1]") is replaced in turn
    assert len(tracked_layers(viewer)) == 2 and layer in tracked_layers(viewer)
    np.testing.assert_array_equal(layer.data, before)
    w.boxes.value = boxes
    w.segment_button.clicked.emit()  # our first layer, no longer a prompt layer: ours again, replaced
    assert len(tracked_layers(viewer)) == 2 and len(layer.data) == len(present)
    w.method.value = "pml"  # a method that tracks no boxes: the option hides
    assert w.write_boxes.native.isHidden()
    assert clip.errors() == []
