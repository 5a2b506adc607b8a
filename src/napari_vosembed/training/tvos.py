"""`vosembed train tvos`: train the TVOS embedding head on cached backbone features.

The objective of Zhang et al. 2020 (Eq. 8, Sec. 3.4): a target frame's labels are propagated
from reference frames that carry the ground truth, and every target pixel's cross-entropy of the
propagated label is minimised. As in the paper each sample is a crop (here 32 x 32 grid cells,
256 x 256 pixels of the frame) of a target frame and its 9 reference frames, drawn with the
inference schedule (`methods.tvos.sample_references`); the motion prior of inference is applied
during training too. Each step scores `targets` random pixels of each target crop against every
pixel of its reference crops (an unbiased estimate of the mean over all target pixels). Sequences, split and
ground-truth gridding are those of `training.common`; every sequence is also used as its mirror image
(`mirror`, docs/tvos.md).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.heads import fit
from ..engine.propagation import propagation_logits, sample_references
from ..engine.nets.tvos import TVOSHead
from ..progress import Progress
from . import Trainer, common, register_trainer
from .common import TrainingVideo, option


@dataclass
class TrainConfig(common.TrainConfig):
    steps: int = option(1500, "optimiser steps")
    dim: int = option(32, "width of the embedding")
    hidden: int = option(128, "width of the hidden layer")
    clips: int = option(1, "target frames (each with 9 reference frames) per step")
    crops: int = option(4, "crops of each target frame")
    crop: int = option(32, "crop side in grid cells")
    targets: int = option(256, "target cells of each crop whose cross-entropy counts")
    temperature: float = option(0.1, "initial temperature of Eq. 6 (learned)")


def sample_clip(video: TrainingVideo, n_crops: int, crop: int, rng: np.random.Generator
                ) -> tuple[list[tuple[int, float]], int, list[tuple[int, int]]]:
    """A target frame, its reference frames [(frame, sigma)] by the inference schedule (forward or
    backward in time at random) and `n_crops` crop corners, half of them centred on an object cell."""
    n = len(video.labels)
    t = int(rng.integers(1, n))
    direction = 1 if rng.random() < 0.5 else -1
    if direction == -1:
        t = n - 1 - t
    step = t if direction == 1 else n - 1 - t
    refs = [(t - direction * d, sigma) for d, sigma in sample_references(step)]
    h, w = video.embeddings.grid_shape
    objects = np.flatnonzero(video.labels[t] > 0)
    corners = []
    for i in range(n_crops):
        if i % 2 == 0 and len(objects):
            cy, cx = divmod(int(rng.choice(objects)), w)
            y, x = cy - crop // 2 + int(rng.integers(-crop // 4, crop // 4 + 1)), cx - crop // 2
        else:
            y, x = int(rng.integers(0, max(h - crop, 0) + 1)), int(rng.integers(0, max(w - crop, 0) + 1))
        corners.append((int(np.clip(y, 0, max(h - crop, 0))), int(np.clip(x, 0, max(w - crop, 0)))))
    return refs, t, corners


def propagation_loss(target: torch.Tensor, refs: torch.Tensor, ref_labels: torch.Tensor,
                     target_labels: torch.Tensor, sigmas: torch.Tensor, grid: tuple[int, int],
                     scale: torch.Tensor, cells: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 8: mean cross-entropy of the labels propagated to the target pixels of every crop.

    target (B, Q, d) embeddings of the grid cells `cells` (default: all) and refs (B, R, N, d);
    ref_labels (B, R, N) and target_labels (B, Q) label indices 0 .. K-1."""
    n_labels = int(max(ref_labels.max(), target_labels.max())) + 1
    one_hot = F.one_hot(ref_labels.flatten(1), n_labels).float()
    weights = torch.softmax(propagation_logits(target, refs, sigmas, grid, scale, cells), -1)
    predicted = torch.bmm(weights, one_hot)
    return F.nll_loss(torch.log(predicted + 1e-8).transpose(1, 2), target_labels)


def train(videos: list[TrainingVideo], config: TrainConfig) -> Generator[Progress, None, tuple[TVOSHead, list]]:
    """Adam on Eq. 8 (the scale s at 10x the learning rate); returns the head and the loss history
    [(step, mean loss of 25 steps)]."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    head = TVOSHead(videos[0].embeddings.channels, config.dim, config.hidden, config.temperature)
    optimiser = torch.optim.Adam([{"params": head.net.parameters()},
                                  {"params": [head.log_scale], "lr": 10 * config.lr}], lr=config.lr)

    def step_loss() -> torch.Tensor:
        losses = []
        for v in rng.choice(len(videos), config.clips):
            video = videos[v]
            refs, t, corners = sample_clip(video, config.crops, config.crop, rng)
            sigmas = torch.tensor([s for _, s in refs])
            h, w = video.embeddings.grid_shape
            labels = video.labels.reshape(len(video.labels), h, w)
            frames = [t] + [r for r, _ in refs]
            emb = torch.stack([head.embed(video.embeddings, frames, y, x, config.crop) for y, x in corners])
            grid = emb.shape[2:4]
            cells = np.stack([labels[frames, y : y + grid[0], x : x + grid[1]] for y, x in corners])
            cells = torch.from_numpy(np.unique(cells, return_inverse=True)[1].reshape(len(corners), len(frames), -1))
            emb = emb.flatten(2, 3)
            sel = torch.from_numpy(np.sort(rng.choice(emb.shape[2], min(config.targets, emb.shape[2]), replace=False)))
            losses.append(propagation_loss(emb[:, 0, sel], emb[:, 1:], cells[:, 1:], cells[:, 0, sel], sigmas, grid,
                                           head.log_scale.exp(), sel))
        return torch.stack(losses).mean()

    history = yield from fit(optimiser, config.steps, step_loss)
    return head.eval().requires_grad_(False), history


def run(data: Path, out: Path, config: TrainConfig, device: str, command: str, plot: Path | None = None
        ) -> Generator[Progress, None, Path]:
    """Train on `data` (our split of it), save the head to `out` with its training record."""
    return (yield from common.run(data, out, config, train, device, command, plot,
                                  "TVOS head, propagation cross-entropy (Eq. 8)"))


register_trainer(Trainer("tvos", "the TVOS embedding head (propagation cross-entropy of Zhang et al. 2020, Eq. 8)",
                         "Train the TVOS head on DAVIS-style sequence folders.", TrainConfig, run,
                         "src/napari_vosembed/models/tvos_head.pt"))
