import numpy as np
import torch

from napari_vosembed.engine.cache import EmbeddingSettings, Embeddings
from napari_vosembed.methods.tvos import TVOSHead, propagate_dense, sample_references
from napari_vosembed.progress import drive
from napari_vosembed.sample import SAMPLE_NAME, write_sample_sequence
from napari_vosembed.training.common import TrainingVideo, load_videos
from napari_vosembed.training.tvos import TrainConfig, propagation_loss, sample_clip, train


def test_the_loss_is_the_cross_entropy_of_the_dense_propagation():
    torch.manual_seed(0)
    grid, n_ref = (4, 5), 3
    n = grid[0] * grid[1]
    target = torch.nn.functional.normalize(torch.randn(2, n, 6), dim=-1)
    refs = torch.nn.functional.normalize(torch.randn(2, n_ref, n, 6), dim=-1)
    ref_labels, target_labels = torch.randint(0, 3, (2, n_ref, n)), torch.randint(0, 3, (2, n))
    sigmas, scale = torch.tensor([8.0, 8.0, 21.0]), torch.tensor(7.0, requires_grad=True)
    loss = propagation_loss(target, refs, ref_labels, target_labels, sigmas, grid, scale)
    expected = torch.stack([
        -torch.log(propagate_dense(target[b], refs[b], torch.nn.functional.one_hot(ref_labels[b], 3).float(),
                                   sigmas, grid, 7.0)[torch.arange(n), target_labels[b]]).mean() for b in range(2)
    ]).mean()
    assert torch.isclose(loss, expected, atol=1e-5)
    loss.backward()
    assert scale.grad is not None and scale.grad != 0
    cells = torch.tensor([0, 7, 19])  # a subset of the target pixels scores the same way
    part = propagation_loss(target[:, cells], refs, ref_labels, target_labels[:, cells], sigmas, grid, scale, cells)
    expected = torch.stack([
        -torch.log(propagate_dense(target[b], refs[b], torch.nn.functional.one_hot(ref_labels[b], 3).float(),
                                   sigmas, grid, 7.0)[cells, target_labels[b, cells]]).mean() for b in range(2)
    ]).mean()
    assert torch.isclose(part, expected, atol=1e-5)


def synthetic_video(tmp_path, t=12, h=12, w=16, c=6, seed=0):
    """Features whose first channel says whether a cell belongs to the moving object, and whose
    other channels are louder noise."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((t, h, w), np.int64)
    for i in range(t):
        labels[i, 3:8, i % 8 : i % 8 + 6] = 1
    features = (rng.normal(0, 1, (t, h, w, c)) * np.r_[1.0, np.full(c - 1, 3.0)]).astype(np.float32)
    features[..., 0] += 4.0 * labels
    settings = EmbeddingSettings(backbone="synthetic", scale=1.0, levels=(8,), saliency_stride=0)
    emb = Embeddings(tmp_path, settings, (h * 8, w * 8), {8: features.astype(np.float16)}, None, np.ones(t, bool))
    return TrainingVideo("synthetic", emb, labels.reshape(t, -1))


def test_clips_follow_the_inference_schedule(tmp_path):
    video = synthetic_video(tmp_path, t=30)
    rng = np.random.default_rng(0)
    for _ in range(20):
        refs, t, corners = sample_clip(video, 3, 8, rng)
        direction = 1 if refs[0][0] < t else -1
        step = t if direction == 1 else 29 - t
        assert [(t - direction * d, s) for d, s in sample_references(step)] == refs
        assert all(0 <= r < 30 for r, _ in refs) and len(corners) == 3
        assert all(0 <= y <= 12 - 8 and 0 <= x <= 16 - 8 for y, x in corners)


def test_training_lowers_the_propagation_loss(tmp_path):
    video = synthetic_video(tmp_path)
    config = TrainConfig(steps=100, crops=2, crop=8, targets=32, dim=8, hidden=16, lr=3e-3)
    head, history = drive(train([video], config), quiet=True)
    assert isinstance(head, TVOSHead) and not head.training
    assert history[-1][1] < 0.6 * history[0][1]


def test_mirror_adds_each_sequence_as_its_mirror_image(tmp_path):
    write_sample_sequence(tmp_path)
    settings = EmbeddingSettings(backbone="tiny", scale=1.0, levels=(4,), saliency_stride=0)
    plain = drive(load_videos(tmp_path, [SAMPLE_NAME], settings, "cpu"), quiet=True)
    both = drive(load_videos(tmp_path, [SAMPLE_NAME], settings, "cpu", mirror=True), quiet=True)
    assert [v.name for v in both] == [SAMPLE_NAME, f"{SAMPLE_NAME} (mirrored)"] and TrainConfig().mirror
    np.testing.assert_array_equal(both[0].labels, plain[0].labels)
    h, w = plain[0].embeddings.grid_shape  # 60 x 80 cells of 4 pixels: the mirror maps cells onto cells
    grid = plain[0].labels.reshape(-1, h, w)
    assert grid.any() and (grid != grid[..., ::-1]).any()
    np.testing.assert_array_equal(both[1].labels.reshape(-1, h, w), grid[..., ::-1])
    # the tiny backbone's first channels are each cell's mean colour, scaled by the cell's feature norm
    red_green = [v.embeddings.frame_features(3)[..., 0] / v.embeddings.frame_features(3)[..., 1] for v in both]
    assert torch.allclose(red_green[1], red_green[0].flip(1), rtol=1e-2)
    assert not torch.allclose(red_green[1], red_green[0], rtol=1e-2)
