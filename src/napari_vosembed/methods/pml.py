"""Pixel-wise metric learning (PML): Chen, Pont-Tuset, Montes, Van Gool, CVPR 2018,
"Blazingly fast video object segmentation with pixel-wise metric learning".

Embeddings of every pixel are computed once per video (the cached backbone features, through the
embedding head of Sec. 3.1); user input only builds the reference pool, and every other pixel
takes the majority label of its k nearest references (Sec. 3.2). A new click therefore costs one
retrieval, not a network pass. `PMLSession` is the interactive API: add or remove prompts, get
the labels of one frame or of the whole video.
"""

from __future__ import annotations

import copy
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from ..engine.anchor_graph import AnchorGraph
from ..engine.cache import EmbeddingSettings, Embeddings
from ..engine.heads import Head, embed_for_head, fit, project_levels
from ..engine.refine import STRAY_DISTANCE, FrameRefiner, drop_stray_regions, refine_frame
from ..engine.retrieval import ReferencePool
from ..errors import MethodError, PromptError
from ..progress import Progress, drive
from ..prompts import Prompts
from ..engine.losses import pml_triplet
from . import Method, register_method

#: The trained head that ships with the package (see docs/models/pml-head.md).
DEFAULT_HEAD = Path(__file__).parents[1] / "models" / "pml_head.pt"
#: Online adaptation: confident cells per frame, and frames they stay (chosen on a validation split, docs/pml.md).
ADAPT_PER_FRAME, ADAPT_WINDOW = 2000, 5
#: Neighbours voting with clicks alone (the paper: 1; 3 chosen on a validation split, docs/pml.md).
K_CLICK = 3
#: One-shot fine-tuning of the head on the annotated masks: Adam steps and learning rate (beyond the
#: paper; chosen on a validation split, docs/pml.md).
FINETUNE_STEPS, FINETUNE_LR = 100, 2e-4
#: With clicks alone, the weight of label propagation through the video's anchor graph against the
#: k-nearest-neighbour vote (beyond the paper; chosen on a validation split, docs/pml.md).
CLICK_PROPAGATION = 0.5


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


def grid_coords(t: int, n_frames: int, grid: tuple[int, int]) -> torch.Tensor:
    """(h*w, 3) inputs (i / h, j / w, t / T) of the head for frame t."""
    h, w = grid
    ii, jj = torch.meshgrid(torch.arange(h, dtype=torch.float32) / h, torch.arange(w, dtype=torch.float32) / w,
                            indexing="ij")
    return torch.stack([ii.reshape(-1), jj.reshape(-1), torch.full((h * w,), t / max(n_frames, 1))], 1)


def as_float32(embeddings: np.ndarray) -> np.ndarray:
    """float16 embeddings as float32, through torch: 8x faster than numpy's conversion, which took
    a sixth of a click's whole-video update (docs/pml.md, "Kept guided-filter statistics")."""
    return torch.from_numpy(np.ascontiguousarray(embeddings)).float().numpy()


def balanced_anchors(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most n anchors, half object and half background where both exist (Sec. 3.3
    draws them uniformly; object pixels are rare, and uniform anchors would teach the background)."""
    fg, bg = np.flatnonzero(labels > 0), np.flatnonzero(labels == 0)
    n_fg = min(len(fg), n // 2) if len(bg) else min(len(fg), n)
    return np.concatenate([rng.choice(fg, n_fg, replace=False), rng.choice(bg, min(len(bg), n - n_fg), replace=False)])


def cell_labels(labels: np.ndarray, grid: tuple[int, int], stride: float) -> np.ndarray:
    """Majority label of each grid cell of a full-resolution label image (area vote)."""
    h, w = grid
    values = np.unique(labels)
    padded = np.zeros((int(round(h * stride)), int(round(w * stride))), labels.dtype)
    crop = labels[: padded.shape[0], : padded.shape[1]]
    padded[: crop.shape[0], : crop.shape[1]] = crop
    shares = np.stack([cv2.resize((padded == v).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
                       for v in values], -1)
    return values[shares.argmax(-1)]


class PMLSession:
    """Interactive PML on one video: embeddings are computed once, every edit re-runs retrieval.

    k_mask / k_click: neighbours voting when the pool holds mask (or scribble) pixels / only
    clicks (Sec. 3.2: k = 5 and k = 1; k_click = 3 here, lowered so that one click still wins, see
    `k`). click_propagation: with clicks alone, each cell's scores are (1 - mu) times the vote plus
    mu times the labels propagated from the clicks over the video's anchor graph (beyond the paper,
    `engine/anchor_graph.py`; 0: the vote alone). max_refs_per_frame: a dense mask adds at most
    this many cells, split evenly between its labels (all of a label's cells when it has fewer),
    which bounds the retrieval cost per frame; the default keeps every cell of a 480p frame (6,420
    at stride 8), as the paper does.
    """

    def __init__(self, video, embeddings: Embeddings, head: PMLHead | None, device: torch.device,
                 k_mask: int = 5, k_click: int = K_CLICK, refine: bool = True, max_refs_per_frame: int = 10000,
                 click_propagation: float = CLICK_PROPAGATION):
        check_weight("click_propagation", click_propagation)
        self.video = video
        self.embeddings = embeddings
        self.device = device
        self.k_mask, self.k_click, self.refine = k_mask, k_click, refine
        self.click_propagation = click_propagation
        self.max_refs_per_frame = max_refs_per_frame
        self.frame_shape = embeddings.frame_shape
        self.grid = embeddings.grid_shape
        self.stride = embeddings.settings.stride
        self.head = head.to(device) if head is not None else None
        self._refiner = FrameRefiner(video, self.stride, video.intensity_range(), keep=True)
        self._pixel_embeddings = self._embed_all()
        self._graph: dict[str, AnchorGraph] = {}  # shared with the views of `with_prompts`
        self._anchor_scores: tuple = (None, None)
        self.pool = ReferencePool(self._pixel_embeddings.shape[-1], device)
        self._groups: dict[int, Prompts] = {}
        self._sync_prompts()
        self.finetune_history: list[tuple[int, float]] = []

    @classmethod
    def open(cls, video, head: str | Path | None = "default", device: str | torch.device = "cpu",
             settings: EmbeddingSettings | None = None, **options) -> Generator[Progress, None, PMLSession]:
        """Embed `video` (cached) and return a session; yields the embedding progress."""
        video, model, emb = yield from embed_for_head(video, PMLHead, DEFAULT_HEAD, head, str(device), settings)
        return cls(video, emb, model, torch.device(device), **options)

    def _embed_all(self) -> np.ndarray:
        """(T, h*w, d) float16 pixel embeddings: the head applied to every frame (or the raw features)."""
        n, channels = len(self.video), self.embeddings.channels
        dim = channels if self.head is None else self.head.out_dim
        out = np.empty((n, self.grid[0] * self.grid[1], dim), np.float16)
        with torch.inference_mode():
            for t in range(n):
                if self.head is None:
                    e = nn.functional.normalize(self.embeddings.frame_features(t).reshape(-1, channels), dim=-1)
                else:
                    e = self.head.embed(self.embeddings, t, n)
                out[t] = e.cpu().numpy()
        return out

    def frame_embeddings(self, t: int) -> np.ndarray:
        return as_float32(self._pixel_embeddings[t])

    def _cells(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        h, w = self.grid
        i = np.clip((y / self.stride).astype(np.int64), 0, h - 1)
        j = np.clip((x / self.stride).astype(np.int64), 0, w - 1)
        return i * w + j

    def add_prompts(self, prompts: Prompts, group: int = 0) -> None:
        """Add the reference pixels of `prompts` to the pool as `group` (removable as one)."""
        height, width = self.frame_shape
        prompts.validate(len(self.video), height, width, require_object=False)
        for frame, image in prompts.masks.items():
            cells = cell_labels(image, self.grid, self.stride).reshape(-1)
            keep = self._stratified(cells, np.random.default_rng(frame))
            self.pool.add(as_float32(self._pixel_embeddings[frame, keep]), cells[keep], group)
        sparse = Prompts(points=prompts.points, boxes=prompts.boxes, scribbles=prompts.scribbles)
        ref = sparse.reference_pixels(height, width)
        if len(ref):
            cells = self._cells(ref.y, ref.x)
            keys = np.unique(np.stack([ref.frame, cells, ref.label], 1), axis=0)
            self.pool.add(as_float32(self._pixel_embeddings[keys[:, 0], keys[:, 1]]), keys[:, 2], group)
        self._groups.setdefault(group, Prompts()).extend(prompts)
        self._sync_prompts()

    def _sync_prompts(self) -> None:
        """`self.prompts`: the prompts of every group still in the pool."""
        self.prompts = Prompts()
        for prompts in self._groups.values():
            self.prompts.extend(prompts)
        self._has_dense = bool(self.prompts.masks or self.prompts.scribbles or self.prompts.boxes)

    def with_prompts(self, prompts: Prompts, **options) -> PMLSession:
        """A session sharing these embeddings (and anchor graph) with a fresh pool of exactly
        `prompts`; `options` override k_mask, k_click, refine, max_refs_per_frame or
        click_propagation. Work running on this session is not disturbed, so a viewer can start
        over at every edit."""
        unknown = set(options) - {"k_mask", "k_click", "refine", "max_refs_per_frame", "click_propagation"}
        if unknown:
            raise TypeError(f"unknown session option(s): {', '.join(sorted(unknown))}")
        view = copy.copy(self)
        check_weight("click_propagation", options.get("click_propagation", 0))
        for name, value in options.items():
            setattr(view, name, value)
        view.pool = ReferencePool(self.pool.dim, self.device)
        view._groups = {}
        view.add_prompts(prompts)
        return view

    def _stratified(self, cells: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Indices of at most `max_refs_per_frame` cells, an equal quota per label."""
        values = np.unique(cells)
        quota = self.max_refs_per_frame // len(values)
        picks = []
        for v in values:
            idx = np.flatnonzero(cells == v)
            picks.append(idx if len(idx) <= quota else np.sort(rng.choice(idx, quota, replace=False)))
        return np.concatenate(picks)

    def remove_group(self, group: int) -> int:
        """Drop a group of references (e.g. a deleted click) and its prompts; returns how many references."""
        self._groups.pop(group, None)
        self._sync_prompts()
        return self.pool.remove(group)

    @property
    def k(self) -> int:
        """k_mask when the pool holds masks, boxes or scribbles; with clicks alone k_click, but at most
        2c - 1 for the c clicks of the rarest label, so that a label's clicks can always win a majority
        around them (one object click among two background clicks would lose every vote at k = 3)."""
        if self._has_dense:
            return self.k_mask
        counts = np.unique(self.pool.labels, return_counts=True)[1]
        rarest = int(counts.min()) if len(counts) else 1
        return max(1, min(self.k_click, 2 * rarest - 1))

    def _check_pool(self) -> None:
        if len(self.pool) == 0:
            raise PromptError("no reference pixels: add a click, box or mask first")
        if not (self.pool.label_values > 0).any():
            raise PromptError("the references hold no object: add a positive click or a mask with a label > 0")

    @property
    def propagating(self) -> bool:
        """Whether the scores blend in label propagation: clicks alone, and click_propagation > 0."""
        return self.click_propagation > 0 and not self._has_dense

    @property
    def has_anchor_graph(self) -> bool:
        """Whether the anchor graph is built (`build_anchor_graph`)."""
        return "graph" in self._graph

    def build_anchor_graph(self) -> Generator[Progress, None, AnchorGraph]:
        """The anchor graph of this video's cells (`engine/anchor_graph.py`), built once and shared
        with every view of this session; a few seconds for 100 frames at 480p."""
        if not self.has_anchor_graph:
            yield Progress(0, 1, "anchor graph")
            self._graph["graph"] = AnchorGraph(self._pixel_embeddings.reshape(-1, self._pixel_embeddings.shape[-1]))
            yield Progress(1, 1, "anchor graph")
        return self._graph["graph"]

    def _propagated(self, t: int, cells: np.ndarray | None) -> np.ndarray:
        """Label scores of frame t's cells propagated from the pool over the anchor graph; the
        anchor scores are computed once per state of the pool."""
        graph = drive(self.build_anchor_graph(), quiet=True)
        key = (id(self.pool), self.pool.version)
        if self._anchor_scores[0] != key:
            self._anchor_scores = (key, graph.propagate(self.pool.embeddings, self.pool.labels, self.pool.label_values))
        n = self.grid[0] * self.grid[1]
        rows = slice(t * n, (t + 1) * n) if cells is None else t * n + np.asarray(cells)
        return graph.scores(self._anchor_scores[1], rows)

    def frame_scores(self, t: int, k: int | None = None, cells: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vote fractions `(h, w, L)` for frame t, the label values, and the unanimous cells; with
        `cells` (flat grid indices), the votes of those cells only, `(len(cells), L)`. With clicks
        alone (`propagating`), (1 - mu) vote + mu propagated labels, mu = click_propagation."""
        queries = self.frame_embeddings(t) if cells is None else as_float32(self._pixel_embeddings[t, cells])
        scores, unanimous = self.pool.vote(queries, k or self.k)
        if self.propagating:
            mu = self.click_propagation
            scores = (1 - mu) * scores + mu * self._propagated(t, cells)
        return (scores if cells is not None else scores.reshape(*self.grid, -1)), self.pool.label_values, unanimous

    def to_labels(self, t: int, scores: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Full-resolution labels of frame t from its `(h, w, L)` scores over `values`: guided by the
        frame, whose guided-filter statistics the session keeps for the next click
        (`FrameRefiner`), or bilinear with `refine` off."""
        if not self.refine:
            return refine_frame(self.video, t, scores, values, self.stride, None)
        return self._refiner(t, scores, values)

    def predict_frame(self, t: int) -> np.ndarray:
        """Full-resolution labels of frame t from the current pool (the on-screen update)."""
        self._check_pool()
        scores, values, _ = self.frame_scores(t)
        return self.to_labels(t, scores, values)

    def adapt(self, t: int, cells: np.ndarray, labels: np.ndarray, adapted: list[int], rng: np.random.Generator,
              per_frame: int = ADAPT_PER_FRAME, window: int = ADAPT_WINDOW) -> None:
        """Online adaptation (Sec. 3.2): confidently labelled `cells` of frame t (flat grid indices,
        their label values `labels`) join the pool, at most `per_frame` of them, drawn by `rng`.
        `adapted` holds the frames' groups added so far, oldest first; only the last `window` stay."""
        if len(cells) > per_frame:
            keep = rng.choice(len(cells), per_frame, replace=False)
            cells, labels = cells[keep], labels[keep]
        adapted.append(-1 - t)
        self.pool.add(as_float32(self._pixel_embeddings[t, cells]), labels, adapted[-1])
        if len(adapted) > window:
            self.pool.remove(adapted.pop(0))

    def finetuned(self, steps: int = FINETUNE_STEPS, lr: float = FINETUNE_LR, anchors: int = 256, pool: int = 2048,
                  margin: float = 0.3, seed: int = 0) -> Generator[Progress, None, PMLSession]:
        """A session whose head is adapted to this video's masks (one-shot fine-tuning, beyond the
        paper, as OSVOS and MaskTrack fine-tune on the first frame): `steps` of Adam on the loss of
        Eq. 1, the anchors (`balanced_anchors`) from a random half of the masks' cells, the positive
        and negative pool from the other half (Sec. 3.3 draws the pool from two other frames, which
        one mask lacks); then every frame is re-embedded and the prompts fill a fresh pool (as one
        group, like `with_prompts`). This session and its head are unchanged; the new session's
        `finetune_history` holds the loss [(step, mean loss)]."""
        if self.head is None:
            raise MethodError("fine-tuning needs a trained head, not the raw backbone features (head 'none')")
        if steps < 1:
            raise MethodError(f"fine-tuning needs at least 1 step, not {steps}")
        frames, labels = self._mask_cells()
        if len(np.unique(labels)) < 2:
            raise PromptError("fine-tuning learns from painted masks with an object and background: add such a mask")
        all_cells = np.arange(self.grid[0] * self.grid[1])
        features = torch.cat([self.embeddings.cell_features(t, all_cells) for t in frames]).to(self.device)
        coords = torch.cat([grid_coords(t, len(self.video), self.grid) for t in frames]).to(self.device)
        targets = torch.from_numpy(labels.astype(np.int64)).to(self.device)
        head = copy.deepcopy(self.head).train().requires_grad_(True)
        rng = np.random.default_rng(seed)

        def step_loss() -> torch.Tensor:
            order = rng.permutation(len(labels))
            half, rest = order[: len(order) // 2], order[len(order) // 2:]
            a = torch.from_numpy(half[balanced_anchors(labels[half], anchors, rng)]).to(self.device)
            p = torch.from_numpy(rest[:pool]).to(self.device)
            return pml_triplet(head(features[a], coords[a]), head(features[p], coords[p]), targets[a], targets[p], margin)

        history = yield from fit(torch.optim.Adam(head.parameters(), lr=lr), steps, step_loss)
        tuned = copy.copy(self)
        tuned.head = head.eval().requires_grad_(False)
        tuned._pixel_embeddings = tuned._embed_all()
        tuned._graph = {}
        tuned = tuned.with_prompts(self.prompts)
        tuned.finetune_history = history
        return tuned

    @property
    def finetunable(self) -> bool:
        """Whether `finetuned` can learn here: a trained head, and masks holding an object and background."""
        return self.head is not None and len(np.unique(self._mask_cells()[1])) > 1

    def _mask_cells(self) -> tuple[list[int], np.ndarray]:
        """The frames with a painted mask, and the majority label of every cell of them, frame after frame."""
        frames = list(self.prompts.masks)
        labels = [cell_labels(self.prompts.masks[t], self.grid, self.stride).reshape(-1) for t in frames]
        return frames, np.concatenate(labels) if labels else np.zeros(0, np.int64)

    def drop_adapted(self, adapted: list[int]) -> None:
        """Remove the groups `adapt` added (the end of a pass): the pool holds the prompts again."""
        while adapted:
            self.pool.remove(adapted.pop())

    def predict_all(self, online_adaptation: bool = True, adapt_per_frame: int = ADAPT_PER_FRAME,
                    adapt_window: int = ADAPT_WINDOW, finetune_steps: int = FINETUNE_STEPS,
                    stray_distance: int = STRAY_DISTANCE) -> Generator[Progress, None, np.ndarray]:
        """Labels of every frame, yielding progress.

        With masks holding an object and background among the prompts and a trained head, the head is
        first fine-tuned on them for `finetune_steps` (`finetuned`; 0: off, the paper); a mask of
        background alone, beside object clicks, is used as references only. Online adaptation (Sec. 3.2, `adapt`):
        walking away from the first annotated frame (forward, then backward), the cells of a frame
        whose k = 5 neighbours all agree join the pool; at most `adapt_per_frame` per frame, kept
        for the last `adapt_window` frames, so the pool and the cost per frame stay bounded. Each
        frame's object regions farther than `stray_distance` grid cells from the object in the
        frame before go to the background (`drop_stray_regions`; 0: off, the paper), before the
        frame's cells adapt the pool. Adaptation and that check only with masks, boxes or scribbles
        among the prompts: from clicks alone the frames get the labels `predict_frame` gives them
        (adapted cells, nearly all background, would bury the few object clicks; docs/pml.md).
        """
        check_adaptation(adapt_per_frame, adapt_window)
        check_stray_distance(stray_distance)
        self._check_pool()
        check_finetune_steps(finetune_steps)
        if finetune_steps and self.finetunable:
            tuned = yield from self.finetuned(finetune_steps)
            return (yield from tuned.predict_all(online_adaptation, adapt_per_frame, adapt_window, 0, stray_distance))
        if self.propagating:
            yield from self.build_anchor_graph()
        n = len(self.video)
        start = min(self.prompts.frames) if self.prompts.frames else 0
        labels = np.zeros((n, *self.frame_shape), np.uint8 if self.pool.label_values.max() < 256 else np.int32)
        rng = np.random.default_rng(0)
        done = 0
        adapting = online_adaptation and self._has_dense
        consistent = stray_distance > 0 and self._has_dense
        first_winners = None
        for order in (range(start, n), range(start - 1, -1, -1)):
            adapted: list[int] = []
            previous = first_winners
            for t in order:
                scores, values, unanimous = self.frame_scores(t)
                if consistent and previous is not None and t not in self.prompts.frames:
                    drop_stray_regions(scores, previous, values, stray_distance)
                previous = scores.argmax(-1)
                if t == start:
                    first_winners = previous
                labels[t] = self.to_labels(t, scores, values)
                if adapting and t not in self.prompts.frames:
                    cells = np.flatnonzero(unanimous)
                    self.adapt(t, cells, values[previous.reshape(-1)[cells]], adapted, rng, adapt_per_frame,
                               adapt_window)
                done += 1
                yield Progress(done, n, "retrieval")
            self.drop_adapted(adapted)
        return labels


def check_stray_distance(distance: int) -> None:
    """The spatial-consistency check takes a distance of 0 (off) or more grid cells: refuse less, naming it."""
    if distance < 0:
        raise MethodError(f"stray_distance must be 0 (off) or more grid cells, not {distance}")


def check_weight(name: str, value: float) -> None:
    """A blending weight (PML's click_propagation, TVOS's global_matching) lies in [0, 1]: refuse
    others, naming the parameter."""
    if not 0 <= value <= 1:
        raise MethodError(f"{name} must lie in [0, 1], not {value}")


def check_finetune_steps(steps: int) -> None:
    """Fine-tuning runs 0 steps (off) or more: refuse a negative count, naming it."""
    if steps < 0:
        raise MethodError(f"finetune_steps must be 0 (off) or more, not {steps}")


def check_adaptation(adapt_per_frame: int, adapt_window: int) -> None:
    """Online adaptation needs at least one cell from at least one frame: refuse less, naming it."""
    for name, value in (("adapt_per_frame", adapt_per_frame), ("adapt_window", adapt_window)):
        if value < 1:
            raise MethodError(f"{name} must be at least 1, not {value} (to adapt nothing, turn online_adaptation off)")


@register_method
class PML(Method):
    """Pixel-wise metric learning: k-nearest-neighbour retrieval in a learned embedding space."""

    name = "pml"
    description = "Pixel-wise metric learning (Chen et al. 2018): instant retrieval from clicks, boxes and masks"
    quality = 10

    @dataclass
    class Params:
        head: str = field(default="default", metadata={
            "help": "embedding head: 'default' (the trained head that ships with the plugin), 'none' (raw "
                    "backbone features) or the path of a .pt head"})
        online_adaptation: bool = field(default=True, metadata={
            "help": "add confidently labelled pixels of each frame to the references while segmenting all "
                    "frames (follows objects that change appearance); with a mask, box or scribble, not from "
                    "clicks alone"})
        adapt_per_frame: int = field(default=ADAPT_PER_FRAME, metadata={
            "advanced": True, "widget": {"min": 1, "max": 100_000},
            "help": "online adaptation: at most this many confident pixels (grid cells) of each frame join the "
                    "references"})
        adapt_window: int = field(default=ADAPT_WINDOW, metadata={
            "advanced": True, "widget": {"min": 1, "max": 10_000},
            "help": "online adaptation: the cells of the last this many frames stay references"})
        k_mask: int = field(default=5, metadata={
            "advanced": True, "help": "neighbours voting for each pixel when masks, boxes or scribbles are given"})
        k_click: int = field(default=K_CLICK, metadata={
            "advanced": True, "help": "neighbours voting for each pixel when only clicks are given (fewer while "
                                      "a label has too few clicks to win a majority)"})
        click_propagation: float = field(default=CLICK_PROPAGATION, metadata={
            "advanced": True, "widget": {"min": 0.0, "max": 1.0, "step": 0.05},
            "help": "with clicks alone: the weight of the labels propagated from the clicks through the whole "
                    "video (an anchor graph of its pixels) against the nearest clicks' vote (0: the vote alone, "
                    "as in the paper)"})
        refine: bool = field(default=True, metadata={
            "advanced": True, "help": "snap the borders to image edges (guided filter)"})
        stray_distance: int = field(default=STRAY_DISTANCE, metadata={
            "advanced": True, "widget": {"min": 0, "max": 1000},
            "help": "while segmenting all frames from a mask, box or scribble: an object's regions farther than "
                    "this many grid cells from where it was in the frame before go to the background (a second, "
                    "similar object entering does not take its label; 0: off)"})
        finetune_steps: int = field(default=FINETUNE_STEPS, metadata={
            "advanced": True, "widget": {"min": 0, "max": 10_000},
            "help": "fine-tune the embedding head on the painted masks for this many steps before segmenting "
                    "(0: off, as in the paper; not with head 'none' or without masks)"})

        def __post_init__(self):
            check_adaptation(self.adapt_per_frame, self.adapt_window)
            check_finetune_steps(self.finetune_steps)
            check_stray_distance(self.stray_distance)
            check_weight("click_propagation", self.click_propagation)

    def run(self, video, prompts: Prompts) -> Generator[Progress, None, np.ndarray]:
        p = self.params
        session = yield from PMLSession.open(video, None if p.head in ("none", "") else p.head, self.device,
                                             k_mask=p.k_mask, k_click=p.k_click, refine=p.refine,
                                             click_propagation=p.click_propagation)
        session.add_prompts(prompts)
        labels = yield from session.predict_all(p.online_adaptation, p.adapt_per_frame, p.adapt_window,
                                                p.finetune_steps, p.stray_distance)
        return labels

