import numpy as np
import pytest

from napari_vosembed.engine import flow as flow_module
from napari_vosembed.engine.flow import magnitude_video, video_flow
from napari_vosembed.progress import drive


def moving_square(n=4, step=(2, 3), size=(90, 120)):
    """A textured square moving `step` (dy, dx) pixels per frame over a still textured background,
    and its masks."""
    rng = np.random.default_rng(0)
    background = (rng.random(size) * 60 + 40).astype(np.float32)
    texture = (rng.random((30, 30)) * 100 + 140).astype(np.float32)
    frames, masks = [], []
    for t in range(n):
        frame, mask = background.copy(), np.zeros(size, bool)
        y, x = 20 + t * step[0], 25 + t * step[1]
        frame[y:y + 30, x:x + 30] = texture
        mask[y:y + 30, x:x + 30] = True
        frames.append(np.repeat(frame[..., None], 3, 2).astype(np.uint8))
        masks.append(mask)
    return np.stack(frames), np.stack(masks)


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_flow_follows_a_moving_square_both_ways_and_moves_its_mask():
    frames, masks = moving_square()
    flow = drive(video_flow(frames), quiet=True)
    assert flow.done.all() and flow.forward.shape[0] == 4
    # from frame 1 to frame 0 the square moved back by (2, 3): the flow inside it says so
    back = flow.toward(1, 1) / flow.scale
    y0, x0 = int(25 * flow.scale), int(31 * flow.scale)
    np.testing.assert_allclose(np.median(back[y0:y0 + 5, x0:x0 + 5].reshape(-1, 2), 0), [-3, -2], atol=0.75)
    assert iou(flow.warp(masks[0], 1, 1), masks[1]) > 0.9 > iou(masks[0], masks[1])
    assert iou(flow.warp(masks[3], 2, -1), masks[2]) > 0.9  # a backward run: frame 3's mask onto frame 2


def test_flow_is_computed_once_per_video(monkeypatch):
    frames, _ = moving_square(3)
    first = drive(video_flow(frames), quiet=True)
    monkeypatch.setattr(flow_module.cv2, "DISOpticalFlow_create", lambda *a: pytest.fail("flow computed again"))
    again = drive(video_flow(frames), quiet=True)
    assert again.path == first.path
    np.testing.assert_array_equal(again.forward[0], first.forward[0])


def test_the_magnitude_images_show_what_moves():
    frames, masks = moving_square()
    video = magnitude_video(drive(video_flow(frames), quiet=True))
    image = video[2]
    assert len(video) == 4 and image.shape == (90, 120, 3) and image.dtype == np.uint8
    assert image[masks[2]].mean() > 4 * image[~masks[2] & ~masks[1]].mean()
