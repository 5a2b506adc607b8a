"""`vosembed train masktrack`: the MaskTrack network from static images (Perazzi et al. 2017, Sec. 3.2).

Every frame of our training split is a static image: its true mask, deformed (`engine.deform`:
affine, thin-plate spline, dilation), is the rough mask the network gets with the frame's cached
features, and the true mask's share of each grid cell is the target (binary cross-entropy). A new
deformation is drawn for every sample, so every frame gives many rough masks. `--rough box` trains
MaskTrack-Box's box-to-segment network (the rough mask is the filled bounding box of a deformed
mask); `--input flow` the flow branch (the features are those of the frame's optical-flow magnitude
image, `engine.flow`).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.cache import embed_video
from ..engine.deform import deform_mask
from ..engine.flow import magnitude_video, video_flow
from ..engine.grid import cell_shares
from ..engine.heads import fit
from ..engine.nets.masktrack import MaskTrackNet
from ..errors import VosEmbedError
from ..io import mirrored, read_sequence
from ..progress import Progress
from . import Trainer, common, register_trainer
from .common import TrainingVideo, option


@dataclass
class TrainConfig(common.TrainConfig):
    steps: int = option(600, "optimiser steps")
    hidden: int = option(64, "channels of the decoder")
    batch: int = option(4, "frames (each with a fresh deformation of its mask) per step")
    rough: str = option("deformed", "the rough masks: 'deformed' (MaskTrack) or 'box' (MaskTrack-Box: the filled "
                                    "bounding box of a deformed mask)")
    input: str = option("frames", "what the network reads: 'frames' or 'flow' (the optical-flow magnitude images: "
                                  "the flow branch)")


def shares(mask: np.ndarray, grid: tuple[int, int], stride: float) -> np.ndarray:
    """(h, w) share of the object in each grid cell of a binary mask."""
    return cell_shares(mask.astype(np.uint8), np.array([0, 1]), grid, stride)[:, 1].reshape(grid)


def box_of(mask: np.ndarray) -> np.ndarray:
    """The filled bounding box of a binary mask (empty for an empty mask)."""
    box = np.zeros(mask.shape, bool)
    ys, xs = np.nonzero(mask)
    if len(ys):
        box[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
    return box


def deformed_pair(mask: np.ndarray, grid: tuple[int, int], stride: float, rng: np.random.Generator,
                  rough: str = "deformed") -> tuple[np.ndarray, np.ndarray]:
    """(rough, target) cell shares of a deformed copy of `mask` (its bounding box with `rough` 'box')
    and of `mask` itself."""
    deformed = deform_mask(mask, rng)
    return shares(box_of(deformed) if rough == "box" else deformed, grid, stride), shares(mask > 0, grid, stride)


def train(videos: list[TrainingVideo], config: TrainConfig) -> Generator[Progress, None, tuple[MaskTrackNet, list]]:
    """Adam on the cross-entropy of the refined masks; returns the network and its loss history."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    net = MaskTrackNet(videos[0].embeddings.channels, config.hidden)
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr)
    frames = [(v, t) for v, video in enumerate(videos) for t in range(len(video.masks)) if video.masks[t].any()]

    def step_loss() -> torch.Tensor:
        projected, rough, target = [], [], []
        for i in rng.choice(len(frames), config.batch):
            v, t = frames[i]
            emb = videos[v].embeddings
            r, g = deformed_pair(videos[v].masks[t], emb.grid_shape, emb.settings.stride, rng, config.rough)
            projected.append(net.project_frame(emb, t))
            rough.append(torch.from_numpy(r))
            target.append(torch.from_numpy(g))
        logits = net(torch.stack(projected), torch.stack(rough))
        return F.binary_cross_entropy_with_logits(logits, torch.stack(target))

    history = yield from fit(optimiser, config.steps, step_loss)
    return net.eval().requires_grad_(False), history


def with_masks(videos: list[TrainingVideo], data: Path) -> list[TrainingVideo]:
    """Each training video with its full-resolution binary masks (`masks`), mirrored like its frames."""
    for video in videos:
        name, mirrored = video.name.removesuffix(" (mirrored)"), video.name.endswith("(mirrored)")
        masks = np.stack([m > 0 for m in read_sequence(data / name).masks])
        video.masks = np.ascontiguousarray(masks[:, :, ::-1]) if mirrored else masks
    return videos


def with_flow(videos: list[TrainingVideo], data: Path, device: str) -> Generator[Progress, None, list[TrainingVideo]]:
    """Each training video with the embeddings of its optical-flow magnitude images instead of its
    frames' (same settings, hence the same grid)."""
    for i, video in enumerate(videos):
        name = video.name.removesuffix(" (mirrored)")
        frames = read_sequence(data / name).video
        flow = yield from video_flow(mirrored(frames) if video.name.endswith("(mirrored)") else frames)
        video.embeddings = yield from embed_video(magnitude_video(flow), video.embeddings.settings, device=device)
        yield Progress(i + 1, len(videos), "flow magnitude")
    return videos


def run(data: Path, out: Path, config: TrainConfig, device: str, command: str, plot: Path | None = None
        ) -> Generator[Progress, None, Path]:
    """Train on `data` (our split of it), save the network to `out` with its training record."""
    if config.rough not in ("deformed", "box") or config.input not in ("frames", "flow"):
        raise VosEmbedError(f"--rough is 'deformed' or 'box' (not {config.rough!r}); --input is 'frames' or 'flow' "
                            f"(not {config.input!r})")

    def train_on(videos: list[TrainingVideo], c: TrainConfig):
        videos = with_masks(videos, data)
        if c.input == "flow":
            videos = yield from with_flow(videos, data, device)
        return (yield from train(videos, c))

    return (yield from common.run(data, out, config, train_on, device, command, plot,
                                  "MaskTrack network, cross-entropy of the refined mask"))


register_trainer(Trainer("masktrack", "the MaskTrack network (rough mask -> refined mask, Perazzi et al. 2017)",
                         "Train the MaskTrack network on deformed masks of the frames of DAVIS-style sequence folders.",
                         TrainConfig, run, "src/napari_vosembed/models/masktrack.pt"))
