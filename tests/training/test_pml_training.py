from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_vosembed.engine.cache import EmbeddingSettings, Embeddings
from napari_vosembed.errors import MethodError
from napari_vosembed.engine.losses import contrastive, instance, pml_triplet, triplet
from napari_vosembed.training.common import TrainingVideo, davis_split
from napari_vosembed.training.pml import TrainConfig, train
from napari_vosembed.progress import drive


def test_pml_triplet_uses_the_closest_positive_and_negative():
    anchors = torch.tensor([[1.0, 0.0]])
    pool = torch.tensor([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0], [0.6, 0.8]])
    labels = torch.tensor([1, 1, 0, 0])
    # closest positive: [1,0], d = 0; closest negative: [0.6,0.8], d = 2 - 1.2 = 0.8
    assert torch.isclose(pml_triplet(anchors, pool, torch.tensor([1]), labels, 1.0), torch.tensor(0.2))
    assert pml_triplet(anchors, pool, torch.tensor([1]), labels, 0.5) == 0
    # contrastive, margin 1: positives d = 2, 0; negatives d = 4 -> 0, 0.8 -> 0.2; mean over 4 pairs
    assert torch.isclose(contrastive(anchors, pool, torch.tensor([1]), labels, 1.0), torch.tensor(0.55))
    assert triplet(anchors, pool, torch.tensor([1]), labels, 0.1).item() >= 0


def test_instance_loss_is_the_weighted_pair_cross_entropy_of_eq_2():
    anchors = torch.tensor([[1.0, 0.0]])
    pool = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]])
    labels = torch.tensor([1, 1, 0])
    # d = 0, 0.8, 4: R = 1, 2 / (1 + e^0.8), 2 / (1 + e^4); label 1 has two pool pixels, each weighing half
    r = 2 / (1 + torch.exp(torch.tensor([0.0, 0.8, 4.0])))
    expected = (-0.5 * torch.log(r[0].clamp(max=1 - 1e-6)) - 0.5 * torch.log(r[1]) - torch.log1p(-r[2])) / 2
    assert torch.isclose(instance(anchors, pool, torch.tensor([1]), labels), expected, atol=1e-5)
    apart = instance(anchors, torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), torch.tensor([1]), torch.tensor([1, 0]))
    assert apart < instance(anchors, torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), torch.tensor([1]), torch.tensor([1, 0]))


def test_split_holds_out_every_fourth_sequence():
    train_names, held_out = davis_split([f"s{i:02d}" for i in range(9)])
    assert held_out == ["s00", "s04", "s08"] and len(train_names) == 6


def _separable_video(tmp_path, informative: int = 1) -> TrainingVideo:
    """Cells whose first `informative` feature channels tell object from background."""
    rng = np.random.default_rng(0)
    t, h, w, c = 4, 6, 8, 5
    labels = (rng.random((t, h * w)) < 0.3).astype(np.int64)
    features = rng.normal(0, 1, (t, h, w, c)).astype(np.float16)
    features[..., :informative] += 5.0 * labels.reshape(t, h, w, 1)
    settings = EmbeddingSettings(backbone="synthetic", scale=1.0, levels=(8,), saliency_stride=0)
    emb = Embeddings(tmp_path, settings, (h * 8, w * 8), {8: features}, None, np.ones(t, bool))
    return TrainingVideo("synthetic", emb, labels)


def test_training_lowers_the_loss_on_separable_features(tmp_path):
    config = TrainConfig(steps=200, batch=2, anchors=32, pool=64, dim=8, hidden=16, margin=0.5, lr=3e-3)
    _, history = drive(train([_separable_video(tmp_path)], config), quiet=True)
    assert history[-1][1] < 0.2 * history[0][1]


def test_feature_dropout_regularises_training_only(tmp_path):
    video = _separable_video(tmp_path, informative=5)
    config = TrainConfig(steps=200, batch=2, anchors=32, pool=64, dim=8, hidden=16, margin=0.5, lr=3e-3)
    _, plain = drive(train([video], config), quiet=True)
    head, history = drive(train([video], replace(config, dropout=0.3)), quiet=True)
    assert history != plain
    features = torch.from_numpy(video.embeddings.levels[8].reshape(-1, 5).astype(np.float32))
    coords = torch.rand(len(features), 3)
    assert not head.training and torch.equal(head(features, coords), head(features, coords))
    e, labels = head(features, coords), video.labels.reshape(-1)
    sims = e @ e.T - 2 * torch.eye(len(e))
    assert (labels[sims.argmax(1).numpy()] == labels).mean() > 0.95
    with pytest.raises(MethodError, match="dropout"):
        TrainConfig(dropout=1.0)


def test_an_ensemble_trains_its_members_with_successive_seeds_and_averages_their_similarities(tmp_path):
    video = _separable_video(tmp_path, informative=2)
    config = TrainConfig(steps=30, batch=2, anchors=32, pool=64, dim=8, hidden=16, margin=0.5, lr=3e-3, seed=3)
    training, stages = train([video], replace(config, members=2)), []
    while True:
        try:
            stages.append(next(training).stage)
        except StopIteration as stop:
            ensemble, history = stop.value
            break
    assert stages == ["training member 1 of 2"] * 30 + ["training member 2 of 2"] * 30
    singles = [drive(train([video], replace(config, seed=seed)), quiet=True) for seed in (3, 4)]
    for net, (single, _) in zip(ensemble.nets, singles):
        for a, b in zip(net.state_dict().values(), single.nets[0].state_dict().values()):
            assert torch.equal(a, b)
    assert history[-1][1] == pytest.approx((singles[0][1][-1][1] + singles[1][1][-1][1]) / 2)
    features = torch.from_numpy(video.embeddings.levels[8].reshape(-1, 5).astype(np.float32))
    coords = torch.rand(len(features), 3)
    e = ensemble(features, coords)
    assert e.shape == (len(features), 16) and ensemble.out_dim == 16
    mean_cosine = sum(s(features, coords) @ s(features, coords).T for s, _ in singles) / 2
    assert torch.allclose(e @ e.T, mean_cosine, atol=1e-5)
    with pytest.raises(MethodError, match="at least one member"):
        TrainConfig(members=0)
