"""`vosembed train lse`: the LSE network on zoomed-in crops (Ci et al. 2018, Sec. 5.2).

Each frame t of a training sequence gives crops taken as the zoom-in takes them at test time: the
tight box of the object on frame t - 1, jittered (each side scaled by 0.9 to 1.15, the centre moved
by N(0, 0.05) sides; further crops of the frame loosely, sides up to 1.6 times larger, as a
drifting track gives them), enlarged by the context factor, cropped from frame t and resized to the
crop size. The crops of a sequence form a video of their own, embedded once by the backbone and
cached like any video. Training runs the stages of Sec. 5.2 (`engine.nets.lse.STAGES`): the
appearance embedding and the foreground prediction, then the location embedding, then the
location-sensitive embedding with all losses; each stage its own cosine schedule.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..engine.cache import embed_video
from ..engine.heads import fit
from ..engine.nets.lse import CROP_SETTINGS, STAGES, LSENet, grid_shares, jittered, losses
from ..engine.zoom import CONTEXT, crop, search_box, tight_box
from ..io import as_video, read_sequence
from ..progress import Progress
from . import Trainer, common, register_trainer
from .common import TrainingVideo, option

@dataclass
class TrainConfig(common.TrainConfig):
    steps: int = option(600, "optimiser steps of each stage (appearance, location, location-sensitive)")
    dim: int = option(32, "width of the appearance embedding")
    hidden: int = option(128, "width of the per-cell projection of the backbone features")
    trunk: int = option(32, "channels of the convolutions between the projection and the outputs")
    batch: int = option(4, "crops per step")
    context: float = option(CONTEXT, "search box side over object box side")
    crops: int = option(2, "crops per frame: the first with a tight jitter, the others loose")
    loose: float = option(1.6, "a loose crop's box sides are scaled by 0.9 to this (a drifting track)")
    mirror: bool = option(True, "mirror each crop left-right at random")
    scale: float | None = field(default=None, metadata={"hidden": True})  # crops are embedded at their own size

    @property
    def settings(self):
        return CROP_SETTINGS


def sequence_crops(seq, rng: np.random.Generator, context: float, crops: int = 1, loose: float = 1.6
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The training crops of a sequence and the object's share of each of their cells:
    (n, s, s, 3) uint8 and (n, GRID, GRID) float32, `crops` per frame whose previous frame shows the
    object (the first jittered as `jittered` does by default, the others with sides up to `loose`
    times larger and their centres moved twice as far)."""
    gt = seq.ground_truth()
    images, shares = [], []
    for t in range(len(gt)):
        previous = gt[max(t - 1, 0)]
        box = tight_box(previous > 0) if previous is not None else None
        if box is None or gt[t] is None:
            continue
        frame = np.asarray(seq.video[t])
        frame = frame if frame.ndim == 3 else np.repeat(frame[..., None], 3, -1)
        for k in range(crops):
            moved = jittered(box, rng) if k == 0 else jittered(box, rng, loose, 0.1)
            search = search_box(moved, gt[t].shape, context)
            images.append(crop(frame, search))
            shares.append(grid_shares(crop((gt[t] > 0).astype(np.float32), search)))
    return np.stack(images), np.stack(shares)


def load_crops(data: Path, names: list[str], config: TrainConfig, device: str
               ) -> Generator[Progress, None, list[TrainingVideo]]:
    """Each training sequence's crops, embedded (cached): `TrainingVideo`s whose `masks` are the
    crops' cell shares."""
    videos = []
    for i, name in enumerate(names):
        rng = np.random.default_rng([config.seed, i])
        images, shares = sequence_crops(read_sequence(data / name), rng, config.context, config.crops, config.loose)
        emb = yield from embed_video(as_video(images), CROP_SETTINGS, device=device)
        videos.append(TrainingVideo(name, emb, np.zeros((0,), np.int64), shares))
        yield Progress(i + 1, len(names), "crops")
    return videos


def train(videos: list[TrainingVideo], config: TrainConfig) -> Generator[Progress, None, tuple[LSENet, list]]:
    """The stages in turn, Adam on the sum of each stage's losses over `batch` crops a step, each crop
    mirrored at random (`mirror`); returns the network and the loss history (steps counted across stages)."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    net = LSENet(videos[0].embeddings.channels, config.hidden, config.trunk, config.dim)
    samples = [(v, i) for v, video in enumerate(videos) for i in range(len(video.masks))]
    history = []
    for number, stage in enumerate(STAGES):
        def step_loss(stage=stage) -> torch.Tensor:
            projected, shares = [], []
            for k in rng.choice(len(samples), config.batch):
                v, i = samples[k]
                p, s = net.projected(videos[v].embeddings, [i])[0], torch.from_numpy(videos[v].masks[i])
                if config.mirror and rng.random() < 0.5:
                    p, s = p.flip(-1), s.flip(-1)
                projected.append(p)
                shares.append(s)
            return losses(net(torch.stack(projected)), torch.stack(shares), None, stage, rng)

        optimiser = torch.optim.Adam(net.parameters(), lr=config.lr)
        stage_history = yield from fit(optimiser, config.steps, step_loss, f"stage {number + 1}: {stage}")
        history += [(number * config.steps + step, loss) for step, loss in stage_history]
    return net.eval().requires_grad_(False), history


def run(data: Path, out: Path, config: TrainConfig, device: str, command: str, plot: Path | None = None
        ) -> Generator[Progress, None, Path]:
    """Train on the crops of our split of `data`; save the network to `out` with its training record."""
    return (yield from common.run(data, out, config, train, device, command, plot,
                                  "LSE network, sum of the stage's losses", load=load_crops))


register_trainer(Trainer("lse", "the LSE network (zoomed-in crops -> embeddings, location, foreground; Ci et al. 2018)",
                         "Train the LSE network in stages on zoomed-in crops of the frames of DAVIS-style sequence "
                         "folders.", TrainConfig, run, "src/napari_vosembed/models/lse.pt"))
