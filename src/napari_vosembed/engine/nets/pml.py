"""The PML embedding head (Chen et al. 2018, Sec. 3.1) and what training and fine-tuning it samples."""

from __future__ import annotations

import copy
from collections.abc import Generator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..cache import Embeddings
from ..grid import grid_coords
from ..heads import Head, fit, project_levels
from ..losses import pml_triplet
from ...progress import Progress

#: The trained head that ships with the package (model card: docs/models/pml-head.md).
DEFAULT_HEAD = Path(__file__).parents[2] / "models" / "pml_head.pt"


class PMLHead(Head):
    """Embedding head e = f(x, i, j, t) (Sec. 3.1): backbone features plus the pixel's normalised
    coordinates and frame number, through 1x1 convolutions (here per-pixel linear layers), to a
    d-dimensional, L2-normalised embedding.

    With `members` > 1 (beyond the paper) the head is an ensemble of that many such networks,
    trained apart with their own seeds; its embedding is theirs side by side over sqrt(members), so
    the inner product of two embeddings is the mean of the members' cosine similarities."""

    kind, train_command = "PML head", "vosembed train pml"

    def __init__(self, in_channels: int, dim: int = 128, hidden: int = 256, members: int = 1):
        super().__init__()
        self.config = {"in_channels": in_channels, "dim": dim, "hidden": hidden, "members": members}
        self.nets = nn.ModuleList(
            nn.Sequential(nn.Linear(in_channels + 3, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))
            for _ in range(members))

    @property
    def out_dim(self) -> int:
        """Width of the embedding: `dim` per member."""
        return self.config["dim"] * len(self.nets)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Also a single head saved before ensembles existed (keys `net.*`), as member 0."""
        state_dict = {("nets.0." + k[4:] if k.startswith("net.") else k): v for k, v in state_dict.items()}
        return super().load_state_dict(state_dict, strict, assign)

    def _join(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([nn.functional.normalize(o, dim=-1) for o in outputs], -1) / len(outputs) ** 0.5

    def forward(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        inputs = torch.cat([features, coords], -1)
        return self._join([net(inputs) for net in self.nets])

    def embed(self, embeddings: Embeddings, t: int, n_frames: int) -> torch.Tensor:
        """(h*w, out_dim) = `self(embeddings.frame_features(t), grid_coords(t, ...))`, with the
        members' first layers applied level by level in one pass (`project_levels`: the same
        numbers, 6x fewer operations)."""
        channels, hidden = embeddings.channels, self.config["hidden"]
        weight = torch.cat([net[0].weight for net in self.nets])
        features = project_levels(embeddings, weight[:, :channels], [t])[0].reshape(-1, len(weight))
        coords = grid_coords(t, n_frames, embeddings.grid_shape).to(weight.device)
        hidden_all = features + coords @ weight[:, channels:].T + torch.cat([net[0].bias for net in self.nets])
        return self._join([net[2](nn.functional.relu(h)) for net, h in zip(self.nets, hidden_all.split(hidden, -1))])



def balanced_anchors(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most n anchors, half object and half background where both exist (Sec. 3.3
    draws them uniformly; object pixels are rare, and uniform anchors would teach the background)."""
    fg, bg = np.flatnonzero(labels > 0), np.flatnonzero(labels == 0)
    n_fg = min(len(fg), n // 2) if len(bg) else min(len(fg), n)
    return np.concatenate([rng.choice(fg, n_fg, replace=False), rng.choice(bg, min(len(bg), n - n_fg), replace=False)])



def finetune(head: PMLHead, features: torch.Tensor, coords: torch.Tensor, labels: np.ndarray, steps: int, lr: float,
             anchors: int = 256, pool: int = 2048, margin: float = 0.3, seed: int = 0, loss=pml_triplet
             ) -> Generator[Progress, None, tuple[PMLHead, list]]:
    """A copy of `head` fitted to the cells of an annotated video (`features`, `coords` and their
    ground-truth `labels`): `steps` of Adam on `loss` (default: Eq. 1; `engine.losses`), the anchors
    (`balanced_anchors`) from a random half of the cells, the positive and negative pool from the
    other half (Sec. 3.3 draws the pool from two other frames, which one mask lacks). Returns the
    tuned head (frozen) and the loss history [(step, mean loss)]."""
    device = features.device
    targets = torch.from_numpy(labels.astype(np.int64)).to(device)
    tuned = copy.deepcopy(head).train().requires_grad_(True)
    rng = np.random.default_rng(seed)

    def step_loss() -> torch.Tensor:
        order = rng.permutation(len(labels))
        half, rest = order[: len(order) // 2], order[len(order) // 2:]
        a = torch.from_numpy(half[balanced_anchors(labels[half], anchors, rng)]).to(device)
        p = torch.from_numpy(rest[:pool]).to(device)
        return loss(tuned(features[a], coords[a]), tuned(features[p], coords[p]), targets[a], targets[p], margin)

    history = yield from fit(torch.optim.Adam(tuned.parameters(), lr=lr), steps, step_loss)
    return tuned.eval().requires_grad_(False), history
