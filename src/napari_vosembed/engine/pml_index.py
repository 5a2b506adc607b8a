"""PML's retrieval over one video (Chen et al. 2018, Sec. 3.2): every pixel embedding of the video is
computed once (the cached backbone features through the embedding head); user input only builds
the reference pool, and every other pixel takes the majority label of its k nearest references.
A new click therefore costs one retrieval, not a network pass. PML segments with it, and TVOS
matches every frame to its annotated frames with it (global matching).
"""

from __future__ import annotations

import copy
from collections.abc import Generator
from pathlib import Path

import numpy as np
import torch

from ..errors import MethodError, PromptError
from .losses import pml_triplet
from .nets.pml import DEFAULT_HEAD, PMLHead, finetune
from ..progress import Progress, drive
from ..prompts import Prompts
from .anchor_graph import AnchorGraph
from .confidence import frame_confidence
from .cache import EmbeddingSettings, Embeddings, embeddings_root
from .frames import FrameArray, label_volume
from .grid import cell_index, cell_labels, grid_coords
from .heads import embed_for_head
from .refine import STRAY_DISTANCE, FrameRefiner, drop_stray_regions, refine_device, refine_frame
from .retrieval import ReferencePool

#: Online adaptation: confident cells per frame, and frames they stay (chosen on a validation split, docs/pml.md).
ADAPT_PER_FRAME, ADAPT_WINDOW = 2000, 5
#: References that the masks of all annotated frames together add at most (three 480p frames whole).
MAX_REFS = 20_000
#: Neighbours voting with clicks alone (the paper: 1; 3 chosen on a validation split, docs/pml.md).
K_CLICK = 3
#: One-shot fine-tuning of the head on the annotated masks: Adam steps and learning rate (beyond the
#: paper; chosen on a validation split, docs/pml.md).
FINETUNE_STEPS, FINETUNE_LR = 100, 2e-4
#: With clicks alone, the weight of label propagation through the video's anchor graph against the
#: k-nearest-neighbour vote (beyond the paper; chosen on a validation split, docs/pml.md).
CLICK_PROPAGATION = 0.5


def as_float32(embeddings: np.ndarray) -> np.ndarray:
    """float16 embeddings as float32, through torch: 8x faster than numpy's conversion (which would
    take a sixth of a click's whole-video update)."""
    return torch.from_numpy(np.ascontiguousarray(embeddings)).float().numpy()


class PMLIndex:
    """PML's retrieval on one video: embeddings are computed once, every edit re-runs retrieval.

    k_mask / k_click: neighbours voting when the pool holds mask (or scribble) pixels / only
    clicks (Sec. 3.2: k = 5 and k = 1; k_click = 3 here, lowered so that one click still wins, see
    `k`). click_propagation: with clicks alone, each cell's scores are (1 - mu) times the vote plus
    mu times the labels propagated from the clicks over the video's anchor graph (beyond the paper,
    `engine/anchor_graph.py`; 0: the vote alone). max_refs_per_frame: a dense mask adds at most
    this many cells, split evenly between its labels (all of a label's cells when it has fewer),
    which bounds the retrieval cost per frame; the default keeps every cell of a 480p frame (6,420
    at stride 8), as the paper does. With masks on many frames (clicks on many frames through the
    prompt model) they share `MAX_REFS` cells, so the pool, and the cost of every retrieval, stays
    bounded.
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
        self._refiner = FrameRefiner(video, self.stride, video.intensity_range(), keep=True,
                                     device=refine_device(device))
        self._pixel_embeddings = self._embed_all()
        self._graph: dict[str, AnchorGraph] = {}  # shared with the views of `with_prompts`
        self._anchor_scores: tuple = (None, None)
        self.pool = ReferencePool(self._pixel_embeddings.shape[-1], device)
        self._groups: dict[int, Prompts] = {}
        self._sync_prompts()
        self.finetune_history: list[tuple[int, float]] = []

    @classmethod
    def open(cls, video, head: str | Path | None = "default", device: str | torch.device = "cpu",
             settings: EmbeddingSettings | None = None, **options) -> Generator[Progress, None, PMLIndex]:
        """Embed `video` (cached) and return an index; yields the embedding progress."""
        video, model, emb = yield from embed_for_head(video, PMLHead, DEFAULT_HEAD, head, str(device), settings)
        return cls(video, emb, model, torch.device(device), **options)

    def _embed_all(self) -> FrameArray:
        """(T, h*w, d) float16 pixel embeddings: the head applied to every frame (or the raw features);
        on disk beside the embedding cache when the video is long (`FrameArray.scratch`)."""
        n = len(self.video)
        dim = self.embeddings.channels if self.head is None else self.head.out_dim
        out = FrameArray.scratch((n, self.grid[0] * self.grid[1], dim), np.float16, embeddings_root())
        with torch.inference_mode():
            for t in range(n):
                e = self.embeddings.raw_embedding(t) if self.head is None else self.head.embed(self.embeddings, t, n)
                out[t] = e.cpu().numpy()
        out.release()
        return out

    def frame_embeddings(self, t: int) -> np.ndarray:
        return as_float32(self._pixel_embeddings[t])

    @property
    def _resident(self) -> torch.Tensor | None:
        """On a GPU, the pixel embeddings in device memory (copied once per head), so a click's
        queries never cross the bus; None on the CPU."""
        if self.device.type != "cuda":
            return None
        if getattr(self, "_resident_of", None) is not self._pixel_embeddings:
            self._resident_copy = torch.from_numpy(self._pixel_embeddings.array).to(self.device)
            self._resident_of = self._pixel_embeddings
        return self._resident_copy

    def queries(self, t: int, cells: np.ndarray | torch.Tensor | None = None) -> np.ndarray | torch.Tensor:
        """The embeddings of frame t (or of its `cells`), on the pool's device: a numpy array on the
        CPU, a float16 tensor on a GPU (`_resident`)."""
        if self._resident is not None:
            frame = self._resident[t]
            return frame if cells is None else frame[torch.as_tensor(cells, device=self.device)]
        if cells is None:
            return self.frame_embeddings(t)
        return as_float32(self._pixel_embeddings[t, np.asarray(torch.as_tensor(cells).cpu())])

    def add_prompts(self, prompts: Prompts, group: int = 0) -> None:
        """Add the reference pixels of `prompts` to the pool as `group` (removable as one)."""
        height, width = self.frame_shape
        prompts.validate(len(self.video), height, width, require_object=False)
        quota = min(self.max_refs_per_frame, MAX_REFS // max(len(prompts.masks), 1))
        for frame, image in prompts.masks.items():
            cells = cell_labels(image, self.grid, self.stride).reshape(-1)
            keep = self._stratified(cells, np.random.default_rng(frame), quota)
            self.pool.add(as_float32(self._pixel_embeddings[frame, keep]), cells[keep], group)
        sparse = Prompts(points=prompts.points, boxes=prompts.boxes, scribbles=prompts.scribbles)
        ref = sparse.reference_pixels(height, width)
        if len(ref):
            cells = cell_index(ref.y, ref.x, self.grid, self.stride)
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

    def with_prompts(self, prompts: Prompts, **options) -> PMLIndex:
        """An index sharing these embeddings (and anchor graph) with a fresh pool of exactly
        `prompts`; `options` override k_mask, k_click, refine, max_refs_per_frame or
        click_propagation. Work running on this index is not disturbed, so a viewer can start
        over at every edit."""
        unknown = set(options) - {"k_mask", "k_click", "refine", "max_refs_per_frame", "click_propagation"}
        if unknown:
            raise TypeError(f"unknown index option(s): {', '.join(sorted(unknown))}")
        view = copy.copy(self)
        check_weight("click_propagation", options.get("click_propagation", 0))
        for name, value in options.items():
            setattr(view, name, value)
        view.pool = ReferencePool(self.pool.dim, self.device)
        view._groups = {}
        view.add_prompts(prompts)
        return view

    @staticmethod
    def _stratified(cells: np.ndarray, rng: np.random.Generator, total: int) -> np.ndarray:
        """Indices of at most `total` cells, an equal quota per label."""
        values = np.unique(cells)
        quota = total // len(values)
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
        with every view of this index; a few seconds for 100 frames at 480p."""
        if not self.has_anchor_graph:
            yield Progress(0, 1, "anchor graph")
            embeddings = self._pixel_embeddings.array
            self._graph["graph"] = AnchorGraph(embeddings.reshape(-1, embeddings.shape[-1]))
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

    def frame_scores(self, t: int, k: int | None = None, cells: np.ndarray | torch.Tensor | None = None,
                     host: bool = True) -> tuple:
        """Vote fractions `(h, w, L)` for frame t, the label values, and the unanimous cells; with
        `cells` (flat grid indices), the votes of those cells only, `(len(cells), L)`. With clicks
        alone (`propagating`), (1 - mu) vote + mu propagated labels, mu = click_propagation.
        Scores and unanimous cells are numpy arrays, or with `host` False tensors on the device the
        vote ran on (`ReferencePool.vote`)."""
        scores, unanimous = self.pool.vote(self.queries(t, cells), k or self.k, host=False)
        if self.propagating:
            mu = self.click_propagation
            cells = None if cells is None else np.asarray(torch.as_tensor(cells).cpu())
            scores = (1 - mu) * scores + mu * torch.from_numpy(self._propagated(t, cells)).to(scores)
        if host:
            scores, unanimous = scores.cpu().numpy(), unanimous.cpu().numpy()
        return (scores if cells is not None else scores.reshape(*self.grid, -1)), self.pool.label_values, unanimous

    def to_labels(self, t: int, scores: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Full-resolution labels of frame t from its `(h, w, L)` scores over `values`: guided by the
        frame, whose guided-filter statistics the index keeps for the next click
        (`FrameRefiner`), or bilinear with `refine` off."""
        if not self.refine:
            return refine_frame(self.video, t, scores, values, self.stride, None, self._refiner.device)
        return self._refiner(t, scores, values)

    def predict_frame(self, t: int) -> np.ndarray:
        """Full-resolution labels of frame t from the current pool (the on-screen update; on a GPU
        only the labels leave the device)."""
        self._check_pool()
        scores, values, _ = self.frame_scores(t, host=self._refiner.device is None)
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
                  margin: float = 0.3, seed: int = 0, loss=pml_triplet) -> Generator[Progress, None, PMLIndex]:
        """An index whose head is adapted to this video's masks (one-shot fine-tuning, beyond the
        paper, as OSVOS and MaskTrack fine-tune on the first frame: `nets.pml.finetune` on every
        cell of the annotated frames); then every frame is re-embedded and the prompts fill a fresh
        pool (as one group, like `with_prompts`). This index and its head are unchanged; the new
        index's `finetune_history` holds the loss [(step, mean loss)]."""
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
        head, history = yield from finetune(self.head, features, coords, labels, steps, lr, anchors, pool, margin, seed,
                                            loss)
        tuned = copy.copy(self)
        tuned.head = head
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
                    stray_distance: int = STRAY_DISTANCE, confidence: np.ndarray | None = None, out=None
                    ) -> Generator[Progress, None, np.ndarray]:
        """Labels of every frame, into `out` when given (`label_volume`), yielding progress;
        `confidence` (T,), when given, receives each frame's `frame_confidence` of its vote.

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
            return (yield from tuned.predict_all(online_adaptation, adapt_per_frame, adapt_window, 0, stray_distance,
                                                 confidence, out))
        if self.propagating:
            yield from self.build_anchor_graph()
        n = len(self.video)
        start = min(self.prompts.frames) if self.prompts.frames else 0
        labels = label_volume(out, n, self.frame_shape, int(self.pool.label_values.max()))
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
                if confidence is not None:
                    confidence[t] = frame_confidence(scores)
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
