"""Metric-learning losses on L2-normalised embeddings, with d(a, b) = ||a - b||^2 = 2 - 2 a.b.

`pml_triplet` is the loss of PML (Chen et al. 2018, Eq. 1); `triplet` and `contrastive` are the
baselines of its ablation (Sec. 4.2); `instance` is the pairwise loss of the instance embeddings
the unsupervised method reads (Li et al. 2018, Eq. 1-2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _distances(anchors: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    return (2 - 2 * anchors @ pool.T).clamp_min(0)


def pml_triplet(anchors, pool, anchor_labels, pool_labels, margin: float, generator=None) -> torch.Tensor:
    """Eq. 1: for each anchor only its closest positive and closest negative in the pool count,
    max(0, min_p d(a, p) - min_n d(a, n) + margin); anchors lacking either are skipped."""
    d = _distances(anchors, pool)
    same = anchor_labels[:, None] == pool_labels[None, :]
    inf = torch.finfo(d.dtype).max
    closest_pos = d.masked_fill(~same, inf).min(1).values
    closest_neg = d.masked_fill(same, inf).min(1).values
    valid = same.any(1) & (~same).any(1)
    return F.relu(closest_pos - closest_neg + margin)[valid].mean() if valid.any() else d.sum() * 0


def triplet(anchors, pool, anchor_labels, pool_labels, margin: float, generator=None) -> torch.Tensor:
    """The plain triplet loss: one random positive and one random negative per anchor."""
    d = _distances(anchors, pool)
    same = anchor_labels[:, None] == pool_labels[None, :]
    noise = torch.rand(d.shape, generator=generator)
    pick_pos = noise.masked_fill(~same, -1).argmax(1)
    pick_neg = noise.masked_fill(same, -1).argmax(1)
    rows = torch.arange(len(d))
    valid = same.any(1) & (~same).any(1)
    loss = F.relu(d[rows, pick_pos] - d[rows, pick_neg] + margin)
    return loss[valid].mean() if valid.any() else d.sum() * 0


def contrastive(anchors, pool, anchor_labels, pool_labels, margin: float, generator=None) -> torch.Tensor:
    """The contrastive loss: pull every positive pair together, push negative pairs beyond the margin."""
    d = _distances(anchors, pool)
    same = (anchor_labels[:, None] == pool_labels[None, :]).float()
    return (same * d + (1 - same) * F.relu(margin - d)).mean()


def instance(anchors, pool, anchor_labels, pool_labels, margin: float = 0.0, generator=None) -> torch.Tensor:
    """Li et al. 2018, Eq. 1-2: the similarity R = 2 / (1 + exp(d)) of every anchor-pool pair, its
    cross-entropy against "same object", each pair weighted by the inverse of the two objects'
    sample counts so that every object weighs the same (`margin` unused)."""
    r = (2 / (1 + torch.exp(_distances(anchors, pool)))).clamp(1e-6, 1 - 1e-6)
    same = anchor_labels[:, None] == pool_labels[None, :]
    weight = _inverse_counts(anchor_labels)[:, None] * _inverse_counts(pool_labels)[None, :]
    loss = -torch.where(same, torch.log(r), torch.log1p(-r))
    return (weight * loss).sum() / weight.sum()


def _inverse_counts(labels: torch.Tensor) -> torch.Tensor:
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse].float()


LOSSES = {"pml": pml_triplet, "triplet": triplet, "contrastive": contrastive, "instance": instance}
