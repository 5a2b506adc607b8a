"""Unsupervised primary-object segmentation (Li et al., CVPR 2018, "Instance embedding transfer to
unsupervised video object segmentation"): no user input.

Per frame: pixel embeddings (an instance-embedding head trained with the paper's pair loss, Eq.
1-2, or the raw backbone features), objectness O = ISNet's saliency, and the optical flow. On the
embedding graph (`engine.seeds`): the edge map, candidates, N_S diverse seeds and their regions
(Eq. 4-6); each seed's objectness (its region's mean O) and motion saliency (its region's mean flow
against the background motion of the N_BG least object-like seeds, Eq. 7-8). A seed track through
the video, the chain of seeds that maximises objectness x motion saliency plus the embedding
similarity of consecutive seeds (Eq. 9-10, by dynamic programming), gives each frame's initial
foreground seed. Background seeds: those of low objectness and low motion saliency (Eq. 12);
initial foreground: the cells closer, in minimax distance, to the track's seed than to any
background seed (Eq. 11); foreground seeds: those whose region it covers by more than alpha, and
(beyond the paper) those scoring at least half as high as the track's seed. The foreground
probability of a cell is d_BG / (d_FG + d_BG), its embedding distances to the nearest seed of each
(Eq. 13-15), then a dense CRF. Online adaptation (Table 3): every `adapt_every`-th frame's result
fine-tunes the head, and the probabilities are computed again with the adapted embeddings.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..engine.cache import EmbeddingSettings, embed_video
from ..engine.confidence import frame_confidence
from ..engine.frames import label_volume
from ..engine.crf import crf_frame
from ..engine.flow import video_flow
from ..engine.losses import instance
from ..engine.memory import MemoryModel
from ..engine.pml_index import PMLIndex
from ..engine import seeds as graph
from ..progress import Progress
from ..prompts import Prompts
from .base import Method, Session, head_path, param, register_method

#: The instance-embedding head that ships with the plugin (model card: docs/models/instance-head.md).
DEFAULT_HEAD = Path(__file__).parents[1] / "models" / "instance_head.pt"
#: ISNet's saliency (the objectness) is read off a larger input than the embeddings': at about 0.1
#: megapixel, objects are too small for a network trained on 1024 x 1024 images. The frame goes
#: through whole, never in tiles: saliency weighs the whole image (a 480p frame in 512-pixel tiles
#: lost 14 points of J on train).
OBJECTNESS = EmbeddingSettings(levels=(32,), saliency_stride=8, working_pixels=262_144, tile=1024)
#: alpha (share of a region the initial foreground must cover), O_BG and M_BG (Eq. 12).
ALPHA, O_BG, M_BG = 0.5, 0.3, 0.01
#: Seeds scoring at least this share of the track's seed are foreground too (beyond the paper:
#: measured on both roots, docs/unsupervised.md).
KIN = 0.5
#: Candidate window n (Eq. 5), in grid cells: n = 9 pixels at 480p is about one cell of the stride-8
#: grid, and 3 x 3 is the smallest window with an inside.
WINDOW = 3
CUES = ("objectness + motion", "objectness", "motion")
LABELS = np.array([0, 1])
STAGES = ("seeds", "tracks", "segmentation", "adaptation", "refinement")


@register_method
class Unsupervised(Method):
    """The primary object of a video, found without any prompt (Li et al. 2018)."""

    name = "unsupervised"
    title = "Unsupervised: find the primary object, no input"
    description = ("Instance embedding transfer (Li et al. 2018): seeds on the embedding graph, objectness and "
                   "motion find the video's primary object without any prompt")
    needs_prompts = False
    quality = 0
    memory = MemoryModel(base_mib=1500, per_frame_mib=0.5)  # benchmark memory, rounded up

    @dataclass
    class Params:
        head: str = param("default", "instance embeddings: 'default' (the head trained with the paper's loss that "
                          "ships with the plugin), 'none' (raw backbone features) or the path of a .pt head",
                          choices=("default", "none"))
        cues: str = param(CUES[0], "what ranks the seed tracks: objectness x motion saliency (the paper), or one "
                          "of them", choices=CUES)
        seeds: int = param(100, "seeds per frame (N_S); the N_S / 5 least object-like model the background motion",
                           min=5, max=1000)
        adapt_every: int = param(0, "online adaptation: fine-tune the embeddings on the result of every this many "
                                 "frames, then segment again (0: off)", min=0, max=10_000)
        crf: bool = param(True, "dense CRF on every frame (off: the guided filter)")

    session_params = ("head",)

    def create_session(self, video, shared, settings) -> Generator[Progress, None, UnsupervisedSession]:
        head = head_path(self.params.head)
        index = yield from PMLIndex.open(video, DEFAULT_HEAD if head == "default" else head, self.device,
                                         settings=settings)
        objectness = yield from embed_video(index.video, OBJECTNESS, device=str(self.device))
        flow = yield from video_flow(index.video)
        return UnsupervisedSession(self, index, objectness.saliency, flow)


@dataclass
class FrameSeeds:
    """One frame's seeds (flat grid cells), their regions, objectness and motion saliency, and the
    weights of its embedding graph's edges."""

    cells: np.ndarray
    regions: np.ndarray
    objectness: np.ndarray
    motion: np.ndarray
    weights: np.ndarray


class UnsupervisedSession(Session):
    """The method on one video: its embeddings (a `PMLIndex`), objectness maps and optical flow;
    `timings` holds the seconds of each stage of the last run."""

    def __init__(self, method: Unsupervised, index: PMLIndex, objectness: np.ndarray, flow):
        super().__init__(method, index.video)
        self.index, self.objectness, self.flow = index, objectness, flow
        self.edges = graph.grid_edges(index.grid)
        self.timings: dict[str, float] = {}
        self._intensity = self.video.intensity_range()

    def _objectness(self, t: int) -> np.ndarray:
        h, w = self.index.grid
        return cv2.resize(np.asarray(self.objectness[t], np.float32), (w, h), interpolation=cv2.INTER_AREA)

    def frame_seeds(self, t: int) -> FrameSeeds:
        """Seeds, regions, and each seed's objectness and motion saliency on frame t (Eq. 4-8)."""
        shape, (a, b) = self.index.grid, self.edges
        emb = self.index.frame_embeddings(t)
        weights = graph.edge_weights(emb, a, b)
        objectness = self._objectness(t)
        cells = graph.sample_seeds(graph.candidates(graph.edge_map(weights, a, b, shape), WINDOW), emb, objectness,
                                   self.params.seeds)
        regions = graph.regions(weights, a, b, shape, cells).ravel()
        counts = np.bincount(regions, minlength=len(cells)).clip(1)
        seed_objectness = np.bincount(regions, objectness.ravel(), len(cells)) / counts
        motion = self.flow.motion(t, shape).reshape(-1, 2)
        mean_motion = np.stack([np.bincount(regions, motion[:, i], len(cells)) for i in (0, 1)], 1) / counts[:, None]
        background = np.argsort(seed_objectness)[:max(1, len(cells) // 5)]
        # Eq. 7: distance to the nearest background motion; Eq. 8: over the frame's largest
        saliency = np.linalg.norm(mean_motion[:, None] - mean_motion[background][None], axis=2).min(1)
        saliency = saliency / max(float(saliency.max()), 1e-6)
        return FrameSeeds(cells, regions, seed_objectness, saliency, weights)

    def seed_scores(self, seeds: FrameSeeds) -> np.ndarray:
        """Eq. 10's score of each seed: objectness x motion saliency, or one of them (`cues`)."""
        cues = self.params.cues
        if cues == "objectness":
            return seeds.objectness
        if cues == "motion":
            return seeds.motion
        return seeds.objectness * seeds.motion

    def track(self, frames: list[FrameSeeds]) -> list[int]:
        """Eq. 9-10: the seed of each frame on the best track, the chain maximising the sum of its
        seeds' scores and of the similarity 2 / (1 + exp(d^2)) of consecutive seeds' embeddings."""
        embeddings = [self.index.frame_embeddings(t)[s.cells] for t, s in enumerate(frames)]
        total = self.seed_scores(frames[0])
        back = []
        for t in range(1, len(frames)):
            d2 = ((embeddings[t - 1][:, None] - embeddings[t][None]) ** 2).sum(-1)
            step = total[:, None] + 2 / (1 + np.exp(d2))
            back.append(step.argmax(0))
            total = step.max(0) + self.seed_scores(frames[t])
        chain = [int(total.argmax())]
        for pointers in reversed(back):
            chain.append(int(pointers[chain[-1]]))
        return chain[::-1]

    def seed_labels(self, seeds: FrameSeeds, leader: int) -> tuple[np.ndarray, np.ndarray]:
        """A frame's foreground and background seeds (indices into `seeds.cells`) from the track's
        seed `leader`. Background (Eq. 12): seeds of low objectness and low motion saliency (else
        the N_S / 5 least object-like). Initial foreground (Eq. 11): the cells whose minimax distance
        to the leader is below that to every background seed. Foreground seeds: the leader, those
        whose region the initial foreground covers by more than alpha, and (beyond the paper) those
        scoring at least `KIN` times the leader's score, the other parts of a moving object."""
        (a, b), shape, n = self.edges, self.index.grid, len(seeds.cells)
        rest = np.setdiff1d(np.arange(n), [leader])
        background = rest[(seeds.objectness[rest] < O_BG) & (seeds.motion[rest] < M_BG)]
        if not len(background):
            background = rest[np.argsort(seeds.objectness[rest])[:max(1, n // 5)]]
        initial = (graph.minimax(seeds.weights, a, b, shape, seeds.cells[[leader]])
                   < graph.minimax(seeds.weights, a, b, shape, seeds.cells[background])).ravel()
        covered = np.bincount(seeds.regions, initial, n) / np.bincount(seeds.regions, minlength=n).clip(1)
        score = self.seed_scores(seeds)
        foreground = np.union1d(np.flatnonzero((covered > ALPHA) | (score >= KIN * score[leader])), [leader])
        kept = np.setdiff1d(background, foreground)
        if not len(kept):  # every background seed scores like the object: keep the least object-like
            others = np.setdiff1d(np.arange(n), foreground)
            kept = others[np.argsort(seeds.objectness[others])[:max(1, n // 5)]] if len(others) else background
            foreground = np.setdiff1d(foreground, kept)
        return foreground, kept

    def probabilities(self, index: PMLIndex, t: int, cells: np.ndarray, foreground: np.ndarray,
                      background: np.ndarray) -> np.ndarray:
        """(h, w, 2) background / foreground probabilities of frame t, Eq. 13-15 (the distances where
        the index keeps its embeddings: on a GPU, there)."""
        emb = torch.as_tensor(index.queries(t)).float()

        def nearest(chosen: np.ndarray) -> torch.Tensor:
            seeds = emb[torch.from_numpy(cells[chosen]).to(emb.device)]
            return torch.cdist(emb, seeds, compute_mode="donot_use_mm_for_euclid_dist").min(1).values

        d_fg, d_bg = nearest(foreground), nearest(background)
        p = (d_bg / (d_fg + d_bg).clamp_min(1e-6)).reshape(index.grid).cpu().numpy()
        return np.stack([1 - p, p], -1).astype(np.float32)

    def _labels(self, t: int, scores: np.ndarray) -> np.ndarray:
        """Frame t's full-resolution labels: the dense CRF or the guided filter (`crf`)."""
        if self.params.crf:
            return crf_frame(self.video, t, scores, LABELS, self.index.stride, self._intensity)
        return self.index.to_labels(t, scores, LABELS)

    def segment(self, prompts: Prompts | None = None, start: int | None = None, direction: int = 0,
                live: bool = False, out=None) -> Generator[Progress, None, np.ndarray]:
        """The primary object (label 1) on every frame; prompts are not read."""
        self.check(prompts or Prompts(), start, direction)
        n, timings = len(self.video), dict.fromkeys(STAGES, 0.0)
        frames = []
        for t in range(n):
            clock = time.perf_counter()
            frames.append(self.frame_seeds(t))
            timings["seeds"] += time.perf_counter() - clock
            yield Progress(t + 1, n, "seeds")
        clock = time.perf_counter()
        chain = self.track(frames)
        timings["tracks"] += time.perf_counter() - clock
        labelled, index = [], self.index
        for t in range(n):
            clock = time.perf_counter()
            labelled.append(self.seed_labels(frames[t], chain[t]))
            timings["segmentation"] += time.perf_counter() - clock
            yield Progress(t + 1, n, "foreground seeds")
        k = self.params.adapt_every
        for rounds in range(2 if k else 1):
            scores = []
            for t in range(n):
                clock = time.perf_counter()
                scores.append(self.probabilities(index, t, frames[t].cells, *labelled[t]))
                timings["segmentation"] += time.perf_counter() - clock
                yield Progress(t + 1, n, "segmentation")
            if rounds or not k:
                break
            clock = time.perf_counter()
            pseudo = index.with_prompts(Prompts(masks={t: self._labels(t, scores[t]) for t in range(0, n, k)}))
            if pseudo.finetunable:
                index = yield from pseudo.finetuned(loss=instance)
            timings["adaptation"] += time.perf_counter() - clock
        out = label_volume(out, n, self.video.shape[1:3], 1)
        self.confidence = np.zeros(n, np.float32)
        for t in range(n):
            clock = time.perf_counter()
            out[t] = self._labels(t, scores[t])
            self.confidence[t] = frame_confidence(scores[t])
            timings["refinement"] += time.perf_counter() - clock
            yield Progress(t + 1, n, "refinement")
        self.timings = timings
        return out
