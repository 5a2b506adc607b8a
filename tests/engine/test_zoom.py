import numpy as np
import pytest

from napari_vosembed.engine.zoom import (CROP_SIZE, MAX_ASPECT, MAX_GROWTH, MIN_SIDE, box_in_crop, crop, follow, grown,
                                         limited, paste, search_box, tight_box, whole_frame)


def disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2).astype(np.float32)


def test_tight_box_of_a_mask_and_of_nothing():
    mask = np.zeros((20, 30), bool)
    mask[3:7, 10:25] = True
    assert tight_box(mask) == (3, 10, 7, 25)
    assert tight_box(np.zeros((5, 5), bool)) is None


def test_search_box_enlarges_about_the_centre_with_limits():
    assert search_box((100, 200, 140, 260), (480, 854), 1.5) == (90, 185, 150, 275)
    small = search_box((50, 50, 52, 52), (480, 854), 1.5)
    assert small[2] - small[0] == MIN_SIDE and small[3] - small[1] == MIN_SIDE
    thin = search_box((0, 0, 400, 20), (480, 854), 1.0)
    assert (thin[2] - thin[0]) / (thin[3] - thin[1]) == pytest.approx(MAX_ASPECT, rel=0.01)
    assert whole_frame((480, 854)) == (0, 0, 480, 854)


@pytest.mark.parametrize("box", [(40, 60, 120, 160), (-30, -50, 50, 40), (150, 250, 260, 380), (-10, 100, 250, 130)])
def test_crop_then_paste_gives_back_the_frame_inside_it(box):
    """Inside, on the border and past it: pasting a crop of a mask gives the mask back where the box
    and the frame overlap (up to resampling at the disc's edge)."""
    shape = (200, 300)
    mask = disc(shape, (100, 150), 60)
    region, back = paste(crop(mask, box), box, shape)
    assert back.shape == mask[region].shape
    y0, x0, y1, x1 = box
    assert region == (slice(max(0, y0), min(200, y1)), slice(max(0, x0), min(300, x1)))
    assert np.abs(back - mask[region]).mean() < 0.03


def test_a_crop_past_the_border_repeats_it_and_a_box_outside_gives_the_nearest_pixel():
    image = np.arange(100, dtype=np.float32).reshape(10, 10)
    out = crop(image, (-10, -10, 0, 0), size=8)
    assert out.shape == (8, 8) and np.all(out == image[0, 0])
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[:, -1] = 200
    assert crop(rgb, (0, 5, 10, 15), size=CROP_SIZE).shape == (CROP_SIZE, CROP_SIZE, 3)
    assert crop(rgb, (0, 5, 10, 15))[:, -1].min() == 200  # the last column, repeated


def test_a_box_leaving_the_frame_pastes_nothing_outside_it():
    region, back = paste(np.ones((8, 8), np.float32), (190, 290, 230, 330), (200, 300))
    assert region == (slice(190, 200), slice(290, 300)) and back.shape == (10, 10)
    region, back = paste(np.ones((8, 8), np.float32), (250, 400, 300, 450), (200, 300))
    assert back.size == 0


def test_a_lost_object_is_searched_for_in_a_growing_box_inside_the_frame():
    box = (0, 280, 40, 320)  # partly past the right edge
    for _ in range(30):
        box = grown(box, (200, 300))
        assert 0 <= box[0] and 0 <= box[1] and box[2] <= 200 and box[3] <= 300
    assert box == (0, 0, 200, 300)


def test_box_in_crop_coordinates():
    assert box_in_crop((100, 200, 140, 260), (90, 185, 150, 275)) == pytest.approx((1 / 6, 1 / 6, 5 / 6, 5 / 6))


def test_the_track_follows_the_components_that_overlap_the_previous_box():
    mask = np.zeros((60, 80), bool)
    mask[10:20, 10:20] = True  # the object, moved a little
    mask[40:55, 50:78] = True  # a larger look-alike elsewhere
    kept = follow(mask, (8, 6, 18, 16))
    assert kept[10:20, 10:20].all() and not kept[40:, 50:].any()
    # none overlaps: the largest
    kept = follow(mask, (0, 40, 5, 45))
    assert kept[40:55, 50:78].all() and not kept[10:20, 10:20].any()
    single = np.zeros((5, 5), bool)
    single[1:3, 1:3] = True
    assert np.array_equal(follow(single, (4, 4, 5, 5)), single)


def test_a_box_grows_at_most_max_growth_per_frame():
    assert limited((0, 0, 100, 30), (0, 0, 20, 20)) == (37, 2, 63, 28)
    assert limited((5, 5, 25, 25), (0, 0, 20, 20)) == (5, 5, 25, 25)
    y0, x0, y1, x1 = limited((0, 0, 400, 400), (100, 100, 200, 200))
    assert (y1 - y0, x1 - x0) == (round(100 * MAX_GROWTH), round(100 * MAX_GROWTH))
