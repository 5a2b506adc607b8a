"""Transductive label propagation (Zhang et al. 2020, Eq. 6-7): the labels of a target frame are a
similarity-weighted average of the labels of reference frames, w_ij = exp(s f_i . f_j)
exp(-||loc(i) - loc(j)||^2 / sigma^2), normalised over every pixel of every reference frame.

`propagate_dense` builds the (HW x R*HW) affinity as written; `propagate` gives the same labels at a
fraction of the cost: each 4x4 tile of the target frame keeps only the 4x4 reference blocks around
it in every reference frame plus the best-scoring others of a coarse block-level pass, and computes
the exact weights of those pixels only (top-k blocks per tile). `propagation_logits` is Eq. 7 for
training on crops; `sample_references` is the reference-frame sampling of Sec. 3.3.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .grid import grid_positions

#: sigma of the motion prior (grid cells) for the recent and the distant reference frames (Sec. 3.3).
SIGMA_RECENT, SIGMA_DISTANT = 8.0, 21.0


def sample_references(step: int, n_recent: int = 4, n_distant: int = 5, span: int = 40) -> list[tuple[int, float]]:
    """Reference frames of the `step`-th frame after the seed (Sec. 3.3, Fig. 3), as
    (distance back along the propagation, sigma of the motion prior): the `n_recent` previous frames
    with sigma = 8, then `n_distant` spread evenly over the rest of the last `span` with sigma = 21.
    While fewer than `n_recent + n_distant` frames exist, all of them."""
    reach = min(step, span)
    if reach <= n_recent + n_distant:
        distances = list(range(1, reach + 1))
    else:
        distant = np.round(np.linspace(n_recent + 1, reach, n_distant)).astype(int)
        distances = [*range(1, n_recent + 1), *(int(d) for d in distant)]
    return [(d, SIGMA_RECENT if d <= n_recent else SIGMA_DISTANT) for d in distances]




def _sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distances between (..., M, 2) and (..., N, 2) positions: (..., M, N)."""
    return (a[..., :, None, :] - b[..., None, :, :]).pow(2).sum(-1)


def propagate_dense(query: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, sigmas: torch.Tensor,
                    grid: tuple[int, int], scale: float, rows: int = 1024) -> torch.Tensor:
    """Eq. 6-7 as written: the full affinity of the target's pixels to every reference pixel.

    query (N, d) and keys (R, N, d): L2-normalised embeddings of the target and the R reference
    frames (N = h*w); labels (R, N, K); sigmas (R,). Returns the (N, K) propagated label
    distribution. Target rows are processed `rows` at a time (the same numbers, bounded memory).
    """
    n_ref, n, _ = keys.shape
    pos = grid_positions(grid).to(query.device)
    flat_keys, flat_labels = keys.reshape(n_ref * n, -1), labels.reshape(n_ref * n, -1)
    inv_var = (1 / sigmas.to(query.device).float() ** 2).repeat_interleave(n)
    out = []
    for start in range(0, n, rows):
        q, p = query[start : start + rows], pos[start : start + rows]
        dist2 = _sq_dist(p, pos).repeat(1, n_ref)
        logits = scale * (q @ flat_keys.T) - dist2 * inv_var
        out.append(torch.softmax(logits, 1) @ flat_labels)
    return torch.cat(out)


def with_positions(query: torch.Tensor, keys: torch.Tensor, query_pos: torch.Tensor, key_pos: torch.Tensor,
                   inv_var: torch.Tensor, scale: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Append 4 coordinates so that one product gives Eq. 7's exponent:
    q' . k' = s q . k - ||p_q - p_k||^2 / sigma_k^2, since
    ||p_q - p_k||^2 = ||p_q||^2 - 2 p_q . p_k + ||p_k||^2.

    query (..., N, d) at query_pos (..., N, 2); keys (..., M, d) at key_pos (..., M, 2), each
    with its frame's inv_var = 1 / sigma^2 (..., M)."""
    query_pos = query_pos.expand(*query.shape[:-1], 2)
    key_pos = key_pos.expand(*keys.shape[:-1], 2)
    iv = inv_var.expand(keys.shape[:-1])[..., None]
    q = torch.cat([scale * query, query_pos, query_pos.pow(2).sum(-1, keepdim=True),
                   torch.ones_like(query_pos[..., :1])], -1)
    k = torch.cat([keys, 2 * key_pos * iv, -iv, -key_pos.pow(2).sum(-1, keepdim=True) * iv], -1)
    return q, k


def propagation_logits(query: torch.Tensor, keys: torch.Tensor, sigmas: torch.Tensor, grid: tuple[int, int],
                       scale: float | torch.Tensor, cells: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 7's exponents of every (target, reference) pixel pair, for training on crops
    (`propagate_dense` is the reference): query (..., Q, d) of the grid cells `cells` (default:
    all, Q = N), keys (..., R, N, d) -> (..., Q, R*N)."""
    n_ref, n, d = keys.shape[-3:]
    pos = grid_positions(grid).to(query.device)
    inv_var = (1 / sigmas.to(query.device).float() ** 2).repeat_interleave(n)
    q, k = with_positions(query, keys.reshape(*keys.shape[:-3], n_ref * n, d), pos if cells is None else pos[cells],
                          pos.repeat(n_ref, 1), inv_var, scale)
    return q @ k.transpose(-1, -2)


def _blocked(x: torch.Tensor, grid: tuple[int, int], block: int) -> torch.Tensor:
    """(..., h*w, c) -> (..., n_blocks, block*block, c): cells grouped by block, zero-padded."""
    h, w = grid
    lead, c = x.shape[:-2], x.shape[-1]
    nby, nbx = -(-h // block), -(-w // block)
    x = x.reshape(-1, h, w, c)
    x = F.pad(x, (0, 0, 0, nbx * block - w, 0, nby * block - h))
    x = x.reshape(-1, nby, block, nbx, block, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(*lead, nby * nbx, block * block, c)


def propagate(query: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, sigmas: torch.Tensor,
              grid: tuple[int, int], scale: float, block: int = 4, local: int = 1, extra: int = 192
              ) -> torch.Tensor:
    """`propagate_dense` over the reference pixels that carry the weight (docs/tvos.md: the same
    argmax on more than 99.9 % of the cells of DAVIS frames, about 50x faster).

    The target frame is cut into `block` x `block` tiles and every reference frame into blocks of
    the same size. A coarse pass scores each (tile, block) pair with Eq. 7 on their mean
    embeddings and centres; each tile keeps the blocks within `local` blocks of it in every
    reference frame and the `extra` best-scoring others (top-k), and the exact weights are
    computed over the pixels of those blocks only: with 10 reference frames, 282 blocks, 4,512 of
    the 64,200 reference pixels of a 480p frame.
    """
    h, w = grid
    n_ref, n, d = keys.shape
    dev = query.device
    nby, nbx = -(-h // block), -(-w // block)
    pos = _blocked(grid_positions(grid).to(dev), grid, block)  # (B, b2, 2)
    valid = _blocked(torch.ones(n, 1, device=dev), grid, block)[..., 0] > 0  # (B, b2)
    n_blocks, b2 = valid.shape
    inv_var = 1 / sigmas.to(dev).float() ** 2
    q, k = with_positions(_blocked(query, grid, block), _blocked(keys, grid, block), pos, pos,
                          inv_var[:, None, None], scale)
    k[:, ~valid, -1] = -1e4  # padding cells: weight exp(-1e4) = 0

    centres = (pos * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)  # (B, 2)
    q_mean = F.normalize(_blocked(query, grid, block).sum(1), dim=-1)
    k_mean = F.normalize(_blocked(keys, grid, block).sum(2), dim=-1)  # (R, B, d)
    cq, ck = with_positions(q_mean, k_mean, centres, centres, inv_var[:, None], scale)
    coarse = cq @ ck.reshape(n_ref * n_blocks, -1).T  # (B, R*B)
    # the blocks around each tile in every reference frame (past the frame's edge: an empty block) ...
    offsets = torch.arange(-local, local + 1, device=dev)
    ny = torch.div(torch.arange(n_blocks, device=dev), nbx, rounding_mode="floor")[:, None, None] + offsets[None, :, None]
    nx = (torch.arange(n_blocks, device=dev) % nbx)[:, None, None] + offsets[None, None, :]
    inside = (ny >= 0) & (ny < nby) & (nx >= 0) & (nx < nbx)
    around = (ny * nbx + nx).reshape(n_blocks, 1, -1) + n_blocks * torch.arange(n_ref, device=dev)[:, None]
    near = torch.where(inside.reshape(n_blocks, 1, -1), around, n_ref * n_blocks).reshape(n_blocks, -1)
    # ... and the best-scoring others
    coarse = torch.cat([coarse, torch.zeros(n_blocks, 1, device=dev)], 1).scatter_(1, near, float("-inf"))
    best, others = coarse.topk(min(extra, n_ref * n_blocks), dim=1)
    chosen = torch.cat([near, others.masked_fill(best == float("-inf"), n_ref * n_blocks)], 1)  # into R*B + 1
    keep = chosen.shape[1]

    empty = torch.zeros(1, b2, d + 4, device=dev)
    empty[..., -1] = -1e4
    flat_k = torch.cat([k.reshape(n_ref * n_blocks, b2, -1), empty])
    flat_lab = _blocked(labels, grid, block).reshape(n_ref * n_blocks, b2, -1)
    flat_lab = torch.cat([flat_lab, torch.zeros(1, *flat_lab.shape[1:], device=dev, dtype=flat_lab.dtype)])
    out = torch.empty(n_blocks, b2, labels.shape[-1], device=dev, dtype=labels.dtype)
    tiles_per_chunk = max(1, (1 << 22) // (keep * b2 * (d + 4)))
    for start in range(0, n_blocks, tiles_per_chunk):
        idx = chosen[start : start + tiles_per_chunk]
        sl = slice(start, start + len(idx))
        rows = idx.reshape(-1)
        logits = torch.bmm(q[sl], flat_k.index_select(0, rows).view(len(idx), keep * b2, -1).transpose(1, 2))
        out[sl] = torch.bmm(torch.softmax(logits, 2), flat_lab.index_select(0, rows).view(len(idx), keep * b2, -1))
    out = out.reshape(nby, nbx, block, block, -1).permute(0, 2, 1, 3, 4).reshape(nby * block, nbx * block, -1)
    return out[:h, :w].reshape(n, -1)
