"""MaskTrack (Perazzi et al., CVPR 2017): each frame's mask is the previous frame's, refined.

The network (`engine.nets.masktrack`) takes a frame's cached backbone features and a rough mask of
the object (the previous frame's result) and outputs the object's mask on that frame; trained
offline on deformed masks of static images (`vosembed train masktrack`), then fine-tuned online on
the annotated frames of the video at hand (deformed copies of their masks, mirrored at random), in
a bounded time. Variants of the paper: MaskTrack-Box (a box becomes the first mask through a
box-to-segment network trained the same way, Sec. 3.2), the optical-flow branch (the previous mask
moved by the flow, and a second network reading the flow magnitude, scores averaged, Sec. 3.3) and
a dense CRF on each frame (Sec. 3.3). Several objects: one refinement each, merged by the highest
score. Several annotated frames: each frame takes its result from the closest one (Sec. 5.4).
Clicks go through the prompt model first.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.cache import embed_video
from ..engine.confidence import frame_confidence
from ..engine.frames import label_volume
from ..engine.crf import crf_frame
from ..engine.deform import coarsen, deform_mask
from ..engine.flow import Flow, magnitude_video, video_flow
from ..engine.heads import embed_for_head
from ..engine.memory import MemoryModel
from ..engine.nets.masktrack import BOX_NET, DEFAULT_NET, FLOW_NET, MaskTrackNet
from ..engine.refine import refine_device, refine_frame
from ..errors import PromptError
from ..progress import Progress
from ..prompts import Prompts, masks_digest
from ..training.masktrack import shares
from .base import Method, Session, chains, param, prompt_model_param, register_method

FINETUNE_STEPS = 100
FINETUNE_SECONDS = 30.0


@register_method
class MaskTrack(Method):
    """Mask refinement from the previous frame (Perazzi et al. 2017)."""

    name = "masktrack"
    title = "MaskTrack: refine the previous frame's mask"
    description = ("MaskTrack (Perazzi et al. 2017): a network refines the previous frame's mask on each frame, "
                   "fine-tuned on the annotated frames first; masks, boxes (box-to-segment network) or clicks "
                   "(prompt model); optional optical-flow branch and dense CRF")
    propagates = True
    quality = 3
    memory = MemoryModel(base_mib=1050, per_frame_mib=0.5)  # benchmark memory, rounded up

    @dataclass
    class Params:
        network: str = param("default", "the MaskTrack network: 'default' (the one that ships with the plugin) or "
                             "the path of a .pt file")
        prompt_model: str = prompt_model_param()
        box: str = param("network", "a box becomes the object's mask through MaskTrack-Box's box-to-segment network "
                         "('network') or through the prompt model; a frame with clicks always goes through the "
                         "prompt model", choices=("network", "prompt model"))
        flow: bool = param(False, "optical-flow branch: the previous mask moved by the optical flow, and a second "
                           "network on the flow magnitude, its scores averaged with the frame's")
        crf: bool = param(False, "dense CRF on every frame's scores (instead of the guided filter)")
        finetune_steps: int = param(FINETUNE_STEPS, "online fine-tuning on the annotated frames: optimiser steps "
                                    "per branch (0: off)", min=0, max=10_000)
        finetune_seconds: float = param(FINETUNE_SECONDS, "and at most this many seconds per branch", min=0.0,
                                        max=3600.0)
        refine: bool = param(True, "snap the borders to image edges (guided filter); off: bilinear upsampling",
                             advanced=True)

    session_params = ("network",)

    def create_session(self, video, shared, settings) -> Generator[Progress, None, MaskTrackSession]:
        video, net, emb = yield from embed_for_head(video, MaskTrackNet, DEFAULT_NET, self.params.network,
                                                    str(self.device))
        return MaskTrackSession(self, video, net, emb)


class MaskTrackSession(Session):
    """MaskTrack on one video: the offline networks of each branch, their copies fine-tuned on the
    last masks, the embeddings of the frames (and of the flow magnitude, once asked for)."""

    def __init__(self, method: MaskTrack, video, net: MaskTrackNet, embeddings):
        super().__init__(method, video)
        #: branch ('frames', 'flow') -> its offline network (on the method's device), and the features it reads
        self.nets, self.features = {"frames": net.to(method.device)}, {"frames": embeddings}
        self.flow: Flow | None = None
        #: branch -> ((steps, seconds, masks digest), network fine-tuned on those masks)
        self._tuned: dict[str, tuple] = {}
        self._box_net: MaskTrackNet | None = None
        self._intensity = None

    @property
    def grid(self) -> tuple[tuple[int, int], float]:
        emb = self.features["frames"]
        return emb.grid_shape, emb.settings.stride

    def branches(self) -> Generator[Progress, None, list[str]]:
        """The branches the parameters ask for; the flow branch's input (the video's optical flow and
        the embeddings of its magnitude images, both cached on disk) computed on first use."""
        if not self.params.flow:
            return ["frames"]
        if self.flow is None:
            flow = yield from video_flow(self.video)
            net, settings = MaskTrackNet.load(FLOW_NET)
            self.features["flow"] = yield from embed_video(magnitude_video(flow), settings,
                                                           device=str(self.method.device))
            self.nets["flow"], self.flow = net.to(self.method.device), flow
        return ["frames", "flow"]

    def finetuned(self, branch: str, masks: dict[int, np.ndarray], live: bool = False
                  ) -> Generator[Progress, None, MaskTrackNet]:
        """The `branch` network fine-tuned on `masks` (kept for the next runs on the same masks): every
        trainable layer, Adam on deformed copies of each object's mask, mirrored at random, for
        `finetune_steps` steps or `finetune_seconds`, whichever ends first. `live` (the update after
        an edit): the network tuned on these masks before, else the offline one."""
        p = self.params
        key = (p.finetune_steps, p.finetune_seconds, masks_digest(masks))
        if branch in self._tuned and self._tuned[branch][0] == key:
            return self._tuned[branch][1]
        if live or not p.finetune_steps or not p.finetune_seconds:
            return self.nets[branch]
        net = copy.deepcopy(self.nets[branch]).train().requires_grad_(True)
        optimiser = torch.optim.Adam(net.parameters(), lr=1e-4)
        rng = np.random.default_rng(0)
        emb, (grid, stride), device = self.features[branch], self.grid, self.method.device
        samples = [(t, obj) for t, m in sorted(masks.items()) for obj in np.unique(m) if obj]
        features = {t: emb.frame_features(t).to(device) for t, _ in samples}
        started = time.monotonic()
        for step in range(1, p.finetune_steps + 1):
            t, obj = samples[int(rng.integers(len(samples)))]
            mask = np.asarray(masks[t]) == obj
            rough, target = shares(deform_mask(mask, rng), grid, stride), shares(mask, grid, stride)
            projected = F.relu(net.project(features[t])).permute(2, 0, 1)[None]
            rough, target = torch.from_numpy(rough)[None].to(device), torch.from_numpy(target)[None].to(device)
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
        self._tuned[branch] = (key, net)
        return net

    def _labels(self, t: int, scores: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Frame t's full-resolution labels from (h, w, K) grid probabilities: the dense CRF, the
        guided filter, or bilinear upsampling (parameters `crf`, `refine`)."""
        if self._intensity is None:
            self._intensity = self.video.intensity_range()
        _, stride = self.grid
        if self.params.crf:
            return crf_frame(self.video, t, scores, values, stride, self._intensity)
        return refine_frame(self.video, t, scores, values, stride, self._intensity if self.params.refine else None,
                            refine_device(self.method.device))

    def _scores(self, nets: dict[str, MaskTrackNet], t: int, rough: list[np.ndarray]) -> np.ndarray:
        """(h, w, 1 + objects) probabilities of frame t from each object's rough mask (full resolution):
        each branch's sigmoid, averaged over the branches; background 1 - the best object's."""
        grid, stride = self.grid
        cells = torch.stack([torch.from_numpy(shares(m, grid, stride)) for m in rough]).to(self.method.device)
        with torch.inference_mode():
            p = np.mean([torch.sigmoid(net(net.project_frame(self.features[b], t).expand(len(cells), -1, -1, -1),
                                           cells)).cpu().numpy() for b, net in nets.items()], 0)
        return np.concatenate([1 - p.max(0, keepdims=True), p]).transpose(1, 2, 0)

    def _frame(self, nets: dict[str, MaskTrackNet], t: int, previous: np.ndarray, values: np.ndarray,
               direction: int) -> tuple[np.ndarray, float]:
        """Frame t's labels from those of the frame before it in `direction`: each object's mask, moved
        by the flow (flow branch), coarsened by the dilation the networks were trained with, refined
        (one pass each), merged by the highest score; and the frame's confidence."""
        masks = [previous == v for v in values[1:]]
        if "flow" in nets:
            masks = [self.flow.warp(m, t, direction) for m in masks]
        scores = self._scores(nets, t, [coarsen(m) for m in masks])
        return self._labels(t, scores, values), frame_confidence(scores)

    def _network_boxes(self, prompts: Prompts) -> list[int]:
        """The frames whose boxes the box-to-segment network reads: those without clicks, unless the
        `box` parameter sends boxes to the prompt model."""
        if self.params.box != "network":
            return []
        clicked = {p.frame for p in prompts.points}
        return sorted({b.frame for b in prompts.boxes} - clicked)

    def _without_network_boxes(self, prompts: Prompts) -> Prompts:
        frames = self._network_boxes(prompts)
        return Prompts(list(prompts.points), [b for b in prompts.boxes if b.frame not in frames],
                       dict(prompts.masks), dict(prompts.scribbles))

    def needs_preparing(self, prompts: Prompts | None = None) -> bool:
        return super().needs_preparing(None if prompts is None else self._without_network_boxes(prompts))

    def prepare(self, prompts: Prompts | None = None) -> Generator[Progress, None, None]:
        yield from super().prepare(None if prompts is None else self._without_network_boxes(prompts))

    def boxes_as_masks(self, prompts: Prompts) -> Generator[Progress, None, Prompts]:
        """MaskTrack-Box: `prompts` with the boxes of `_network_boxes` frames turned into masks by the
        box-to-segment network (the filled box as the rough mask, the result kept inside the box; a
        painted mask on the same frame wins where it names an object)."""
        frames = self._network_boxes(prompts)
        if not frames:
            return prompts
        if self._box_net is None:
            self._box_net = MaskTrackNet.load(BOX_NET)[0].to(self.method.device)
        out = self._without_network_boxes(prompts)
        height, width = self.video.shape[1:3]
        for i, t in enumerate(frames):
            boxes = [b for b in prompts.boxes if b.frame == t]
            values = np.array([0, *sorted({b.label for b in boxes})])
            inside = []
            for v in values[1:]:
                box = np.zeros((height, width), bool)
                for b in (b for b in boxes if b.label == v):
                    box[max(0, math.floor(b.y0)):math.ceil(b.y1), max(0, math.floor(b.x0)):math.ceil(b.x1)] = True
                inside.append(box)
            labels = self._labels(t, self._scores({"frames": self._box_net}, t, inside), values)
            labels = np.where(np.any([(labels == v) & box for v, box in zip(values[1:], inside)], 0), labels, 0)
            painted = prompts.masks.get(t)
            out.masks[t] = labels if painted is None else np.where(np.asarray(painted) > 0, painted, labels)
            yield Progress(i + 1, len(frames), "boxes")
        return out

    def segment(self, prompts: Prompts, start: int | None = None, direction: int = 0, live: bool = False,
                out=None) -> Generator[Progress, None, np.ndarray]:
        """Every frame from its closest annotated frame (forward and backward from each), or one way
        from `start` (an annotated frame; annotated frames on the way restart the chain)."""
        self.check(prompts, start, direction)
        prompts = yield from self.boxes_as_masks(prompts)
        prompts = yield from self.dense(prompts)
        masks = {t: np.asarray(m) for t, m in prompts.masks.items()}
        if not masks or not any(m.any() for m in masks.values()):
            raise PromptError("MaskTrack refines masks: paint the object on a frame, or click it or draw its box")
        if start is not None and start not in masks:
            raise PromptError(f"MaskTrack propagates from an annotated frame; frame {start} has no mask "
                              f"(annotated: {', '.join(map(str, sorted(masks)))})")
        nets = {}
        for branch in (yield from self.branches()):
            nets[branch] = yield from self.finetuned(branch, masks, live)
        n = len(self.video)
        values = np.union1d(np.concatenate([np.unique(m) for m in masks.values()]), [0])
        out = label_volume(out, n, self.video.shape[1:3], int(values.max()))
        self.confidence = np.full(n, np.nan, np.float32)
        runs = chains(masks, n, start, direction)
        total, done = sum(len(r[2]) for r in runs), 0
        for a, d, frames in runs:
            out[a], self.confidence[a] = masks[a], 1.0
            previous = masks[a]
            for t in frames:
                if t in masks:
                    previous, self.confidence[t] = masks[t], 1.0
                else:
                    previous, self.confidence[t] = self._frame(nets, t, previous, values, d)
                out[t] = previous
                done += 1
                yield Progress(done, total, "refinement")
        return out
