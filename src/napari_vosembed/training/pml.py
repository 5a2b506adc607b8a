"""`vosembed train pml`: train the PML embedding head on cached backbone features.

Sampling as in Chen et al. 2018, Sec. 3.3: each triplet draws three frames of one training video;
256 anchors come from one of them, the positive and negative pools from the other two. Anchors are
drawn half from object pixels and half from background where both exist (object pixels are rare,
and uniform anchors would teach the background alone); the pools are a random subset of the two
frames' pixels. `dropout` (beyond the paper) zeroes that share of the backbone features the head
sees in training, a regulariser against the few training videos. `members` (beyond the paper)
trains that many heads one after the other, with seeds `seed`, `seed + 1`, ..., into one ensemble
head (`PMLHead`); member 0 is the head `members = 1` trains. Every sequence is also used as its mirror
image (`mirror`, beyond the paper; docs/pml.md).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..engine.heads import fit
from ..errors import MethodError
from ..engine.grid import grid_coords
from ..engine.nets.pml import PMLHead, balanced_anchors
from ..progress import Progress
from . import Trainer, common, register_trainer
from .common import TrainingVideo, option
from ..engine.losses import LOSSES


@dataclass
class TrainConfig(common.TrainConfig):
    steps: int = option(800, "optimiser steps")
    batch: int = option(4, "triplets (three frames each) per step")
    anchors: int = option(256, "anchors per triplet, half object and half background")
    pool: int = option(2048, "positive and negative pool per triplet, from two other frames")
    margin: float = option(0.3, "alpha of Eq. 1")
    loss: str = field(default="pml", metadata={"help": "the loss: Eq. 1 of the paper, plain triplet or contrastive",
                                               "choices": tuple(LOSSES)})
    dropout: float = option(0.0, "share of the backbone features zeroed in training (a regulariser; 0: the paper)")
    members: int = option(1, "heads trained one after the other (seeds seed, seed + 1, ...) into one ensemble head "
                             "whose similarity is the mean of theirs (1: the paper)")

    def __post_init__(self):
        if not 0 <= self.dropout < 1:
            raise MethodError("dropout is the share of the features zeroed in training: "
                              f"0 <= dropout < 1, not {self.dropout}")
        if self.members < 1:
            raise MethodError(f"an ensemble head needs at least one member, not {self.members}")


def _cell_inputs(video: TrainingVideo, t: int, cells: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Head inputs (features, coordinates) and ground-truth labels of some cells of frame t."""
    emb = video.embeddings
    coords = grid_coords(t, len(video.labels), emb.grid_shape)[torch.from_numpy(cells)]
    return emb.cell_features(t, cells), coords, torch.from_numpy(video.labels[t][cells])


def sample_triplet(video: TrainingVideo, n_anchors: int, n_pool: int, rng: np.random.Generator):
    """Three frames: anchors (balanced object / background) from one, the pool from the other two."""
    frames = rng.choice(len(video.labels), 3, replace=len(video.labels) < 3)
    anchor_frame, pool_frames = frames[0], frames[1:]
    labels = video.labels[anchor_frame]
    cells = balanced_anchors(labels, n_anchors, rng)
    anchor = _cell_inputs(video, anchor_frame, cells)
    pools = [_cell_inputs(video, t, rng.choice(labels.size, min(labels.size, n_pool // 2), replace=False))
             for t in pool_frames]
    return anchor, tuple(torch.cat(parts) for parts in zip(*pools))


def train(videos: list[TrainingVideo], config: TrainConfig) -> Generator[Progress, None, tuple[PMLHead, list]]:
    """Adam on the chosen loss, for each of `config.members` heads in turn (seeds `config.seed`,
    `config.seed + 1`, ...); returns the (ensemble) head and the loss history [(step, mean loss)],
    averaged over the members."""
    head = PMLHead(videos[0].embeddings.channels, config.dim, config.hidden, config.members)
    histories = []
    for m, net in enumerate(head.nets):
        stage = "training" if config.members == 1 else f"training member {m + 1} of {config.members}"
        member, history = yield from _train_member(videos, config, config.seed + m, stage)
        net.load_state_dict(member.nets[0].state_dict())
        histories.append(history)
    history = [(step, float(np.mean([h[i][1] for h in histories]))) for i, (step, _) in enumerate(histories[0])]
    return head.eval().requires_grad_(False), history


def _train_member(videos: list[TrainingVideo], config: TrainConfig, seed: int, stage: str
                  ) -> Generator[Progress, None, tuple[PMLHead, list]]:
    """One head, initialised and trained with `seed` (progress reported as `stage`), and its loss
    history."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    head = PMLHead(videos[0].embeddings.channels, config.dim, config.hidden)
    loss_fn = LOSSES[config.loss]

    def step_loss() -> torch.Tensor:
        losses = []
        for video in rng.choice(len(videos), config.batch):
            (af, ac, al), (pf, pc, pl) = sample_triplet(videos[video], config.anchors, config.pool, rng)
            anchors = head(nn.functional.dropout(af, config.dropout), ac)
            pool = head(nn.functional.dropout(pf, config.dropout), pc)
            losses.append(loss_fn(anchors, pool, al, pl, config.margin, generator))
        return torch.stack(losses).mean()

    history = yield from fit(torch.optim.Adam(head.parameters(), lr=config.lr), config.steps, step_loss, stage)
    return head, history


def run(data: Path, out: Path, config: TrainConfig, device: str, command: str, plot: Path | None = None
        ) -> Generator[Progress, None, Path]:
    """Train on `data` (our split of it), save the head to `out` with its training record."""
    return (yield from common.run(data, out, config, train, device, command, plot, f"PML head, {config.loss} loss"))


register_trainer(Trainer("pml", "the PML embedding head (triplet loss of Chen et al. 2018, Eq. 1)",
                         "Train the PML head on DAVIS-style sequence folders.", TrainConfig, run,
                         "src/napari_vosembed/models/pml_head.pt"))
