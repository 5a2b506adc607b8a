"""Transductive propagation (TVOS): Zhang, Wu, Peng, Lin, CVPR 2020,
"A transductive approach for video object segmentation".

The labels of a frame are a similarity-weighted average of the labels of reference pixels in
earlier frames (Eq. 4, 6, 7; `engine.propagation`), normalised over every pixel of every
reference frame at once, so all objects propagate together in one pass. The paper's embedding is
unnormalised and has no temperature; ours is L2-normalised, so a scale s (= 1 / temperature,
learned with the head) stands in for its norm.

Reference frames: 9 of the preceding 40 (Sec. 3.3, Fig. 3), the 4 most recent with the motion
prior's sigma = 8 and 5 spread over the rest with sigma = 21 (stride-8 grid cells). Annotated
frames keep their masks as soft labels (area shares of each cell) and stay in the reference set;
predicted frames are stored as hard labels; the score map is upsampled bilinearly before the
argmax (and snapped to the frame's edges by the guided filter PML uses, unless `refine` is off).
Beyond the paper: a full run starts at the first annotated frame and runs forward, then backward;
a one-way run starts at any annotated frame; any frame can carry a mask, painted or retrieved by
PML from clicks, boxes or scribbles (`seed_masks`). The propagated distribution is blended with a
global matching to the annotated frames, PML's k-nearest-neighbour vote (Chen et al. 2018,
Sec. 3.2) over their masks, which does not drift: p_t = (1 - lambda) p_TVOS + lambda p_PML
(`global_matching` = lambda; 0 is the paper). PML's session is therefore a requirement of TVOS's.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.cache import EmbeddingSettings, Embeddings
from ..engine.confidence import frame_confidence
from ..engine.frames import label_volume
from ..engine.grid import cell_shares
from ..engine.heads import embed_for_head
from ..engine.memory import MemoryModel
from ..engine.pml_index import ADAPT_WINDOW, FINETUNE_STEPS, PMLIndex, check_finetune_steps, check_stray_distance, \
    check_weight
from ..engine.propagation import SIGMA_DISTANT, propagate, propagate_dense, sample_references
from ..engine.refine import STRAY_DISTANCE, FrameRefiner, drop_stray_regions, refine_device
from ..errors import MethodError, PromptError, VosEmbedError
from ..engine.nets.tvos import DEFAULT_HEAD, TVOSHead
from ..progress import Progress
from ..prompts import Prompts, masks_digest
from .base import Method, Session, head_param, head_path, param, prompt_model_param, register_method
from .pml import PML, PMLSession

#: lambda, the weight of the global matching to the annotated frames, chosen on validation splits (docs/tvos.md).
GLOBAL_MATCHING = 0.25
#: With `adapt_matcher`, the propagated probability from which a cell joins the matcher's references.
ADAPT_CONFIDENCE = 0.9
#: Temperature of the raw backbone features (no head), chosen on the training sequences (docs/tvos.md).
RAW_TEMPERATURE = 0.05
#: Frame embeddings kept for reuse as references: at most this many, and this many bytes.
CACHE_FRAMES, CACHE_BYTES = 64, 256 * 2**20


def matcher_head(head: str | Path | None) -> str | None:
    """The PML head that goes with a TVOS `head` (its global matcher, its seeds from clicks): the
    shipped PML head beside a trained TVOS head, the raw features (None) beside the raw features."""
    return None if head is None else "default"


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


class TVOSPropagator:
    """Transductive propagation over one video from its embeddings and the masks of some frames.

    head: a `TVOSHead`, or None for the raw backbone features (L2-normalised, scale
    1 / `temperature`). fast: `propagate` (default) or `propagate_dense`. keep_annotated: every
    annotated frame stays in the reference set (with its mask), besides the 9 sampled frames.
    refine: snap the upsampled labels to the frame's edges (guided filter, as PML), else bilinear
    upsampling only (the paper). matcher: a `PMLIndex` on the same video and grid, which matches
    every frame to the annotated frames with weight `global_matching` (lambda; 0: the paper).
    adapt_matcher: the matcher's references grow by PML's online adaptation (`PMLIndex.adapt`)
    with the cells each propagated frame labels with probability `ADAPT_CONFIDENCE` or more.
    finetune_steps: the matcher's head is first fine-tuned on the masks for this many steps
    (`PMLIndex.finetuned`, as PML does before segmenting; 0, the default: off, docs/tvos.md).
    stray_distance: a propagated frame's object regions farther than this many grid cells from the
    object in the frame before go to the background before the frame joins the references
    (`drop_stray_regions`, as PML; 0: off, the paper).
    """

    def __init__(self, video, embeddings: Embeddings, head: TVOSHead | None, device: torch.device,
                 temperature: float | None = None, fast: bool = True, keep_annotated: bool = True,
                 refine: bool = True, matcher: PMLIndex | None = None, global_matching: float = GLOBAL_MATCHING,
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
        self._global: PMLIndex | None = None
        #: ((steps, masks_digest), index): the matcher fine-tuned on those masks, kept for later runs
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
        self.grid = embeddings.grid_shape
        self.stride = embeddings.settings.stride
        self._refiner = FrameRefiner(video, self.stride, video.intensity_range() if refine else None,
                                     device=refine_device(self.device))
        self.frame_shape = embeddings.frame_shape
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()

    @classmethod
    def open(cls, video, head: str | Path | None = "default", device: str | torch.device = "cpu",
             settings: EmbeddingSettings | None = None, global_matching: float = GLOBAL_MATCHING,
             matcher: PMLIndex | None = None, **options) -> Generator[Progress, None, TVOSPropagator]:
        """Embed `video` (cached) and return a propagator; yields the embedding progress. With
        `global_matching` > 0 it gets its PML matcher: `matcher`, an open PML index of the video
        (shared, not embedded again), when its features are those of this head, else one opened
        here with `matcher_head(head)`."""
        video, model, emb = yield from embed_for_head(video, TVOSHead, DEFAULT_HEAD, head, str(device), settings)
        if global_matching == 0:
            matcher = None
        elif matcher is None or matcher.embeddings.settings != emb.settings:
            matcher = yield from PMLIndex.open(video, matcher_head(head), device, emb.settings)
        return cls(video, emb, model, torch.device(device), matcher=matcher, global_matching=global_matching,
                   **options)

    def frame_embedding(self, t: int) -> torch.Tensor:
        """(h*w, d) L2-normalised embedding of frame t (the last `CACHE_FRAMES` used are kept, or
        as many as fit in `CACHE_BYTES`, but at least 16: a frame's references)."""
        if t in self._cache:
            self._cache.move_to_end(t)
            return self._cache[t]
        with torch.inference_mode():
            if self.head is None:
                e = self.embeddings.raw_embedding(t)
            else:
                e = self.head.embed(self.embeddings, [t])[0].reshape(-1, self.head.config["dim"])
        e = e.to(self.device)
        self._cache[t] = e
        while len(self._cache) > CACHE_FRAMES or (len(self._cache) > 16 and
                                                  len(self._cache) * e.nbytes > CACHE_BYTES):
            self._cache.popitem(last=False)
        return e

    def reference_labels(self, t: int, labels: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """(h*w, K) grid labels of frame t in `labels` (default `self.labels`): an annotated frame's
        soft labels, a predicted frame's hard labels (kept as label indices, 1 byte per cell)."""
        held = (self.labels if labels is None else labels)[t]
        return held if held.is_floating_point() else F.one_hot(held.long(), len(self.values)).float()

    def frame_scores(self, t: int, refs: list[tuple[int, float]], labels: dict[int, torch.Tensor]) -> torch.Tensor:
        """(h*w, K) label distribution of frame t from the reference frames `refs` [(frame, sigma)]."""
        keys = torch.stack([self.frame_embedding(r) for r, _ in refs])
        ref_labels = torch.stack([self.reference_labels(r, labels) for r, _ in refs])
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
        votes, values, _ = self._global.frame_scores(t, self._global.k_mask, cells, host=False)
        matched = torch.zeros(len(cells), scores.shape[1], dtype=scores.dtype, device=scores.device)
        matched[:, np.searchsorted(self.values, values)] = votes.to(scores)
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

    def _start(self, masks: dict[int, np.ndarray], out, frames: list[int]) -> Generator[Progress, None, np.ndarray]:
        """Soft grid labels of the annotated frames (`self.labels`, K = `self.values`) and the global
        matcher over their masks (fine-tuned on them, yielding its progress, unless a run before
        tuned it on the same masks); returns the output volume (`out` or a new one, `label_volume`)
        holding the masks of the annotated `frames`."""
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
        out = label_volume(out, len(self.video), self.frame_shape, int(values.max()))
        self.confidence = np.full(len(self.video), np.nan, np.float32)
        for t in frames:
            out[t] = masks[t]
            self.confidence[t] = 1.0
        return out

    def history_labels(self, t: int, scores: torch.Tensor) -> torch.Tensor:
        """What predicted frame t adds to the references of later frames: its hard labels (Sec. 3.3),
        as label indices (`reference_labels`)."""
        return scores.argmax(1).to(torch.uint8 if len(self.values) <= 256 else torch.int32)

    def _pass(self, out: np.ndarray, masks: dict[int, np.ndarray], origin: int, direction: int, stop: int,
              progress: list[int]) -> Generator[Progress, None, None]:
        """Propagate from frame `origin` in `direction` up to `stop` (excluded) into `out`; an
        annotated frame on the way keeps its mask. `progress` = [done, total], updated.

        On a GPU, what crosses to the host per frame is one copy of its grid scores (for the stray
        check's connected regions, the confidence and the matcher's adaptation; 51 KB for two labels
        at 480p) and its labels: the embeddings, references and refinement stay on the device."""
        annotated = sorted(masks)
        adapted, rng = [], np.random.default_rng(0)
        previous: tuple[int, np.ndarray] | None = None  # (frame, its grid label indices), on the host
        for step, t in enumerate(range(origin + direction, stop, direction), 1):
            if t in masks:
                continue
            scores = self.frame_scores(t, self.references(t, step, direction, annotated), self.labels)
            host = scores.cpu().numpy()
            if self.stray_distance:
                before = previous[1] if previous is not None and previous[0] == t - direction else \
                    self.reference_labels(t - direction).argmax(1).cpu().numpy()
                drop_stray_regions(host.reshape(*self.grid, -1), before.reshape(self.grid), self.values,
                                   self.stray_distance)
                scores = torch.from_numpy(host).to(self.device)
            winners = host.argmax(1)
            previous = (t, winners)
            self.labels[t] = self.history_labels(t, scores)
            self.confidence[t] = frame_confidence(host)
            if self.adapt_matcher and self._global is not None:
                cells = np.flatnonzero(host.max(1) >= ADAPT_CONFIDENCE)
                self._global.adapt(t, cells, self.values[winners[cells]], adapted, rng)
            out[t] = self._refiner(t, scores.reshape(*self.grid, -1), self.values)
            progress[0] += 1
            yield Progress(progress[0], progress[1], "propagation")
        if adapted:
            self._global.drop_adapted(adapted)

    def run(self, masks: dict[int, np.ndarray], out=None) -> Generator[Progress, None, np.ndarray]:
        """Labels of every frame from the masks of the annotated frames, into `out` (see
        `label_volume`), yielding progress.

        From the first annotated frame forward to the end, then backward to frame 0. `self.labels`
        then holds every frame's grid labels (`reference_labels`)."""
        out = yield from self._start(masks, out, list(masks))
        n, first = len(self.video), min(masks)
        progress = [len(masks), n]
        yield Progress(*progress, "propagation")
        yield from self._pass(out, masks, first, 1, n, progress)
        yield from self._pass(out, masks, first, -1, -1, progress)
        return out

    def propagate(self, masks: dict[int, np.ndarray], start: int, direction: int, out=None
                  ) -> Generator[Progress, None, np.ndarray]:
        """Labels of frames `start`..end (direction +1) or 0..`start` (-1), propagated from the mask
        of frame `start`; every annotated frame stays a reference. The other frames are 0 in a new
        volume, untouched in `out` (see `label_volume`)."""
        if start not in masks:
            raise PromptError(f"TVOS propagates from frame {start}, which has no annotation: paint a mask or click "
                              f"the objects there" + (f" (annotated frames: {', '.join(map(str, sorted(masks)))})"
                                                      if masks else ""))
        n = len(self.video)
        stop = n if direction > 0 else -1
        inside = [t for t in masks if (t - start) * direction >= 0]
        out = yield from self._start(masks, out, inside)
        progress = [len(inside), abs(stop - start)]
        yield Progress(*progress, "propagation")
        yield from self._pass(out, masks, start, direction, stop, progress)
        return out


def seed_masks(prompts: Prompts, matcher: PMLSession) -> Generator[Progress, None, dict[int, np.ndarray]]:
    """The masks TVOS propagates: the painted ones (and the prompt model's), and on frames with only
    clicks, boxes or scribbles, the labels PML retrieves there from all the prompts (the matcher's
    index with exactly these prompts, `PMLIndex.predict_frame`)."""
    masks = dict(prompts.masks)
    sparse = [t for t in prompts.frames if t not in masks]
    if sparse:
        view = matcher.index.with_prompts(prompts)
        if view.propagating:
            yield from view.build_anchor_graph()
        masks.update((t, view.predict_frame(t)) for t in sparse)
    return masks


@register_method
class TVOS(Method):
    """Transductive propagation of masks through the video (Zhang et al. 2020)."""

    name = "tvos"
    title = "TVOS: propagate masks through the video"
    description = ("Transductive propagation (Zhang et al. 2020): masks on any frames (or clicks, through PML), "
                   "all objects in one pass, forward and backward")
    propagates = True
    requires = ("pml",)
    quality = 5
    memory = MemoryModel(base_mib=1050, per_frame_mib=0.5)  # benchmark memory, rounded up

    @dataclass
    class Params:
        head: str = head_param("embedding head")
        prompt_model: str = prompt_model_param()
        temperature: float | None = param(None, "softmax temperature of Eq. 6 (empty: the head's learned one)",
                                          advanced=True)
        fast: bool = param(True, "weigh only the reference blocks that carry the weight (about 50x faster than the "
                           "dense affinity; the same label on more than 99.9 % of the cells)", advanced=True)
        keep_annotated: bool = param(True, "every annotated frame stays a reference frame, however far back",
                                     advanced=True)
        refine: bool = param(True, "snap the borders to image edges (guided filter); off: bilinear upsampling",
                             advanced=True)
        global_matching: float = param(
            GLOBAL_MATCHING, "weight of the match to the annotated frames (PML retrieval), which keeps long videos "
            "from drifting; 0: propagation only (the paper), better for many look-alike objects such as cells",
            advanced=True, min=0.0, max=1.0, step=0.05)
        adapt_matcher: bool = param(False, "the match to the annotated frames also draws on confidently propagated "
                                    f"pixels of the last {ADAPT_WINDOW} frames (PML's online adaptation)",
                                    advanced=True)
        finetune_steps: int = param(0, "fine-tune the head of the match to the annotated frames on the painted masks "
                                    f"for this many steps before propagating, as PML does (0: off; PML's default is "
                                    f"{FINETUNE_STEPS})", advanced=True, min=0, max=10_000)
        stray_distance: int = param(STRAY_DISTANCE, "an object's regions farther than this many grid cells from "
                                    "where it was in the frame before go to the background (a second, similar "
                                    "object entering does not take its label; 0: off)", advanced=True, min=0,
                                    max=1000)

        def __post_init__(self):
            check_global_matching(self.global_matching, self.adapt_matcher, self.finetune_steps)
            check_stray_distance(self.stray_distance)

    def required(self) -> dict[str, PML]:
        """PML's session with the head that goes with this one (`matcher_head`): the global matcher,
        and the seeds of frames with clicks or boxes."""
        return {"pml": PML(device=str(self.device), head=matcher_head(head_path(self.params.head)) or "none")}

    def create_session(self, video, shared, settings) -> Generator[Progress, None, TVOSSession]:
        p = self.params
        matcher = shared["pml"]
        propagator = yield from TVOSPropagator.open(
            video, head_path(p.head), self.device, settings, global_matching=p.global_matching, matcher=matcher.index,
            temperature=p.temperature, fast=p.fast, keep_annotated=p.keep_annotated, refine=p.refine,
            adapt_matcher=p.adapt_matcher, finetune_steps=p.finetune_steps, stray_distance=p.stray_distance)
        return TVOSSession(self, propagator, matcher)


class TVOSSession(Session):
    """TVOS on one video: the propagator (its embeddings, the matcher fine-tuned on the last masks)
    and PML's session, which seeds frames that have clicks, boxes or scribbles instead of a mask."""

    def __init__(self, method: TVOS, propagator: TVOSPropagator, matcher: PMLSession):
        super().__init__(method, propagator.video)
        self.propagator = propagator
        self.matcher = matcher

    def segment(self, prompts: Prompts, start: int | None = None, direction: int = 0, live: bool = False,
                out=None) -> Generator[Progress, None, np.ndarray]:
        """Every frame (`TVOSPropagator.run`), or one way from `start` (`TVOSPropagator.propagate`)."""
        self.check(prompts, start, direction)
        if not prompts.frames:
            raise PromptError("TVOS propagates masks: paint a mask, or click the objects, on at least one frame")
        prompts = yield from self.dense(prompts)
        masks = yield from seed_masks(prompts, self.matcher)
        if start is None:
            labels = yield from self.propagator.run(masks, out)
        else:
            labels = yield from self.propagator.propagate(masks, start, direction, out)
        self.confidence = self.propagator.confidence.copy()
        return labels
