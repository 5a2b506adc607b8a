"""The LSE network (Ci et al. 2018, Sec. 3): on the backbone features of a zoomed-in crop, an
appearance embedding, a location embedding, their location-sensitive combination and a foreground
prediction; the fusion of Sec. 4.3."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..cache import EmbeddingSettings, Embeddings
from ..heads import Head, project_levels
from ..zoom import CROP_SIZE

#: The trained network that ships with the package (model card: docs/models/lse.md).
DEFAULT_NET = Path(__file__).parents[2] / "models" / "lse.pt"
#: The crops' embedding settings: the backbone at the crop's own size, no objectness map.
CROP_SETTINGS = EmbeddingSettings(scale=1.0, saliency_stride=0)
#: The side of a crop's grid: one cell per `min(levels)` pixels of the crop.
GRID = CROP_SIZE // min(CROP_SETTINGS.levels)


@dataclass
class LSEOutput:
    """The heads' outputs on B crops of an (h, w) grid: foreground logits (B, h, w); the appearance
    embedding (B, h, w, d), unit norm; the location embedding, each cell's offset to its object's
    centre in crop units (B, h, w, 2); the location-sensitive embedding (B, h, w, d + k), unit norm;
    the cells' own positions (h, w, 2), (y, x) in crop units."""

    foreground: torch.Tensor
    appearance: torch.Tensor
    offsets: torch.Tensor
    lse: torch.Tensor
    positions: torch.Tensor


def positions(h: int, w: int, device=None) -> torch.Tensor:
    """(h, w, 2) the centres of an (h, w) grid's cells, (y, x) as fractions of the crop's sides."""
    ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1)


class LSENet(Head):
    """Heads on the frozen backbone's features of a crop: a per-cell projection (applied level by
    level, `project_levels`), the cells' positions in the crop as two more channels, four 3x3
    convolutions (dilations 1, 2, 4, 8: a receptive field of 31 cells, 124 pixels of a 320 crop),
    then 1x1 outputs: the appearance embedding (Sec. 3.1), the location embedding o (Sec. 3.2: each
    cell's offset to its object's centre, zero on the background), the foreground logit (Sec. 3.4).
    The location-sensitive embedding (Sec. 3.3) is the appearance embedding beside an embedding of
    the object-centre map c = position + o (two small linear layers), normalised together."""

    kind, train_command = "LSE network", "vosembed train lse"

    def __init__(self, in_channels: int, hidden: int = 128, trunk: int = 32, dim: int = 32, centre_dim: int = 16):
        super().__init__()
        self.config = {"in_channels": in_channels, "hidden": hidden, "trunk": trunk, "dim": dim,
                       "centre_dim": centre_dim}
        self.project = nn.Linear(in_channels, hidden)
        layers, channels = [], hidden + 2
        for dilation in (1, 2, 4, 8):
            layers += [nn.Conv2d(channels, trunk, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]
            channels = trunk
        self.trunk = nn.Sequential(*layers)
        self.appearance = nn.Conv2d(trunk, dim, 1)
        self.location = nn.Conv2d(trunk, 2, 1)
        self.foreground = nn.Conv2d(trunk, 1, 1)
        self.centre = nn.Sequential(nn.Linear(2, centre_dim), nn.ReLU(inplace=True), nn.Linear(centre_dim, centre_dim))

    def projected(self, embeddings: Embeddings, frames: list[int]) -> torch.Tensor:
        """ReLU of the per-cell projection of the crops `frames` of `embeddings`, (B, hidden, h, w)."""
        out = project_levels(embeddings, self.project.weight, frames) + self.project.bias
        return F.relu(out).permute(0, 3, 1, 2)

    def forward(self, projected: torch.Tensor) -> LSEOutput:
        b, _, h, w = projected.shape
        pos = positions(h, w, projected.device)
        x = self.trunk(torch.cat([projected, pos.permute(2, 0, 1)[None].expand(b, -1, -1, -1)], 1))
        appearance = F.normalize(self.appearance(x), dim=1).permute(0, 2, 3, 1)
        offsets = self.location(x).permute(0, 2, 3, 1)
        lse = F.normalize(torch.cat([appearance, self.centre(pos + offsets)], -1), dim=-1)
        return LSEOutput(self.foreground(x)[:, 0], appearance, offsets, lse, pos)


def similarity(embeddings: torch.Tensor, representative: torch.Tensor) -> torch.Tensor:
    """2 / (1 + exp(||r - e||^2)) of each embedding to the representative r (Eq. 1's similarity)."""
    return 2 / (1 + torch.exp(((embeddings - representative) ** 2).sum(-1)))


def fuse(foreground: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """Sec. 4.3: the representative r is the median embedding of the cells predicted foreground
    (probability > 0.5); each cell's similarity to r, averaged with its foreground probability.
    `foreground` (h, w) probabilities, `embeddings` (h, w, d); nothing predicted foreground: the
    foreground probability alone."""
    chosen = embeddings[foreground > 0.5]
    if not len(chosen):
        return foreground
    return (foreground + similarity(embeddings, chosen.median(0).values)) / 2


def crop_embeddings(levels: dict[int, torch.Tensor], size: int, settings: EmbeddingSettings = CROP_SETTINGS
                    ) -> Embeddings:
    """In-memory `Embeddings` of crops from `cache.normalized_levels` (level -> (B, h, w, C)), for
    `LSENet.projected`: the tensors where they are (on a GPU, they stay there)."""
    arrays = {level: f.float() for level, f in levels.items()}
    n = len(next(iter(arrays.values())))
    return Embeddings(Path(), settings, (size, size), arrays, None, np.ones(n, bool))


#: The losses of each training stage (Sec. 5.2): the appearance embedding and the foreground first,
#: then the location embedding, then the location-sensitive embedding with everything else.
STAGES = {"appearance": ("fg", "ae"), "location": ("fg", "ae", "le"), "lse": ("fg", "ae", "le", "lse")}
#: Weight of the location loss (offsets in crop units are a few tenths: their squares are small).
LOCATION_WEIGHT = 10.0


def targets(shares: torch.Tensor, known: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground labels (B, h, w) from the object's share of each cell, and the location embedding's
    targets (B, h, w, 2): each foreground cell's offset to the object's centre (the mean position of
    its cells, among the `known` ones), zero on the background (Eq. 2)."""
    b, h, w = shares.shape
    pos = positions(h, w, shares.device)
    fg = shares >= 0.5
    if known is not None:
        fg = fg & known
    weight = fg.float()
    centre = (weight[..., None] * pos).sum((1, 2)) / weight.sum((1, 2)).clamp_min(1)[:, None]
    return fg, torch.where(fg[..., None], centre[:, None, None] - pos, 0.0)


def losses(out: LSEOutput, shares: torch.Tensor, known: torch.Tensor | None, stage: str,
           rng: np.random.Generator, anchors: int = 128, pool: int = 256) -> torch.Tensor:
    """The sum of the stage's losses on B crops (`shares`: (B, h, w) the object's share of each cell;
    `known`: (B, h, w) the cells with a label, None: all): L_fg, the cross-entropy of the foreground
    logits (Eq. 3); L_ae and L_lse, the pairwise loss of the appearance and location-sensitive
    embeddings on cells sampled per crop (Eq. 1, pairs weighted inversely to each instance's size,
    `losses.instance`); L_le, the squared error of the offsets (Eq. 2), weighted `LOCATION_WEIGHT`."""
    from ..losses import instance
    from .pml import balanced_anchors

    parts = STAGES[stage]
    fg, offsets = targets(shares, known)
    mask = torch.ones_like(fg) if known is None else known
    total = (F.binary_cross_entropy_with_logits(out.foreground, fg.float(), reduction="none") * mask).sum() \
        / mask.sum().clamp_min(1)
    if "le" in parts:
        error = ((out.offsets - offsets) ** 2).sum(-1)
        total = total + LOCATION_WEIGHT * (error * mask).sum() / mask.sum().clamp_min(1)
    for name, emb in (("ae", out.appearance), ("lse", out.lse)):
        if name not in parts:
            continue
        pair_losses = []
        for i in range(len(fg)):
            cells = np.flatnonzero(mask[i].reshape(-1).cpu().numpy())
            labels = fg[i].reshape(-1).cpu().numpy()[cells].astype(np.int64)
            if len(np.unique(labels)) < 2:
                continue
            a = torch.from_numpy(cells[balanced_anchors(labels, anchors, rng)]).to(emb.device)
            p = torch.from_numpy(rng.choice(cells, min(pool, len(cells)), replace=False)).to(emb.device)
            flat, lab = emb[i].reshape(-1, emb.shape[-1]), fg[i].reshape(-1).long()
            pair_losses.append(instance(flat[a], flat[p], lab[a], lab[p]))
        if pair_losses:
            total = total + torch.stack(pair_losses).mean()
    return total


def jittered(box, rng: np.random.Generator, largest: float = 1.15, shift: float = 0.05
             ) -> tuple[float, float, float, float]:
    """`box` with each side scaled by 0.9 to `largest` and its centre moved by N(0, `shift`) sides
    (the error of the previous frame's prediction, and the object's motion)."""
    y0, x0, y1, x1 = box
    h, w = (y1 - y0) * rng.uniform(0.9, largest), (x1 - x0) * rng.uniform(0.9, largest)
    cy, cx = (y0 + y1) / 2 + rng.normal(0, shift) * h, (x0 + x1) / 2 + rng.normal(0, shift) * w
    return cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2


def grid_shares(mask_crop: np.ndarray) -> np.ndarray:
    """(GRID, GRID) share of the object in each cell of a crop's (s, s) mask."""
    return cv2.resize(mask_crop.astype(np.float32), (GRID, GRID), interpolation=cv2.INTER_AREA)
