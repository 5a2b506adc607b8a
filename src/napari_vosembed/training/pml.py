"""`vosembed train pml`: train the PML embedding head on cached backbone features.

Sampling as in Chen et al. 2018, Sec. 3.3: each triplet draws three frames of one training video;
256 anchors come from one of them, the positive and negative pools from the other two. Anchors are
drawn half from object pixels and half from background where both exist (object pixels are rare,
and uniform anchors would teach the background alone); the pools are a random subset of the two
frames' pixels.
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..engine.cache import EmbeddingSettings, Embeddings, embed_video
from ..io import list_sequences, read_sequence
from ..methods.pml import PMLHead, cell_labels, grid_coords
from ..progress import Progress
from .losses import LOSSES


def davis_split(names: list[str]) -> tuple[list[str], list[str]]:
    """Our fixed split of a sequence list: every fourth sequence (alphabetical, from the first) is
    held out for validation, the rest train."""
    names = sorted(names)
    held_out = names[::4]
    return [n for n in names if n not in held_out], held_out


@dataclass
class TrainConfig:
    steps: int = 800
    batch: int = 4
    anchors: int = 256
    pool: int = 2048
    margin: float = 0.3
    loss: str = "pml"
    lr: float = 1e-3
    dim: int = 128
    hidden: int = 256
    seed: int = 0
    settings: EmbeddingSettings = field(default_factory=EmbeddingSettings)


@dataclass
class TrainingVideo:
    name: str
    embeddings: Embeddings
    labels: np.ndarray  # (T, h*w) int64, the majority ground-truth label of each cell


def load_videos(root: Path, names: list[str], settings: EmbeddingSettings, device: str = "auto"
                ) -> Generator[Progress, None, list[TrainingVideo]]:
    """Embed (or reuse the cached embeddings of) each sequence and grid its ground truth."""
    videos = []
    for i, name in enumerate(names):
        seq = read_sequence(root / name)
        emb = yield from embed_video(seq.video, settings, device=device)
        grid = emb.grid_shape
        labels = np.stack([cell_labels(seq.masks[t], grid, emb.settings.stride).reshape(-1)
                           for t in range(len(seq.masks))])
        videos.append(TrainingVideo(name, emb, labels.astype(np.int64)))
        yield Progress(i + 1, len(names), "ground truth")
    return videos


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
    fg, bg = np.flatnonzero(labels > 0), np.flatnonzero(labels == 0)
    n_fg = min(len(fg), n_anchors // 2) if len(bg) else min(len(fg), n_anchors)
    cells = np.concatenate([rng.choice(fg, n_fg, replace=False),
                            rng.choice(bg, min(len(bg), n_anchors - n_fg), replace=False)])
    anchor = _cell_inputs(video, anchor_frame, cells)
    pools = [_cell_inputs(video, t, rng.choice(labels.size, min(labels.size, n_pool // 2), replace=False))
             for t in pool_frames]
    return anchor, tuple(torch.cat(parts) for parts in zip(*pools))


def train(videos: list[TrainingVideo], config: TrainConfig) -> Generator[Progress, None, tuple[PMLHead, list]]:
    """Adam on the chosen loss; returns the head and the loss history [(step, mean loss)]."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    head = PMLHead(videos[0].embeddings.channels, config.dim, config.hidden)
    optimiser = torch.optim.Adam(head.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, config.steps)
    loss_fn = LOSSES[config.loss]
    history, running = [], []
    for step in range(1, config.steps + 1):
        losses = []
        for video in rng.choice(len(videos), config.batch):
            (af, ac, al), (pf, pc, pl) = sample_triplet(videos[video], config.anchors, config.pool, rng)
            losses.append(loss_fn(head(af, ac), head(pf, pc), al, pl, config.margin, generator))
        loss = torch.stack(losses).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        running.append(loss.item())
        if step % 25 == 0 or step == config.steps:
            history.append((step, float(np.mean(running))))
            running = []
        yield Progress(step, config.steps, "training")
    return head.eval().requires_grad_(False), history


def run(data: Path, out: Path, config: TrainConfig, device: str, command: str, plot: Path | None = None
        ) -> Generator[Progress, None, Path]:
    """Train on `data` (our split of it), save the head to `out` with its training record."""
    train_names, held_out = davis_split(list_sequences(data))
    videos = yield from load_videos(data, train_names, config.settings, device)
    start = time.perf_counter()
    head, history = yield from train(videos, config)
    meta = {"data": str(data), "train_sequences": train_names, "held_out_sequences": held_out,
            "config": {**asdict(config), "settings": asdict(config.settings)}, "loss_history": history,
            "train_seconds": round(time.perf_counter() - start, 1), "command": command,
            "torch": torch.__version__}
    out.parent.mkdir(parents=True, exist_ok=True)
    head.save(out, config.settings, meta)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    if plot is not None:
        plot_history(history, plot, f"PML head, {config.loss} loss")
    return out


def plot_history(history: list, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, values = zip(*history)
    fig, ax = plt.subplots(figsize=(5, 3), dpi=110)
    ax.plot(steps, values)
    ax.set(xlabel="step", ylabel="loss (mean of 25 steps)", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
