"""Transductive propagation (TVOS): Zhang, Wu, Peng, Lin, CVPR 2020,
"A transductive approach for video object segmentation".

The labels of a frame are a similarity-weighted average of the labels of reference pixels in
earlier frames (Eq. 4, 6, 7): w_ij = exp(s f_i . f_j) exp(-||loc(i) - loc(j)||^2 / sigma^2),
normalised over every pixel of every reference frame at once, so all objects propagate together
in one pass. The paper's embedding is unnormalised and has no temperature; ours is L2-normalised,
so a scale s (= 1 / temperature, learned with the head) stands in for its norm.

Reference frames: 9 of the preceding 40 (Sec. 3.3, Fig. 3), the 4 most recent with the motion
prior's sigma = 8 and 5 spread over the rest with sigma = 21 (stride-8 grid cells). Annotated
frames keep their masks as soft labels (area shares of each cell) and stay in the reference set;
predicted frames are stored as hard labels; the score map is upsampled bilinearly before the
argmax (and snapped to the frame's edges by the guided filter PML uses, unless `refine` is off).
Beyond the paper: `run` starts at the first annotated frame and runs forward, then backward;
`propagate` runs one way from any annotated frame; any frame can carry a mask, painted or
retrieved by PML from clicks, boxes or scribbles (`seed_masks`). Also beyond the paper: the
propagated distribution is blended with a global matching to the annotated frames, the k-nearest-
neighbour vote of PML (Chen et al. 2018, Sec. 3.2) over their masks, which does not drift:
p_t = (1 - lambda) p_TVOS + lambda p_PML (`global_matching` = lambda; 0 is the paper).

`propagate_dense` builds the (HW x 9HW) affinity as written; `propagate` (the default) gives the
same labels at a fraction of the cost: each 4x4 tile of the target frame keeps only the 4x4
reference blocks around it in every reference frame plus the best-scoring others of a coarse
block-level pass, and computes the exact weights of those pixels only (top-k blocks per tile).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..engine.cache import EmbeddingSettings, Embeddings
from ..engine.heads import Head, embed_for_head, project_levels
from ..engine.refine import STRAY_DISTANCE, drop_stray_regions, refine_frame
from ..errors import MethodError, PromptError, VosEmbedError
from ..progress import Progress
from ..prompts import Prompts, masks_digest
from . import Method, register_method
from .pml import (ADAPT_WINDOW, FINETUNE_STEPS, PMLSession, check_finetune_steps, check_stray_distance,
                  check_weight)

#: The trained head that ships with the package (model card: docs/tvos.md).
DEFAULT_HEAD = Path(__file__).parents[1] / "models" / "tvos_head.pt"
SIGMA_RECENT, SIGMA_DISTANT = 8.0, 21.0
#: lambda, the weight of the global matching to the annotated frames, chosen on training sequences (docs/tvos.md).
GLOBAL_MATCHING = 0.25
#: With `adapt_matcher`, the propagated probability from which a cell joins the matcher's references.
ADAPT_CONFIDENCE = 0.9
#: Temperature of the raw backbone features (no head), chosen on the training sequences (docs/tvos.md).
RAW_TEMPERATURE = 0.05


def matcher_head(head: str | Path | None) -> str | None:
    """The PML head that goes with a TVOS `head` (its global matcher, its seeds from clicks): the
    shipped PML head beside a trained TVOS head, the raw features (None) beside the raw features."""
    return None if head is None else "default"


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


def cell_shares(labels: np.ndarray, values: np.ndarray, grid: tuple[int, int], stride: float) -> np.ndarray:
    """(h*w, K) share of each label value in each grid cell: the one-hot mask downsampled by area
    (the soft first-frame labels of Sec. 3.3). Cells past the frame's edge repeat the last row / column."""
    h, w = grid
    size = (int(round(h * stride)), int(round(w * stride)))
    crop = labels[: size[0], : size[1]]
    padded = np.pad(crop, ((0, size[0] - crop.shape[0]), (0, size[1] - crop.shape[1])), mode="edge")
    shares = np.stack([cv2.resize((padded == v).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
                       for v in values], -1)
    return (shares / shares.sum(-1, keepdims=True)).reshape(h * w, len(values))


def grid_positions(grid: tuple[int, int]) -> torch.Tensor:
    """(h*w, 2) float (row, column) of every cell, in grid units."""
    h, w = grid
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([yy.reshape(-1), xx.reshape(-1)], 1)


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


def check_global_matching(value: float, adapt_matcher: bool = False, finetune_steps: int = 0) -> None:
    """lambda is a weight: refuse anything outside [0, 1], naming it; an adapted or fine-tuned
    matcher needs lambda > 0; fine-tuning takes 0 steps or more."""
    check_weight("global_matching", value)
    check_finetune_steps(finetune_steps)
    for option, what, off in (("adapt_matcher", adapt_matcher, "adapt_matcher off"),
                              ("finetune_steps", finetune_steps > 0, "finetune_steps 0")):
        if what and value == 0:
            raise MethodError(f"{option} changes the global matcher, which global_matching=0 turns off: "
                              f"set global_matching above 0, or {off}")


class TVOSSession:
    """Transductive propagation over one video from its embeddings and the masks of some frames.

    head: a `TVOSHead`, or None for the raw backbone features (L2-normalised, scale
    1 / `temperature`). fast: `propagate` (default) or `propagate_dense`. keep_annotated: every
    annotated frame stays in the reference set (with its mask), besides the 9 sampled frames.
    refine: snap the upsampled labels to the frame's edges (guided filter, as PML), else bilinear
    upsampling only (the paper). matcher: a `PMLSession` on the same video and grid, which matches
    every frame to the annotated frames with weight `global_matching` (lambda; 0: the paper).
    adapt_matcher: the matcher's references grow by PML's online adaptation (`PMLSession.adapt`)
    with the cells each propagated frame labels with probability `ADAPT_CONFIDENCE` or more.
    finetune_steps: the matcher's head is first fine-tuned on the masks for this many steps
    (`PMLSession.finetuned`, as PML does before segmenting; 0, the default: off, docs/tvos.md).
    stray_distance: a propagated frame's object regions farther than this many grid cells from the
    object in the frame before go to the background before the frame joins the references
    (`drop_stray_regions`, as PML; 0: off, the paper).
    """

    def __init__(self, video, embeddings: Embeddings, head: TVOSHead | None, device: torch.device,
                 temperature: float | None = None, fast: bool = True, keep_annotated: bool = True,
                 refine: bool = True, matcher: PMLSession | None = None, global_matching: float = GLOBAL_MATCHING,
                 adapt_matcher: bool = False, finetune_steps: int = 0, stray_distance: int = STRAY_DISTANCE):
        if matcher is not None and (len(matcher.video), matcher.frame_shape) != (len(video), embeddings.frame_shape):
            raise VosEmbedError(f"the PML matcher is of another video ({len(matcher.video)} frames of "
                                f"{matcher.frame_shape[0]}x{matcher.frame_shape[1]}, not {len(video)} of "
                                f"{embeddings.frame_shape[0]}x{embeddings.frame_shape[1]}): open it on this video")
        if matcher is not None and matcher.grid != embeddings.grid_shape:
            raise VosEmbedError(f"the PML embeddings ({matcher.grid[0]}x{matcher.grid[1]} cells) and the TVOS "
                                f"embeddings ({embeddings.grid_shape[0]}x{embeddings.grid_shape[1]}) of the video "
                                "differ: use heads trained with the same settings, or global_matching=0")
        check_global_matching(global_matching, adapt_matcher, finetune_steps)
        check_stray_distance(stray_distance)
        self.stray_distance = stray_distance
        self.matcher = matcher if global_matching > 0 else None
        self.finetune_steps = finetune_steps
        self.global_matching = global_matching
        self.adapt_matcher = adapt_matcher
        self._global: PMLSession | None = None
        #: ((steps, masks_digest), session): the matcher fine-tuned on those masks, kept for later runs
        self._tuned: tuple | None = None
        #: [cells matched globally, cells propagated] so far
        self.match_counts = [0, 0]
        self.video = video
        self.embeddings = embeddings
        self.device = torch.device(device)
        self.head = head.to(self.device) if head is not None else None
        if temperature is not None:
            self.scale = 1 / temperature
        else:
            self.scale = head.scale if head is not None else 1 / RAW_TEMPERATURE
        self.fast, self.keep_annotated = fast, keep_annotated
        self._intensity = video.intensity_range() if refine else None
        self.grid = embeddings.grid_shape
        self.stride = embeddings.settings.stride
        self.frame_shape = embeddings.frame_shape
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()

    @classmethod
    def open(cls, video, head: str | Path | None = "default", device: str | torch.device = "cpu",
             settings: EmbeddingSettings | None = None, global_matching: float = GLOBAL_MATCHING,
             matcher: PMLSession | None = None, **options) -> Generator[Progress, None, TVOSSession]:
        """Embed `video` (cached) and return a session; yields the embedding progress. With
        `global_matching` > 0 the session gets its PML matcher: `matcher`, an open PML session of
        the video (shared, not embedded again), when its features are those of this head, else one
        opened here with `matcher_head(head)`."""
        video, model, emb = yield from embed_for_head(video, TVOSHead, DEFAULT_HEAD, head, str(device), settings)
        if global_matching == 0:
            matcher = None
        elif matcher is None or matcher.embeddings.settings != emb.settings:
            matcher = yield from PMLSession.open(video, matcher_head(head), device, emb.settings)
        return cls(video, emb, model, torch.device(device), matcher=matcher, global_matching=global_matching,
                   **options)

    def frame_embedding(self, t: int) -> torch.Tensor:
        """(h*w, d) L2-normalised embedding of frame t (the last 64 used are kept)."""
        if t in self._cache:
            self._cache.move_to_end(t)
            return self._cache[t]
        with torch.inference_mode():
            if self.head is None:
                e = F.normalize(self.embeddings.frame_features(t).reshape(-1, self.embeddings.channels), dim=-1)
            else:
                e = self.head.embed(self.embeddings, [t])[0].reshape(-1, self.head.config["dim"])
        e = e.to(self.device)
        self._cache[t] = e
        if len(self._cache) > 64:
            self._cache.popitem(last=False)
        return e

    def frame_scores(self, t: int, refs: list[tuple[int, float]], labels: dict[int, torch.Tensor]) -> torch.Tensor:
        """(h*w, K) label distribution of frame t from the reference frames `refs` [(frame, sigma)]."""
        keys = torch.stack([self.frame_embedding(r) for r, _ in refs])
        ref_labels = torch.stack([labels[r] for r, _ in refs])
        sigmas = torch.tensor([s for _, s in refs])
        fn = propagate if self.fast else propagate_dense
        with torch.inference_mode():
            scores = fn(self.frame_embedding(t), keys, ref_labels, sigmas, self.grid, self.scale)
        return scores if self._global is None else self._match_globally(t, scores)

    def _match_globally(self, t: int, scores: torch.Tensor) -> torch.Tensor:
        """Blend the propagated distribution of frame t with PML's vote over the annotated masks:
        (1 - lambda) p_TVOS + lambda p_PML. Only where the vote can change the label: a cell whose
        best label leads every other by lambda / (1 - lambda) or more keeps it whatever the vote,
        so it keeps p_TVOS and costs no retrieval (the same grid labels as blending every cell)."""
        lam = self.global_matching
        top = scores.topk(2, dim=1).values
        cells = torch.nonzero(top[:, 0] - top[:, 1] < (lam / (1 - lam) if lam < 1 else math.inf))[:, 0]
        self.match_counts[0] += len(cells)
        self.match_counts[1] += len(scores)
        if len(cells) == 0:
            return scores
        votes, values, _ = self._global.frame_scores(t, self._global.k_mask, cells.cpu().numpy())
        matched = torch.zeros(len(cells), scores.shape[1], dtype=scores.dtype, device=scores.device)
        matched[:, np.searchsorted(self.values, values)] = torch.from_numpy(votes).to(scores)
        out = scores.clone()
        out[cells] = (1 - lam) * scores[cells] + lam * matched
        return out

    def references(self, t: int, step: int, direction: int, annotated: list[int]) -> list[tuple[int, float]]:
        """Reference frames [(frame, sigma)] of frame t, the `step`-th of a pass in `direction`
        (+1 forward, -1 backward): the sampled frames, and the annotated ones (`keep_annotated`)."""
        refs = [(t - direction * d, sigma) for d, sigma in sample_references(step)]
        if self.keep_annotated:
            refs += [(a, SIGMA_DISTANT) for a in annotated if a not in {r for r, _ in refs}]
        return refs

    def _start(self, masks: dict[int, np.ndarray]) -> Generator[Progress, None, np.ndarray]:
        """Soft grid labels of the annotated frames (`self.labels`, K = `self.values`) and the global
        matcher over their masks (fine-tuned on them, yielding its progress, unless a run before
        tuned it on the same masks); returns the output volume holding the masks."""
        if not masks:
            raise PromptError("TVOS propagates masks: paint a mask (or run PML) on at least one frame first")
        values = np.union1d(np.unique(np.concatenate([np.unique(m) for m in masks.values()])), [0])
        if not (values > 0).any():
            raise PromptError("the masks hold no object: paint at least one pixel with a label > 0")
        self.values = values
        self.labels = {t: torch.from_numpy(cell_shares(m, values, self.grid, self.stride)).to(self.device)
                       for t, m in masks.items()}
        self._global = None
        if self.matcher is not None:
            prompts = Prompts(masks=dict(masks))
            self._global = self.matcher.with_prompts(prompts)
            if self.finetune_steps and self._global.finetunable:
                key = (self.finetune_steps, masks_digest(masks))
                if self._tuned is None or self._tuned[0] != key:
                    self._tuned = (key, (yield from self._global.finetuned(self.finetune_steps)))
                self._global = self._tuned[1].with_prompts(prompts)
        out = np.zeros((len(self.video), *self.frame_shape), np.uint8 if values.max() < 256 else np.int32)
        for t, m in masks.items():
            out[t] = m
        return out

    def history_labels(self, t: int, scores: torch.Tensor) -> torch.Tensor:
        """What predicted frame t adds to the references of later frames: its hard labels (Sec. 3.3)."""
        return F.one_hot(scores.argmax(1), len(self.values)).to(scores.dtype)

    def _drop_strays(self, scores: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """`scores` (h*w, K) with the object regions far from their cells in `previous` (the grid
        labels of the frame before) given to the background (`drop_stray_regions`)."""
        grid_scores = scores.reshape(*self.grid, -1).cpu().numpy().copy()
        winners = previous.argmax(1).reshape(self.grid).cpu().numpy()
        drop_stray_regions(grid_scores, winners, self.values, self.stray_distance)
        return torch.from_numpy(grid_scores.reshape(len(scores), -1)).to(scores)

    def _pass(self, out: np.ndarray, masks: dict[int, np.ndarray], origin: int, direction: int, stop: int,
              progress: list[int]) -> Generator[Progress, None, None]:
        """Propagate from frame `origin` in `direction` up to `stop` (excluded) into `out`; an
        annotated frame on the way keeps its mask. `progress` = [done, total], updated."""
        annotated = sorted(masks)
        adapted, rng = [], np.random.default_rng(0)
        for step, t in enumerate(range(origin + direction, stop, direction), 1):
            if t in masks:
                continue
            scores = self.frame_scores(t, self.references(t, step, direction, annotated), self.labels)
            if self.stray_distance:
                scores = self._drop_strays(scores, self.labels[t - direction])
            self.labels[t] = self.history_labels(t, scores)
            if self.adapt_matcher and self._global is not None:
                best = scores.max(1)
                cells = torch.nonzero(best.values >= ADAPT_CONFIDENCE)[:, 0].cpu().numpy()
                self._global.adapt(t, cells, self.values[best.indices.cpu().numpy()[cells]], adapted, rng)
            out[t] = refine_frame(self.video, t, scores.reshape(*self.grid, -1).cpu().numpy(), self.values,
                                  self.stride, self._intensity)
            progress[0] += 1
            yield Progress(progress[0], progress[1], "propagation")
        if adapted:
            self._global.drop_adapted(adapted)

    def run(self, masks: dict[int, np.ndarray]) -> Generator[Progress, None, np.ndarray]:
        """Labels of every frame from the masks of the annotated frames, yielding progress.

        From the first annotated frame forward to the end, then backward to frame 0. `self.labels`
        then holds every frame's grid labels ((h*w, K): soft for annotated frames, one-hot for
        predicted ones; K = `self.values`)."""
        out = yield from self._start(masks)
        n, first = len(self.video), min(masks)
        progress = [len(masks), n]
        yield Progress(*progress, "propagation")
        yield from self._pass(out, masks, first, 1, n, progress)
        yield from self._pass(out, masks, first, -1, -1, progress)
        return out

    def propagate(self, masks: dict[int, np.ndarray], start: int, direction: int
                  ) -> Generator[Progress, None, np.ndarray]:
        """Labels of frames `start`..end (direction +1) or 0..`start` (-1), propagated from the mask
        of frame `start`; every annotated frame stays a reference. The other frames are 0."""
        if start not in masks:
            raise PromptError(f"TVOS propagates from frame {start}, which has no annotation: paint a mask or click "
                              f"the objects there" + (f" (annotated frames: {', '.join(map(str, sorted(masks)))})"
                                                      if masks else ""))
        out = yield from self._start(masks)
        n = len(self.video)
        stop = n if direction > 0 else -1
        inside = [t for t in masks if (t - start) * direction >= 0]
        progress = [len(inside), abs(stop - start)]
        yield Progress(*progress, "propagation")
        yield from self._pass(out, masks, start, direction, stop, progress)
        outside = np.arange(n)[(np.arange(n) - start) * direction < 0]
        out[outside] = 0
        return out


def seed_masks(video, prompts: Prompts, device: str | torch.device, pml_head: str | None = "default",
               settings: EmbeddingSettings | None = None, matcher: PMLSession | None = None
               ) -> Generator[Progress, None, dict[int, np.ndarray]]:
    """The masks TVOS propagates: the painted ones, and on frames with only clicks, boxes or
    scribbles, the labels PML retrieves there from all the prompts (`PMLSession.predict_frame`),
    through `matcher` when the TVOS session has one, else a PML session opened here."""
    masks = dict(prompts.masks)
    sparse = [t for t in prompts.frames if t not in masks]
    if sparse:
        if matcher is None:
            matcher = yield from PMLSession.open(video, pml_head, device, settings=settings)
        session = matcher.with_prompts(prompts)
        if session.propagating:
            yield from session.build_anchor_graph()
        masks.update((t, session.predict_frame(t)) for t in sparse)
    return masks


def _require_annotation(prompts: Prompts) -> None:
    if not prompts.frames:
        raise PromptError("TVOS propagates masks: paint a mask, or click the objects, on at least one frame")


@register_method
class TVOS(Method):
    """Transductive propagation of masks through the video (Zhang et al. 2020)."""

    name = "tvos"
    description = ("Transductive propagation (Zhang et al. 2020): masks on any frames (or clicks, through PML), "
                   "all objects in one pass, forward and backward")
    propagates = True
    shares_pml_session = True
    quality = 5

    @dataclass
    class Params:
        head: str = field(default="default", metadata={
            "help": "embedding head: 'default' (the trained head that ships with the plugin), 'none' (raw "
                    "backbone features) or the path of a .pt head"})
        temperature: float | None = field(default=None, metadata={
            "advanced": True, "help": "softmax temperature of Eq. 6 (empty: the head's learned one)"})
        fast: bool = field(default=True, metadata={
            "advanced": True, "help": "weigh only the reference blocks that carry the weight (same labels, "
                                      "about 50x faster than the dense affinity)"})
        keep_annotated: bool = field(default=True, metadata={
            "advanced": True, "help": "every annotated frame stays a reference frame, however far back"})
        refine: bool = field(default=True, metadata={
            "advanced": True, "help": "snap the borders to image edges (guided filter); off: bilinear upsampling"})
        global_matching: float = field(default=GLOBAL_MATCHING, metadata={
            "advanced": True, "widget": {"min": 0.0, "max": 1.0, "step": 0.05},
            "help": "weight of the match to the annotated frames (PML retrieval), which keeps long videos from "
                    "drifting; 0: propagation only (the paper), better for many look-alike objects such as cells"})
        adapt_matcher: bool = field(default=False, metadata={
            "advanced": True, "help": "the match to the annotated frames also draws on confidently propagated "
                                      f"pixels of the last {ADAPT_WINDOW} frames (PML's online adaptation)"})
        finetune_steps: int = field(default=0, metadata={
            "advanced": True, "widget": {"min": 0, "max": 10_000},
            "help": "fine-tune the head of the match to the annotated frames on the painted masks for this many "
                    f"steps before propagating, as PML does (0: off; PML's default is {FINETUNE_STEPS})"})
        stray_distance: int = field(default=STRAY_DISTANCE, metadata={
            "advanced": True, "widget": {"min": 0, "max": 1000},
            "help": "an object's regions farther than this many grid cells from where it was in the frame before "
                    "go to the background (a second, similar object entering does not take its label; 0: off)"})

        def __post_init__(self):
            check_global_matching(self.global_matching, self.adapt_matcher, self.finetune_steps)
            check_stray_distance(self.stray_distance)

    @classmethod
    def pml_head(cls, head: str | None) -> str | None:
        return matcher_head(head)

    @property
    def head(self) -> str | None:
        """The `head` parameter as `TVOSSession.open` takes it (None: the raw features)."""
        return None if self.params.head in ("none", "") else self.params.head

    def open_session(self, video, matcher: PMLSession | None = None) -> Generator[Progress, None, TVOSSession]:
        """The TVOS session of `video` with these parameters (`TVOSSession.open`; `matcher`: an open PML
        session of the video to share), for one run or many (`segment_with`)."""
        p = self.params
        return (yield from TVOSSession.open(video, self.head, self.device, temperature=p.temperature, fast=p.fast,
                                            keep_annotated=p.keep_annotated, refine=p.refine,
                                            global_matching=p.global_matching, matcher=matcher,
                                            adapt_matcher=p.adapt_matcher, finetune_steps=p.finetune_steps,
                                            stray_distance=p.stray_distance))

    def segment_with(self, session: TVOSSession, prompts: Prompts, start: int | None = None, direction: int = 0,
                     matcher: PMLSession | None = None) -> Generator[Progress, None, np.ndarray]:
        """Labels from `prompts` on an open session: every frame (`TVOSSession.run`), or with `start`
        and `direction` one way from that frame (`TVOSSession.propagate`). Clicks, boxes and
        scribbles are seeded by the session's matcher, else by `matcher`, else by a PML session
        opened here (`seed_masks`)."""
        _require_annotation(prompts)
        masks = yield from seed_masks(session.video, prompts, self.device, matcher_head(self.head),
                                      session.embeddings.settings, session.matcher or matcher)
        if start is None:
            return (yield from session.run(masks))
        return (yield from session.propagate(masks, start, direction))

    def run(self, video, prompts: Prompts) -> Generator[Progress, None, np.ndarray]:
        _require_annotation(prompts)
        session = yield from self.open_session(video)
        return (yield from self.segment_with(session, prompts))

    def propagate(self, video, prompts: Prompts, start: int, direction: int) -> Generator[Progress, None, np.ndarray]:
        _require_annotation(prompts)
        session = yield from self.open_session(video)
        return (yield from self.segment_with(session, prompts, start, direction))
