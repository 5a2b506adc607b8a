import numpy as np
import pytest
import torch

from napari_vosembed.engine import refine
from napari_vosembed.engine.refine import drop_stray_regions

LABELS = np.array([0, 1, 2])


def votes(winners, k=3):
    """(h, w, k) vote fractions: 0.8 for each cell's winning label, the rest shared."""
    scores = np.full((*winners.shape, k), 0.2 / (k - 1), np.float32)
    np.put_along_axis(scores, winners[..., None], 0.8, axis=-1)
    return scores


def test_an_objects_region_far_from_where_it_was_goes_to_the_background():
    previous = np.zeros((12, 30), np.intp)
    previous[4:8, 2:6] = 1
    winners = previous.copy()
    winners[4:8, 3:7] = 1
    winners[2:6, 20:25] = 1
    scores = votes(winners)
    before = scores.copy()
    cleared = drop_stray_regions(scores, previous, label_values=LABELS, distance=4)
    assert np.array_equal(cleared, (winners == 1) & (np.arange(30) >= 20))
    assert (scores.argmax(-1)[cleared] == 0).all()
    assert np.array_equal(scores.argmax(-1)[~cleared], winners[~cleared])
    assert np.allclose(scores.sum(-1), before.sum(-1))
    far_enough = drop_stray_regions(votes(winners), previous, label_values=LABELS, distance=15)
    assert not far_enough.any()


def test_an_object_that_moved_far_keeps_its_strongest_region_and_an_absent_one_is_left_alone():
    previous = np.zeros((12, 30), np.intp)
    previous[1:3, 1:3] = 1
    winners = np.zeros_like(previous)
    winners[6:10, 14:19] = 1
    winners[0:2, 26:28] = 1
    cleared = drop_stray_regions(votes(winners), previous, label_values=LABELS, distance=3)
    assert np.array_equal(cleared, (winners == 1) & (np.arange(30) >= 26))
    absent = drop_stray_regions(votes(winners), np.zeros_like(previous), label_values=LABELS, distance=3)
    assert not absent.any()
    objects_only = votes(winners)
    untouched = objects_only.copy()
    assert not drop_stray_regions(objects_only, previous, label_values=np.array([1, 2, 3]), distance=3).any()
    assert np.array_equal(objects_only, untouched)


def test_each_object_is_held_to_its_own_previous_cells():
    previous = np.zeros((10, 30), np.intp)
    previous[2:5, 2:5] = 1
    previous[2:5, 24:27] = 2
    winners = np.zeros_like(previous)
    winners[2:5, 3:6] = 2
    winners[2:5, 23:26] = 2
    winners[6:9, 3:6] = 1
    scores = votes(winners)
    cleared = drop_stray_regions(scores, previous, label_values=LABELS, distance=3)
    assert np.array_equal(cleared, (winners == 2) & (np.arange(30) < 10))
    assert (scores.argmax(-1)[6:9, 3:6] == 1).all() and (scores.argmax(-1)[2:5, 23:26] == 2).all()


def test_many_labels_are_refined_a_few_at_a_time_with_the_same_labels(monkeypatch):
    rng = np.random.default_rng(3)
    scores = rng.random((12, 16, 9)).astype(np.float32)
    guide = rng.random((96, 128)).astype(np.float32)
    values = np.arange(9) * 3
    whole = refine.refine_labels(scores, values, 8, (96, 128), guide, 4, 1e-3)
    monkeypatch.setattr(refine, "LABEL_CHUNK_BYTES", 2 * 4 * 96 * 128)  # two labels at a time
    assert np.array_equal(refine.refine_labels(scores, values, 8, (96, 128), guide, 4, 1e-3), whole)
    assert len(np.unique(whole)) > 4


def _scene(height=75, width=118, labels=3, seed=5):
    """A smooth colour frame with blobs, and noisy stride-8 grid scores of those blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    frame = np.zeros((height, width, 3), np.uint8)
    grid = (-(-height // 8), -(-width // 8))
    gy, gx = np.mgrid[: grid[0], : grid[1]] * 8 + 4
    scores = [np.full(grid, 0.5, np.float32)]
    for k in range(1, labels):
        cy, cx, r = rng.uniform(15, height - 15), rng.uniform(15, width - 15), rng.uniform(8, 20)
        frame[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = rng.integers(60, 255, 3)
        scores.append(np.exp(-((gy - cy) ** 2 + (gx - cx) ** 2) / (2 * r**2)).astype(np.float32))
    frame = (frame + rng.integers(0, 12, frame.shape)).astype(np.uint8)
    return frame, np.stack(scores, -1) + rng.normal(0, 0.05, (*grid, labels)).astype(np.float32)


def test_the_torch_guided_filter_computes_the_opencv_one():
    frame, _ = _scene()
    guide = frame.astype(np.float32) / 255
    src = np.random.default_rng(1).random((75, 118, 2)).astype(np.float32)
    for g, radius, subsample in ((guide, 8, 4), (guide[..., 0], 4, 1), (guide[..., 0], 90, 1), (guide, 6, 3)):
        expected = refine.GuidedFilter(g, radius, 1e-3, subsample)(src, g)
        got = refine.TorchGuidedFilter(g, radius, 1e-3, subsample, "cpu")(src, g)
        assert isinstance(got, torch.Tensor) and got.shape == expected.shape
        assert np.abs(got.numpy() - expected).max() < 2e-4, (radius, subsample)


@pytest.mark.parametrize("labels", [2, 4])
@pytest.mark.parametrize("gray", [False, True])
def test_a_refiner_on_a_torch_device_gives_the_labels_of_opencv(labels, gray):
    frame, scores = _scene(labels=labels)
    video = np.stack([frame.mean(-1).astype(np.uint8) if gray else frame] * 2)
    values = np.arange(labels) * 2
    host = refine.FrameRefiner(video, 8, (0, 255))
    on_device = refine.FrameRefiner(video, 8, (0, 255), keep=True, device="cpu")
    expected = host(1, scores, values)
    assert len(np.unique(expected)) == labels
    assert np.array_equal(on_device(1, scores, values), expected)
    assert np.array_equal(on_device(1, torch.from_numpy(scores), values), expected)  # kept statistics, tensor scores
    assert isinstance(on_device._filters[1], refine.TorchGuidedFilter)
    assert np.array_equal(refine.FrameRefiner(video, 8, None, device="cpu")(1, scores, values),
                          refine.FrameRefiner(video, 8, None)(1, scores, values))


def test_sessions_refine_on_a_gpu_and_with_opencv_on_the_cpu():
    assert refine.refine_device("cpu") is None
    assert refine.refine_device("cuda:0") == torch.device("cuda:0")
