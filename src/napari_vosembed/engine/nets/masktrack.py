"""The MaskTrack network (Perazzi et al. 2017, Sec. 3.1) on our backbone: the frame's cached features
and a rough mask of the object in, the refined mask out, one pass per frame."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import Embeddings
from ..heads import Head, project_levels

_MODELS = Path(__file__).parents[2] / "models"
#: The trained networks that ship with the package (model cards: docs/masktrack.md): the frame
#: branch, the flow branch (flow magnitude images in) and the box-to-segment network (MaskTrack-Box).
DEFAULT_NET, FLOW_NET, BOX_NET = (_MODELS / f"{name}.pt" for name in ("masktrack", "masktrack-flow", "masktrack-box"))


class MaskTrackNet(Head):
    """A light decoder on the frozen backbone: the features (h, w, C) projected to `hidden` channels
    (1x1), the rough mask's share of each grid cell as one more channel, then three 3x3 convolutions
    (dilations 1, 2, 4: a receptive field of 15 cells, 120 pixels of a 480p frame) to a correction of
    the rough mask: logit = decoder + prior * (rough - 1/2), `prior` learned (from 8), so that the
    network starts from the rough mask and learns what to change in it."""

    kind, train_command = "MaskTrack network", "vosembed train masktrack"

    def __init__(self, in_channels: int, hidden: int = 64):
        super().__init__()
        self.config = {"in_channels": in_channels, "hidden": hidden}
        self.project = nn.Linear(in_channels, hidden)
        self.decode = nn.Sequential(
            nn.Conv2d(hidden + 1, hidden, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=2, dilation=2), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=4, dilation=4), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, 1))
        self.prior = nn.Parameter(torch.tensor(8.0))

    def project_frame(self, embeddings: Embeddings, t: int) -> torch.Tensor:
        """The projected features of frame t, (hidden, h, w), on the network's device: what the mask
        does not change, `project(frame_features(t))` level by level (`project_levels`: the same
        numbers without building the combined features)."""
        return F.relu(project_levels(embeddings, self.project.weight, [t])[0] + self.project.bias).permute(2, 0, 1)

    def forward(self, projected: torch.Tensor, rough: torch.Tensor) -> torch.Tensor:
        """Object logits (B, h, w) from projected features (B, hidden, h, w) and rough masks (B, h, w)
        (each cell's share of the object, 0..1)."""
        return self.decode(torch.cat([projected, rough[:, None]], 1))[:, 0] + self.prior * (rough - 0.5)
