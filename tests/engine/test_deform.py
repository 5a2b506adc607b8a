import cv2
import numpy as np

from napari_vosembed.engine.deform import deform_mask, tps_map


def disk(h=120, w=160, cy=60, cx=80, r=30):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def bbox(mask):
    ys, xs = np.nonzero(mask)
    return ys.min(), ys.max(), xs.min(), xs.max()


def test_deformed_masks_stay_within_the_stated_bounds_and_connected():
    mask = disk()
    y0, y1, x0, x1 = bbox(mask)
    size = max(y1 - y0, x1 - x0)
    # scale 5 % + shift 10 % + spline 10 % of the object's size, and 5 pixels of dilation, on each side
    slack = 0.05 * size / 2 + 0.10 * size + 0.10 * size + 5 + 1
    changed = 0
    for seed in range(20):
        out = deform_mask(mask, np.random.default_rng(seed))
        a0, a1, b0, b1 = bbox(out)
        assert a0 >= y0 - slack and a1 <= y1 + slack and b0 >= x0 - slack and b1 <= x1 + slack
        assert cv2.connectedComponents(out.astype(np.uint8))[0] == 2  # background + one piece
        assert 0.7 < out.sum() / mask.sum() < 2.0
        changed += not np.array_equal(out, mask)
    assert changed == 20


def test_the_thin_plate_spline_moves_its_control_points_and_keeps_the_corners():
    src = np.array([[20.0, 20.0], [60.0, 30.0], [40.0, 50.0], [0, 0], [79, 0], [0, 59], [79, 59]])
    dst = src.copy()
    dst[:3] += [[3, -2], [-4, 1], [2, 3]]
    map_x, map_y = tps_map(src, dst, (60, 80))
    for (sx, sy), (dx, dy) in zip(src, dst):
        assert abs(map_x[int(dy), int(dx)] - sx) < 0.5 and abs(map_y[int(dy), int(dx)] - sy) < 0.5


def test_an_empty_mask_stays_empty():
    assert not deform_mask(np.zeros((10, 10), bool), np.random.default_rng(0)).any()
