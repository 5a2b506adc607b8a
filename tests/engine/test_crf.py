import numpy as np

from napari_vosembed.engine.crf import crf_frame, dense_crf


def disk_scene(size=(96, 128)):
    """A bright disk on a dark frame, and blurry, too-large probabilities of it (what a stride-8
    network gives: the object's edge lost, a halo around it)."""
    ys, xs = np.mgrid[: size[0], : size[1]]
    truth = (ys - 48) ** 2 + (xs - 60) ** 2 < 25**2
    frame = np.where(truth, 0.85, 0.15).astype(np.float32)
    rng = np.random.default_rng(0)
    frame = np.clip(frame + rng.normal(0, 0.03, size), 0, 1).astype(np.float32)
    halo = (ys - 48) ** 2 + (xs - 60) ** 2 < 33**2
    p = np.clip(np.where(halo, 0.6, 0.25) + rng.normal(0, 0.1, size), 0.01, 0.99).astype(np.float32)
    return frame, truth, np.stack([1 - p, p], -1)


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_the_crf_snaps_blurry_probabilities_to_the_object_edges():
    frame, truth, probabilities = disk_scene()
    marginals = dense_crf(frame, probabilities)
    assert marginals.shape == probabilities.shape
    np.testing.assert_allclose(marginals.sum(-1), 1, atol=1e-5)
    before, after = iou(probabilities.argmax(-1) == 1, truth), iou(marginals.argmax(-1) == 1, truth)
    assert before < 0.75 and after > 0.9


def test_crf_frame_labels_a_video_frame_from_grid_scores():
    frame, truth, probabilities = disk_scene()
    video = np.repeat((frame * 255).astype(np.uint8)[None, ..., None], 3, -1)  # one RGB frame
    grid = probabilities[4::8, 4::8]  # stride-8 cell centres
    labels = crf_frame(video, 0, grid, np.array([0, 7]), 8.0, (0.0, 255.0))
    assert labels.shape == truth.shape and set(np.unique(labels)) == {0, 7}
    assert iou(labels == 7, truth) > 0.85
