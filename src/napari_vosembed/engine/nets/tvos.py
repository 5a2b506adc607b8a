"""The TVOS embedding head (Zhang et al. 2020, Sec. 3.4)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import Embeddings
from ..heads import Head, project_levels

#: The trained head that ships with the package (model card: docs/tvos.md).
DEFAULT_HEAD = Path(__file__).parents[2] / "models" / "tvos_head.pt"


class TVOSHead(Head):
    """The embedding of Sec. 3.4 on top of the frozen backbone: a per-pixel MLP (1x1 convolutions)
    to a `dim`-dimensional L2-normalised embedding, and the learned similarity scale s of Eq. 6."""

    kind, train_command = "TVOS head", "vosembed train tvos"

    def __init__(self, in_channels: int, dim: int = 32, hidden: int = 128, temperature: float = 0.1):
        super().__init__()
        self.config = {"in_channels": in_channels, "dim": dim, "hidden": hidden, "temperature": temperature}
        self.net = nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))
        self.log_scale = nn.Parameter(torch.tensor(-math.log(temperature)))

    @property
    def scale(self) -> float:
        return float(self.log_scale.exp())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Embeddings of (..., C) features (`Embeddings.frame_features`)."""
        return F.normalize(self.net(features), dim=-1)

    def embed(self, embeddings: Embeddings, frames: list[int], top: int = 0, left: int = 0,
              size: int | None = None) -> torch.Tensor:
        """`self(embeddings.frame_features(t))` for each t of `frames`, on the window of `size`
        cells (default: all) at (top, left): (len(frames), rows, cols, dim), through
        `project_levels`."""
        first = self.net[0]
        hidden = project_levels(embeddings, first.weight, frames, top, left, size) + first.bias
        return F.normalize(self.net[2](F.relu(hidden)), dim=-1)
