"""MaskTrack (Perazzi et al., CVPR 2017): each frame's mask is the previous frame's, refined.

The network (`engine.nets.masktrack`) takes a frame's cached backbone features and a rough mask of
the object (the previous frame's result) and outputs the object's mask on that frame; trained
offline on deformed masks of static images (`vosembed train masktrack`), then fine-tuned online on
the annotated frames of the video at hand (deformed copies of their masks, mirrored at random), in
a bounded time. Several objects: one refinement each, merged by the highest score. Several annotated
frames: each frame takes its result from the closest one (Sec. 5.4). Clicks and boxes become masks
through the prompt model first.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.confidence import frame_confidence
from ..engine.deform import coarsen, deform_mask
from ..engine.heads import embed_for_head
from ..engine.nets.masktrack import DEFAULT_NET, MaskTrackNet
from ..engine.refine import refine_frame
from ..errors import PromptError
from ..progress import Progress
from ..prompts import Prompts, masks_digest
from ..training.masktrack import shares
from .base import Method, Session, param, prompt_model_param, register_method

FINETUNE_STEPS = 100
FINETUNE_SECONDS = 30.0


@register_method
class MaskTrack(Method):
    """Mask refinement from the previous frame (Perazzi et al. 2017)."""

    name = "masktrack"
    title = "MaskTrack: refine the previous frame's mask"
    description = ("MaskTrack (Perazzi et al. 2017): a network refines the previous frame's mask on each frame, "
                   "fine-tuned on the annotated frames first; masks (or clicks and boxes, through the prompt model)")
    propagates = True
    quality = 3

    @dataclass
    class Params:
        network: str = param("default", "the MaskTrack network: 'default' (the one that ships with the plugin) or "
                             "the path of a .pt file")
        prompt_model: str = prompt_model_param()
        finetune_steps: int = param(FINETUNE_STEPS, "online fine-tuning on the annotated frames: optimiser steps "
                                    "(0: off)", min=0, max=10_000)
        finetune_seconds: float = param(FINETUNE_SECONDS, "and at most this many seconds", min=0.0, max=3600.0)
        refine: bool = param(True, "snap the borders to image edges (guided filter); off: bilinear upsampling",
                             advanced=True)

    session_params = ("network",)

    def create_session(self, video, shared, settings) -> Generator[Progress, None, MaskTrackSession]:
        video, net, emb = yield from embed_for_head(video, MaskTrackNet, DEFAULT_NET, self.params.network,
                                                    str(self.device))
        return MaskTrackSession(self, video, net, emb)


class MaskTrackSession(Session):
    """MaskTrack on one video: the offline network, its copy fine-tuned on the last masks, the
    embeddings."""

    def __init__(self, method: MaskTrack, video, net: MaskTrackNet, embeddings):
        super().__init__(method, video)
        self.net, self.embeddings = net, embeddings
        #: ((steps, seconds, masks digest), network): the network fine-tuned on those masks
        self._tuned: tuple | None = None
        self._intensity = None

    def finetuned(self, masks: dict[int, np.ndarray], live: bool = False) -> Generator[Progress, None, MaskTrackNet]:
        """The network fine-tuned on `masks` (kept for the next runs on the same masks): every
        trainable layer, Adam on deformed copies of each object's mask, mirrored at random, for
        `finetune_steps` steps or `finetune_seconds`, whichever ends first. `live` (the update after
        an edit): the network tuned on these masks before, else the offline one."""
        p = self.params
        key = (p.finetune_steps, p.finetune_seconds, masks_digest(masks))
        if self._tuned is not None and self._tuned[0] == key:
            return self._tuned[1]
        if live or not p.finetune_steps or not p.finetune_seconds:
            return self.net
        net = copy.deepcopy(self.net).train().requires_grad_(True)
        optimiser = torch.optim.Adam(net.parameters(), lr=1e-4)
        rng = np.random.default_rng(0)
        emb = self.embeddings
        samples = [(t, obj) for t, m in sorted(masks.items()) for obj in np.unique(m) if obj]
        features = {t: emb.frame_features(t) for t, _ in samples}
        started = time.monotonic()
        for step in range(1, p.finetune_steps + 1):
            t, obj = samples[int(rng.integers(len(samples)))]
            mask = np.asarray(masks[t]) == obj
            rough, target = shares(deform_mask(mask, rng), emb.grid_shape, emb.settings.stride), \
                shares(mask, emb.grid_shape, emb.settings.stride)
            projected = F.relu(net.project(features[t])).permute(2, 0, 1)[None]
            rough, target = torch.from_numpy(rough)[None], torch.from_numpy(target)[None]
            if rng.random() < 0.5:
                projected, rough, target = projected.flip(-1), rough.flip(-1), target.flip(-1)
            loss = F.binary_cross_entropy_with_logits(net(projected, rough), target)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            yield Progress(step, p.finetune_steps, "fine-tuning")
            if time.monotonic() - started > p.finetune_seconds:
                break
        net = net.eval().requires_grad_(False)
        self._tuned = (key, net)
        return net

    def _frame(self, net: MaskTrackNet, t: int, previous: np.ndarray, values: np.ndarray
               ) -> tuple[np.ndarray, float]:
        """Frame t's labels from the previous frame's: each object's mask, coarsened by the dilation
        the network was trained with, refined (one pass each), merged by the highest score
        (background: 1 - the best object score); and its confidence."""
        emb = self.embeddings
        with torch.inference_mode():
            projected = net.project_frame(emb, t)
            rough = torch.stack([torch.from_numpy(shares(coarsen(previous == v), emb.grid_shape, emb.settings.stride))
                                 for v in values[1:]])
            p = torch.sigmoid(net(projected.expand(len(rough), -1, -1, -1), rough)).numpy()
        scores = np.concatenate([1 - p.max(0, keepdims=True), p]).transpose(1, 2, 0)
        if self.params.refine and self._intensity is None:
            self._intensity = self.video.intensity_range()
        intensity = self._intensity if self.params.refine else None  # None: bilinear upsampling
        return refine_frame(self.video, t, scores, values, emb.settings.stride, intensity), frame_confidence(scores)

    def segment(self, prompts: Prompts, start: int | None = None, direction: int = 0, live: bool = False
                ) -> Generator[Progress, None, np.ndarray]:
        """Every frame from its closest annotated frame (forward and backward from each), or one way
        from `start` (an annotated frame; annotated frames on the way restart the chain)."""
        self.check(prompts, start, direction)
        prompts = yield from self.dense(prompts)
        masks = {t: np.asarray(m) for t, m in prompts.masks.items()}
        if not masks or not any(m.any() for m in masks.values()):
            raise PromptError("MaskTrack refines masks: paint the object on a frame, or click it or draw its box")
        if start is not None and start not in masks:
            raise PromptError(f"MaskTrack propagates from an annotated frame; frame {start} has no mask "
                              f"(annotated: {', '.join(map(str, sorted(masks)))})")
        net = yield from self.finetuned(masks, live)
        n = len(self.video)
        values = np.union1d(np.concatenate([np.unique(m) for m in masks.values()]), [0])
        out = np.zeros((n, *self.video.shape[1:3]), np.uint8 if values.max() < 256 else np.int32)
        self.confidence = np.full(n, np.nan, np.float32)
        annotated = np.array(sorted(masks))
        if start is None:
            nearest = annotated[np.abs(np.arange(n)[:, None] - annotated[None]).argmin(1)]
            runs = [(a, d, [t for t in (range(a + 1, n) if d > 0 else range(a - 1, -1, -1)) if nearest[t] == a])
                    for a in annotated for d in (1, -1)]
        else:
            runs = [(start, direction, list(range(start + direction, n if direction > 0 else -1, direction)))]
        total, done = sum(len(r[2]) for r in runs), 0
        for a, _, frames in runs:
            out[a], self.confidence[a] = masks[a], 1.0
            previous = out[a]
            for t in frames:
                if t in masks:
                    out[t], self.confidence[t] = masks[t], 1.0
                else:
                    out[t], self.confidence[t] = self._frame(net, t, previous, values)
                previous = out[t]
                done += 1
                yield Progress(done, total, "refinement")
        return out
