import numpy as np
import pytest

from napari_vosembed.errors import PromptError
from napari_vosembed.prompts import SCRIBBLE_BACKGROUND, Prompts, prompts_from_points_table


def test_points_reduce_to_their_pixels_with_labels():
    prompts = Prompts().add_point(2, 10.7, 3.2, 1).add_point(0, 0, 0, 0)
    ref = prompts.reference_pixels(20, 30)
    assert list(zip(ref.frame, ref.y, ref.x, ref.label)) == [(2, 10, 3, 1), (0, 0, 0, 0)]
    assert ref.object_ids == [1]


def test_mask_gives_every_pixel_and_scribble_only_strokes():
    mask = np.zeros((4, 5), np.uint8)
    mask[1:3, 1:4] = 2
    scribble = np.zeros((4, 5), np.uint8)
    scribble[0, :2] = 1
    scribble[3, 4] = SCRIBBLE_BACKGROUND
    ref = Prompts().add_mask(1, mask).add_scribble(3, scribble).reference_pixels(4, 5)
    on_mask = ref.frame == 1
    assert on_mask.sum() == 20 and (ref.label[on_mask] == 2).sum() == 6
    strokes = sorted(zip(ref.y[~on_mask], ref.x[~on_mask], ref.label[~on_mask]))
    assert strokes == [(0, 0, 1), (0, 1, 1), (3, 4, 0)]


def test_box_gives_background_outside_and_object_at_centre():
    ref = Prompts().add_box(0, 20, 30, 60, 90, label=3).reference_pixels(100, 120)
    fg = ref.label == 3
    assert fg.any() and (~fg).any()
    assert np.all((ref.y[fg] >= 20) & (ref.y[fg] < 60) & (ref.x[fg] >= 30) & (ref.x[fg] < 90))
    bg_inside = (ref.y[~fg] >= 20) & (ref.y[~fg] < 60) & (ref.x[~fg] >= 30) & (ref.x[~fg] < 90)
    assert not bg_inside.any()
    assert abs(ref.y[fg].mean() - 39.5) < 0.5 and abs(ref.x[fg].mean() - 59.5) < 0.5


def test_object_ids_skip_background_values():
    scribble = np.zeros((4, 4), np.uint8)
    scribble[0, 0] = SCRIBBLE_BACKGROUND
    prompts = Prompts().add_scribble(0, scribble).add_point(0, 1, 1, 0)
    assert prompts.object_ids == []
    with pytest.raises(PromptError, match="no object"):
        prompts.validate(1, 4, 4)


@pytest.mark.parametrize(
    "prompts, message",
    [
        (Prompts(), "no prompts"),
        (Prompts().add_point(5, 1, 1, 1), "frame 5.*frames 0..4"),
        (Prompts().add_point(0, 10, 1, 1), "outside the 10x20 frame"),
        (Prompts().add_point(0, 1, -1, 1), "outside"),
        (Prompts().add_box(0, 11, 0, 15, 5), "outside"),
        (Prompts().add_box(0, 2, 2, 2, 8), "empty"),
        (Prompts().add_mask(0, np.ones((10, 21), np.uint8)), "10x21.*10x20"),
        (Prompts().add_mask(7, np.ones((10, 20), np.uint8)), "frame 7"),
        (Prompts().add_mask(0, np.ones((10, 20), np.float32)), "integer"),
    ],
)
def test_bad_prompts_raise_clear_errors(prompts, message):
    with pytest.raises(PromptError, match=message):
        prompts.validate(5, 10, 20)


def test_points_table():
    prompts = prompts_from_points_table([[0, 5, 6, 1], [3, 1.5, 2.5, 0]])
    assert [(p.frame, p.y, p.x, p.label) for p in prompts.points] == [(0, 5, 6, 1), (3, 1.5, 2.5, 0)]
    assert prompts.frames == [0, 3]


def test_napari_layer_converters():
    from napari_vosembed.prompts import prompts_from_labels_layer, prompts_from_points_layer, prompts_from_rectangles

    points = prompts_from_points_layer(np.array([[2, 10.5, 4.0], [0, 1, 1]]), [3, 0])
    # each point on the pixel napari shows it on: 10.5 lies on the border of pixels 10 and 11 (numpy rounds to even)
    assert [(p.frame, p.y, p.x, p.label) for p in points.points] == [(2, 10.0, 4.0, 3), (0, 1.0, 1.0, 0)]
    with pytest.raises(PromptError, match="3 coordinates"):
        prompts_from_points_layer(np.zeros((2, 2)), [1, 1])

    rect = np.array([[1, 40, 10], [1, 40, 30], [1, 20, 30], [1, 20, 10]])
    box = prompts_from_rectangles([rect]).boxes[0]
    assert (box.frame, box.y0, box.x0, box.y1, box.x1, box.label) == (1, 20, 10, 40, 30, 1)
    with pytest.raises(PromptError, match="single frame"):
        prompts_from_rectangles([rect + np.array([[0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]])])

    volume = np.zeros((3, 4, 4), np.uint8)
    volume[1, 0, 0] = 2
    assert list(prompts_from_labels_layer(volume).masks) == [1]
    assert list(prompts_from_labels_layer(volume, "scribble").scribbles) == [1]


def test_points_go_to_the_pixel_napari_shows_them_on_and_prompts_off_the_video_are_dropped():
    from napari_vosembed.prompts import prompts_from_points_layer

    p = prompts_from_points_layer(np.array([[0.2, -0.09, 19.4], [1, 3.6, 2.5], [0, 12, 3]]), [1, 0, 1])
    assert [(q.frame, q.y, q.x) for q in p.points] == [(0, 0, 19), (1, 4, 2), (0, 12, 3)]
    p.add_box(0, -30, -30, -5, -5, 2).add_box(1, 2, 2, 30, 30, 2).add_point(4, 1, 1, 1)
    dropped = p.drop_outside(3, 10, 20)
    assert dropped == ["point (frame 0, y=12, x=3)", "point (frame 4, y=1, x=1)", "box (frame 0, y -30..-5, x -30..-5)"]
    assert len(p.points) == 2 and [b.frame for b in p.boxes] == [1]
    p.validate(3, 10, 20)  # what is left is valid
