import numpy as np

from napari_vosembed.benchmarks.prompts import centre, next_click


def test_the_robot_clicks_the_interior_of_the_largest_region():
    region = np.zeros((40, 60), bool)
    region[5:8, 5:8] = True  # a small part that must be ignored
    region[10:31, 20:41] = True  # a 21 x 21 square: its interior-most pixel is its centre
    assert centre(region) == (20, 30)


def test_the_next_click_goes_to_the_largest_error_of_any_frame_with_the_right_label():
    gt = np.zeros((3, 32, 32), bool)
    gt[:, 8:24, 8:24] = True
    labels = gt.copy()
    labels[0, 8:12, 8:12] = False  # a small miss on frame 0
    labels[2, 0:6, 0:32] = True  # a large false region on frame 2: a background click
    t, y, x, label = next_click(labels, gt)
    assert (t, label) == (2, 0) and y in range(0, 6) and not gt[t, y, x]
    labels[2] = gt[2]
    t, y, x, label = next_click(labels, gt)
    assert (t, label) == (0, 1) and gt[0, y, x] and not labels[0, y, x]
