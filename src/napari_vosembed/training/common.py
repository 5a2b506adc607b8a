"""What training any head needs: our split of a sequence root, the cached features with gridded
ground truth, the optimisation loop, and the saved head with its training record."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..engine.cache import EmbeddingSettings, Embeddings, embed_video
from ..engine.heads import MODELS_DIR, Head, record_shipped
from ..io import list_sequences, mirrored, read_sequence
from ..io.writers import atomic
from ..engine.grid import cell_labels
from ..progress import Progress


def davis_split(names: list[str]) -> tuple[list[str], list[str]]:
    """Our fixed split of a sequence list: every fourth sequence (alphabetical, from the first) is
    held out for validation, the rest train."""
    names = sorted(names)
    held_out = names[::4]
    return [n for n in names if n not in held_out], held_out


def option(default, help: str):
    """A config field with the help text its `vosembed train` option shows."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """What every network's training takes; each trainer's config adds its own fields and defaults
    (every field is an option of `vosembed train NAME`)."""

    steps: int = option(1000, "optimiser steps")
    dim: int = option(128, "width of the embedding")
    hidden: int = option(256, "width of the hidden layer")
    lr: float = option(1e-3, "learning rate (Adam, cosine schedule)")
    seed: int = option(0, "random seed")
    mirror: bool = option(True, "train on each sequence's left-right mirror image too")
    scale: float | None = option(None, "frame scale of the backbone embeddings (None: about 0.1 megapixel, "
                                       "0.5 for 480p)")

    @property
    def settings(self) -> EmbeddingSettings:
        """The embedding settings the network is trained (and later used) with."""
        return EmbeddingSettings(scale=self.scale)


@dataclass
class TrainingVideo:
    name: str
    embeddings: Embeddings
    labels: np.ndarray  # (T, h*w) int64, the majority ground-truth label of each cell
    masks: np.ndarray | None = None  # (T, H, W) bool full-resolution masks, for trainers that need them


def load_videos(root: Path, names: list[str], settings: EmbeddingSettings, device: str = "auto",
                mirror: bool = False) -> Generator[Progress, None, list[TrainingVideo]]:
    """Embed (or reuse the cached embeddings of) each sequence and grid its ground truth; with
    `mirror`, each sequence's mirror image (frames and masks) follows it as a training video of its own."""
    videos = []
    for i, name in enumerate(names):
        seq = read_sequence(root / name)
        copies = [(name, seq.video, lambda m: m)]
        if mirror:
            copies.append((f"{name} (mirrored)", mirrored(seq.video), lambda m: m[:, ::-1]))
        for label, video, orient in copies:
            emb = yield from embed_video(video, settings, device=device)
            labels = np.stack([cell_labels(np.ascontiguousarray(orient(seq.masks[t])), emb.grid_shape,
                                           emb.settings.stride).reshape(-1) for t in range(len(seq.masks))])
            videos.append(TrainingVideo(label, emb, labels.astype(np.int64)))
        yield Progress(i + 1, len(names), "ground truth")
    return videos


def run(data: Path, out: Path, config: TrainConfig, train: Callable, device: str, command: str, plot: Path | None,
        title: str, load: Callable | None = None) -> Generator[Progress, None, Path]:
    """Train with `train(videos, config)` (a generator returning the head and its loss history) on
    our split of `data`; save the head to `out` and its training record beside it (.json). `load`:
    `load(data, names, config, device)`, a generator returning the training videos (default: the
    sequences' embeddings and gridded ground truth, `load_videos`)."""
    train_names, held_out = davis_split(list_sequences(data))
    if load is None:
        videos = yield from load_videos(data, train_names, config.settings, device, config.mirror)
    else:
        videos = yield from load(data, train_names, config, device)
    start = time.perf_counter()
    head: Head
    head, history = yield from train(videos, config)
    meta = {"data": str(data), "train_sequences": train_names, "held_out_sequences": held_out,
            "config": {**asdict(config), "settings": asdict(config.settings)}, "loss_history": history,
            "train_seconds": round(time.perf_counter() - start, 1), "command": command,
            "torch": torch.__version__}
    if hasattr(head, "scale"):
        meta["temperature"] = 1 / head.scale
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic(out) as partial:  # a killed run leaves the head it was to replace, never half a file
        head.save(partial, config.settings, meta)
    with atomic(out.with_suffix(".json")) as partial:
        partial.write_text(json.dumps(meta, indent=1))
    if out.parent.resolve() == MODELS_DIR.resolve():
        record_shipped(out)
    if plot is not None:
        plot_history(history, plot, title)
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
