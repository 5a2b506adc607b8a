"""The stride-s grid every method works on: ground truth per grid cell, and the cells' positions.

The cached embeddings have one vector per grid cell of `stride` pixels (`Embeddings.grid_shape`);
masks, clicks and boxes are full-resolution. These helpers map one onto the other, the same way
for every method and trainer.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch


def _area_shares(labels: np.ndarray, values: np.ndarray, grid: tuple[int, int], stride: float, pad: str
                 ) -> np.ndarray:
    """(h, w, K) area of each label value in each grid cell (INTER_AREA of the one-hot mask). Cells
    past the frame's edge see `pad`: "edge" repeats the last row / column, "zero" adds 0s."""
    h, w = grid
    size = (int(round(h * stride)), int(round(w * stride)))
    crop = labels[: size[0], : size[1]]
    widths = ((0, size[0] - crop.shape[0]), (0, size[1] - crop.shape[1]))
    padded = np.pad(crop, widths, mode="edge") if pad == "edge" else np.pad(crop, widths)
    return np.stack([cv2.resize((padded == v).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
                     for v in values], -1)


def cell_shares(labels: np.ndarray, values: np.ndarray, grid: tuple[int, int], stride: float) -> np.ndarray:
    """(h*w, K) share of each label value of `values` in each grid cell: the one-hot mask downsampled
    by area (TVOS's soft first-frame labels, Sec. 3.3). Cells past the frame's edge repeat its last
    row / column."""
    shares = _area_shares(labels, values, grid, stride, "edge")
    return (shares / shares.sum(-1, keepdims=True)).reshape(grid[0] * grid[1], len(values))


def cell_labels(labels: np.ndarray, grid: tuple[int, int], stride: float) -> np.ndarray:
    """(h, w) majority label of each grid cell of a full-resolution label image (area vote; past the
    frame's edge counts as 0)."""
    values = np.unique(labels)
    return values[_area_shares(labels, values, grid, stride, "zero").argmax(-1)]


def grid_coords(t: int, n_frames: int, grid: tuple[int, int]) -> torch.Tensor:
    """(h*w, 3) normalised coordinates (i / h, j / w, t / T) of frame t's cells (the PML head's
    extra inputs, Chen et al. 2018, Sec. 3.1)."""
    h, w = grid
    ii, jj = torch.meshgrid(torch.arange(h, dtype=torch.float32) / h, torch.arange(w, dtype=torch.float32) / w,
                            indexing="ij")
    return torch.stack([ii.reshape(-1), jj.reshape(-1), torch.full((h * w,), t / max(n_frames, 1))], 1)


def grid_positions(grid: tuple[int, int]) -> torch.Tensor:
    """(h*w, 2) float (row, column) of every cell, in grid units."""
    h, w = grid
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([yy.reshape(-1), xx.reshape(-1)], 1)


def cell_index(y: np.ndarray, x: np.ndarray, grid: tuple[int, int], stride: float) -> np.ndarray:
    """Flat grid index of the cells holding the pixels (y, x), clipped to the grid."""
    h, w = grid
    i = np.clip((np.asarray(y) / stride).astype(np.int64), 0, h - 1)
    j = np.clip((np.asarray(x) / stride).astype(np.int64), 0, w - 1)
    return i * w + j
