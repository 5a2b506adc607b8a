"""LSE (Ci, Wang and Wang, ECCV 2018): box-initialised tracking with zoom-in and location-sensitive
embeddings.

Each object is tracked in its own zoomed-in crop (Sec. 4.1): the tight box of its previous mask,
enlarged by the `context` factor, is cropped from the next frame and resized to 320 x 320; the
backbone reads the crop (one pass per object and frame, nothing cached) and the LSE network
(`engine.nets.lse`) predicts each cell's foreground probability and its location-sensitive
embedding; the fusion of Sec. 4.3 averages the foreground probability with each cell's similarity
to the median embedding of the predicted foreground. The crop's result, snapped to the crop's edges
(guided filter), is pasted back at full resolution; its parts that overlap the previous box
(`zoom.follow`) give the tight box where the next frame is cropped (its growth limited,
`zoom.limited`). An object that is not found keeps its box, searched for in a search box that
grows each frame. Before tracking, the network is adapted to the video (Sec. 5.2): on crops around the given
boxes, pixels the network gives >= 0.6 inside a box are foreground, pixels outside it background;
with `prescan`, a first pass over the whole video adds its frames' pseudo-labels for one more round
before the final pass.

Prompts: a box per object (several objects: several labels); a painted mask (or clicks, through
the prompt model) gives the object's box and exact pseudo-labels. Several annotated frames: each
frame takes its result from the closest one, forwards and backwards.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Generator
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy import ndimage

from ..engine.backbone import get_backbone
from ..engine.cache import normalized_levels
from ..engine.confidence import frame_confidence
from ..engine.frames import label_volume
from ..engine.memory import MemoryModel
from ..engine.nets.lse import DEFAULT_NET, GRID, LSENet, crop_embeddings, fuse, grid_shares, jittered, losses
from ..engine.refine import COLOUR_EPS, GRAY_EPS, guided_filter
from ..engine.zoom import (CONTEXT, CROP_SIZE, box_in_crop, crop, follow, grown, limited, paste, search_box, tight_box,
                           whole_frame)
from ..errors import PromptError
from ..io import normalize_frame
from ..progress import Progress
from ..prompts import Prompts, masks_digest
from .base import Method, Session, chains, param, prompt_model_param, register_method

#: Sec. 5.2: pixels inside a box that the network gives at least this are foreground pseudo-labels.
PSEUDO_LABEL = 0.6
#: Adaptation crops per annotated frame (the box as given, then jittered copies), and in all.
CROPS_PER_ANCHOR, MAX_CROPS = 4, 16
#: Frames of the pre-scan pass whose crops become training samples, at most.
PRESCAN_FRAMES = 24


@register_method
class LSE(Method):
    """Zoom-in tracking with location-sensitive embeddings (Ci et al. 2018)."""

    name = "lse"
    title = "LSE: track a box, zoomed in"
    description = ("LSE (Ci et al. 2018): each object's box is tracked through the video in a zoomed-in crop; "
                   "location-sensitive embeddings and a foreground prediction, fused, give its mask; the network "
                   "adapts to the video first. Boxes (or masks, or clicks through the prompt model)")
    propagates = True
    tracks_boxes = True
    quality = 2
    memory = MemoryModel(base_mib=1050, per_frame_mib=0.5)  # benchmark memory, rounded up

    @dataclass
    class Params:
        network: str = param("default", "the LSE network: 'default' (the one that ships with the plugin) or the "
                             "path of a .pt file")
        prompt_model: str = prompt_model_param()
        zoom: bool = param(True, "zoom in: crop each frame around the object's previous box (off: the whole "
                           "frame is the crop)")
        context: float = param(CONTEXT, "the crop around the previous box: each side this many times the box's",
                               min=1.0, max=4.0, step=0.1)
        location: bool = param(True, "fuse with the location-sensitive embedding (off: the appearance "
                               "embedding alone)")
        adapt_steps: int = param(100, "adaptation to the video on pseudo-labels of the annotated frames: "
                                 "optimiser steps (0: off)", min=0, max=10_000)
        adapt_seconds: float = param(30.0, "and at most this many seconds", min=0.0, max=3600.0)
        prescan: bool = param(False, "pre-scan: a first pass over the whole video gives more pseudo-labels for "
                              "a second round of adaptation, then the final pass (twice the time)")
        refine: bool = param(True, "snap the borders to image edges in each crop (guided filter)", advanced=True)

    session_params = ("network",)

    def create_session(self, video, shared, settings) -> Generator[Progress, None, LSESession]:
        from ..io import as_video

        path = DEFAULT_NET if self.params.network == "default" else self.params.network
        net, crop_settings = LSENet.load(path)
        yield Progress(1, 1, "network")
        return LSESession(self, as_video(video), net, crop_settings)


@dataclass
class Anchor:
    """An object on an annotated frame: its box, and its mask where the prompts give one."""

    box: tuple[int, int, int, int]
    mask: np.ndarray | None = None


@dataclass
class Sample:
    """A crop and its pseudo-labels, for adaptation: the crop's backbone levels, the object's share
    of each cell and the cells that have a label."""

    levels: dict
    shares: torch.Tensor
    known: torch.Tensor


class LSESession(Session):
    """LSE on one video: the offline network, its adapted copies, the backbone for the crops; after
    `segment`, `boxes`: object -> (T, 4) tracked boxes (y0, x0, y1, x1; NaN where it is absent)."""

    def __init__(self, method: LSE, video, net: LSENet, settings):
        super().__init__(method, video)
        self.net, self.settings = net.to(method.device), settings
        self._backbone = None
        self._intensity = video.intensity_range()
        self._adapted: tuple | None = None
        self._last: tuple | None = None

    # -- one crop -----------------------------------------------------------------------------
    def _frame(self, t: int) -> np.ndarray:
        """Frame t in [0, 1], RGB (the last one kept: every object of a frame is cropped from it)."""
        if self._last is None or self._last[0] != t:
            self._last = (t, normalize_frame(self.video[t], *self._intensity))
        return self._last[1]

    def crop_levels(self, image: np.ndarray, search) -> tuple[np.ndarray, dict]:
        """The crop of `image` (a normalised frame) under `search` and its backbone levels (on the
        method's device: the network reads them there)."""
        if self._backbone is None:
            self._backbone = get_backbone(self.settings.backbone, self.method.device, features=self.settings.features,
                                          saliency=False)
        patch = crop(image, search)
        with torch.inference_mode():
            out = self._backbone(torch.from_numpy(patch).permute(2, 0, 1)[None])
            levels = normalized_levels(out, self.settings.levels)
        return patch, levels

    def predict(self, net: LSENet, levels: dict) -> np.ndarray:
        """The fused probability of each cell of a crop (Sec. 4.3), (GRID, GRID)."""
        with torch.inference_mode():
            out = net(net.projected(crop_embeddings(levels, CROP_SIZE, self.settings), [0]))
            embeddings = out.lse[0] if self.params.location else out.appearance[0]
            return fuse(torch.sigmoid(out.foreground[0]), embeddings).cpu().numpy()

    def _crop_scores(self, p: np.ndarray, patch: np.ndarray) -> np.ndarray:
        """Cell probabilities upsampled to the crop's pixels, snapped to its edges (`refine`)."""
        up = cv2.resize(p.astype(np.float32), (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_LINEAR)
        if not self.params.refine:
            return up
        stride = CROP_SIZE // GRID
        if len(self.video.shape) == 4:
            return guided_filter(patch, up, 2 * stride, COLOUR_EPS, max(1, stride // 2))
        return guided_filter(patch[..., 0], up, max(1, stride // 2), GRAY_EPS)

    # -- prompts ------------------------------------------------------------------------------
    def _without_boxes(self, prompts: Prompts) -> Prompts:
        return Prompts(list(prompts.points), [], dict(prompts.masks), dict(prompts.scribbles))

    def needs_preparing(self, prompts: Prompts | None = None) -> bool:
        return super().needs_preparing(None if prompts is None else self._without_boxes(prompts))

    def prepare(self, prompts: Prompts | None = None) -> Generator[Progress, None, None]:
        yield from super().prepare(None if prompts is None else self._without_boxes(prompts))

    def anchors(self, prompts: Prompts) -> Generator[Progress, None, dict[int, dict[int, Anchor]]]:
        """Object -> annotated frame -> `Anchor`: the object's boxes (several on one frame: the box
        around them), and its masks, painted or from the clicks through the prompt model (a mask
        wins over a box of the same object on the same frame)."""
        anchors: dict[int, dict[int, Anchor]] = {}
        height, width = self.video.shape[1:3]
        for b in prompts.boxes:
            box = (max(0, int(np.floor(b.y0))), max(0, int(np.floor(b.x0))),
                   min(height, int(np.ceil(b.y1))), min(width, int(np.ceil(b.x1))))
            old = anchors.setdefault(b.label, {}).get(b.frame)
            if old is not None:
                box = (*np.minimum(old.box[:2], box[:2]).tolist(), *np.maximum(old.box[2:], box[2:]).tolist())
            if box[2] > box[0] and box[3] > box[1]:
                anchors[b.label][b.frame] = Anchor(box)
        dense = yield from self.dense(self._without_boxes(prompts))
        for t, labels in dense.masks.items():
            labels = np.asarray(labels)
            for v in np.unique(labels):
                box = tight_box(labels == v) if v else None
                if box is not None:
                    anchors.setdefault(int(v), {})[t] = Anchor(box, labels == v)
        anchors = {v: a for v, a in anchors.items() if a}
        if not anchors:
            raise PromptError("LSE tracks boxes: draw a box around the object (or paint its mask, or click it with "
                              "the prompt model on)")
        return anchors

    # -- adaptation (Sec. 5.2) ----------------------------------------------------------------
    def anchor_samples(self, anchors: dict[int, dict[int, Anchor]]) -> Generator[Progress, None, list[Sample]]:
        """Crops around each annotated box (as given, then jittered) with their pseudo-labels: the
        mask where one is given; else cells >= `PSEUDO_LABEL` inside the box foreground, outside it
        background, the rest unlabelled."""
        rng = np.random.default_rng(0)
        items = [(t, a) for objects in anchors.values() for t, a in sorted(objects.items())]
        per = max(1, min(CROPS_PER_ANCHOR, MAX_CROPS // len(items)))
        samples, shape = [], self.video.shape[1:3]
        for i, (t, anchor) in enumerate(items[:MAX_CROPS]):
            image = self._frame(t)
            for k in range(per):
                search = search_box(anchor.box if k == 0 else jittered(anchor.box, rng), shape, self.params.context)
                _, levels = self.crop_levels(image, search)
                samples.append(self.pseudo_labels(levels, search, anchor))
            yield Progress(i + 1, min(len(items), MAX_CROPS), "adaptation crops")
        return samples

    def pseudo_labels(self, levels: dict, search, anchor: Anchor) -> Sample:
        """The pseudo-labels of a crop of `search` around an annotated object (`anchor_samples`)."""
        if anchor.mask is not None:
            shares = torch.from_numpy(grid_shares(crop(anchor.mask.astype(np.float32), search)))
            return Sample(levels, shares, torch.ones(GRID, GRID, dtype=torch.bool))
        y0, x0, y1, x1 = box_in_crop(anchor.box, search)
        centres = (np.arange(GRID) + 0.5) / GRID
        rows, cols = (centres >= y0) & (centres < y1), (centres >= x0) & (centres < x1)
        inside = torch.from_numpy(rows[:, None] & cols[None])
        fg = torch.from_numpy(self.predict(self.net, levels) >= PSEUDO_LABEL) & inside
        return Sample(levels, fg.float(), fg | ~inside)

    def adapt(self, net: LSENet, samples: list[Sample]) -> Generator[Progress, None, LSENet]:
        """A copy of `net` trained on `samples` with all the losses (stage 'lse'), at most
        `adapt_steps` steps and `adapt_seconds`."""
        p = self.params
        tuned = copy.deepcopy(net).train().requires_grad_(True)
        optimiser = torch.optim.Adam(tuned.parameters(), lr=1e-4)
        rng = np.random.default_rng(0)
        started = time.monotonic()
        for step in range(1, p.adapt_steps + 1):
            batch = [samples[i] for i in rng.choice(len(samples), min(4, len(samples)), replace=False)]
            projected = torch.cat([tuned.projected(crop_embeddings(s.levels, CROP_SIZE, self.settings), [0])
                                   for s in batch])
            loss = losses(tuned(projected), torch.stack([s.shares for s in batch]).to(projected.device),
                          torch.stack([s.known for s in batch]).to(projected.device), "lse", rng)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            yield Progress(step, p.adapt_steps, "adaptation")
            if time.monotonic() - started > p.adapt_seconds:
                break
        return tuned.eval().requires_grad_(False)

    def adapted(self, anchors: dict[int, dict[int, Anchor]], live: bool) -> Generator[Progress, None, LSENet]:
        """The network adapted to these anchors (kept while they stay the same); `live` or no
        adaptation asked: the offline network."""
        p = self.params
        if live or not p.adapt_steps or not p.adapt_seconds:
            return self.net
        boxes = {(v, t): a.box for v, objects in anchors.items() for t, a in objects.items()}
        masks = {i: a.mask for i, a in enumerate(a for objects in anchors.values() for a in objects.values())
                 if a.mask is not None}
        key = (p.adapt_steps, p.adapt_seconds, p.prescan, p.context, p.zoom, p.location, repr(sorted(boxes.items())),
               masks_digest(masks))
        if self._adapted is not None and self._adapted[0] == key:
            return self._adapted[1]
        samples = yield from self.anchor_samples(anchors)
        net = yield from self.adapt(self.net, samples)
        if p.prescan:
            scanned: list[Sample] = []
            yield from self._track(net, anchors, None, 0, scanned)
            net = yield from self.adapt(net, samples + scanned)
        self._adapted = (key, net)
        return net

    # -- tracking (Sec. 4.1) ------------------------------------------------------------------
    def _track(self, net: LSENet, anchors: dict[int, dict[int, Anchor]], start: int | None, direction: int,
               scanned: list[Sample] | None = None) -> Generator[Progress, None, dict]:
        """Every object through its runs: frame -> [(object, region, probabilities)], each object's
        probabilities on the region of the frame its crop covers. `scanned` (the pre-scan): a list
        that receives the pseudo-labels of at most `PRESCAN_FRAMES` frames of each run (progress
        stage 'pre-scan' instead of 'tracking')."""
        stage = "tracking" if scanned is None else "pre-scan"
        shape = self.video.shape[1:3]
        patches: dict[int, list] = {}
        n = len(self.video)
        runs = [(v, *run) for v, objects in anchors.items() for run in chains(objects, n, start, direction)]
        starts: dict[tuple[int, int], tuple] = {}  # (object, annotated frame) -> the box its runs start from
        total, done = sum(len(r[3]) for r in runs) + len({r[:2] for r in runs}), 0
        for v, a, d, frames in runs:
            anchor = anchors[v][a]
            keep = set(frames[:: max(1, len(frames) // PRESCAN_FRAMES)]) if scanned is not None else set()
            if (v, a) not in starts:
                if anchor.mask is not None:
                    region = (slice(anchor.box[0], anchor.box[2]), slice(anchor.box[1], anchor.box[3]))
                    scores = anchor.mask[region].astype(np.float32)
                else:  # the annotated frame: the answer inside the box
                    region, scores = self._object(net, a, search_box(anchor.box, shape, self.params.context))
                    y0, x0, y1, x1 = anchor.box
                    inside = np.zeros(shape, bool)
                    inside[y0:y1, x0:x1] = True
                    scores = np.where(inside[region], scores, 0)
                patches.setdefault(a, []).append((v, region, scores))
                starts[v, a] = _frame_box(scores > 0.5, region) or anchor.box
                done += 1
                yield Progress(done, total, stage)
            box = starts[v, a]
            for t in frames:
                search = search_box(box, shape, self.params.context) if self.params.zoom else whole_frame(shape)
                region, scores = self._object(net, t, search, scanned if t in keep else None)
                top, left = region[0].start, region[1].start
                kept = follow(scores > 0.5, (box[0] - top, box[1] - left, box[2] - top, box[3] - left))
                scores = np.where(kept | (scores <= 0.5), scores, 0)
                patches.setdefault(t, []).append((v, region, scores))
                found = _frame_box(kept, region)
                box = limited(found, box) if found is not None else grown(box, shape)
                done += 1
                yield Progress(done, total, stage)
        return patches

    def _object(self, net: LSENet, t: int, search, scanned: list[Sample] | None = None
                ) -> tuple[tuple[slice, slice], np.ndarray]:
        """One object's probabilities on frame t from the crop of `search`: (region, scores)."""
        patch, levels = self.crop_levels(self._frame(t), search)
        p = self.predict(net, levels)
        if scanned is not None:
            found = tight_box(p >= PSEUDO_LABEL)
            if found is not None:
                fg = torch.from_numpy(p >= PSEUDO_LABEL)
                inside = torch.zeros(GRID, GRID, dtype=torch.bool)
                inside[found[0]:found[2], found[1]:found[3]] = True
                scanned.append(Sample(levels, fg.float(), fg | ~inside))
        return paste(self._crop_scores(p, patch), search, self.video.shape[1:3])

    def segment(self, prompts: Prompts, start: int | None = None, direction: int = 0, live: bool = False,
                out=None) -> Generator[Progress, None, np.ndarray]:
        """Every frame from each object's closest annotated frame (both directions), or one way from
        `start`; `boxes` holds the tracked boxes afterwards."""
        self.check(prompts, start, direction)
        anchors = yield from self.anchors(prompts)
        if start is not None and not any(start in objects for objects in anchors.values()):
            raise PromptError(f"LSE tracks from an annotated frame; frame {start} has no box or mask")
        net = yield from self.adapted(anchors, live)
        patches = yield from self._track(net, anchors, start, direction)
        n, (height, width) = len(self.video), self.video.shape[1:3]
        values = np.array([0, *sorted(anchors)])
        out = label_volume(out, n, (height, width), int(values.max()))
        self.confidence = np.full(n, np.nan, np.float32)
        self.boxes = {int(v): np.full((n, 4), np.nan) for v in values[1:]}
        for t, items in patches.items():
            scores = np.zeros((height, width, len(values)), np.float32)
            for v, region, p in items:
                k = int(np.searchsorted(values, v))
                scores[region + (k,)] = np.maximum(scores[region + (k,)], p)
            scores[..., 0] = np.maximum(0.5, 1 - scores[..., 1:].max(-1))
            out[t] = labels = values[scores.argmax(-1)]
            self.confidence[t] = frame_confidence(scores[::4, ::4])
            for v, box in frame_boxes(labels).items():
                if v in self.boxes:
                    self.boxes[v][t] = box
        return out


def _frame_box(mask: np.ndarray, region: tuple[slice, slice]) -> tuple[int, int, int, int] | None:
    """The tight box, in frame pixels, of a mask of the frame's `region`."""
    box = tight_box(mask)
    if box is None:
        return None
    top, left = region[0].start, region[1].start
    return box[0] + top, box[1] + left, box[2] + top, box[3] + left


def frame_boxes(labels: np.ndarray) -> dict[int, tuple[int, int, int, int]]:
    """Object -> tight box of its pixels in one frame's labels (y0, x0, y1, x1), objects present only."""
    return {v: (found[0].start, found[1].start, found[0].stop, found[1].stop)
            for v, found in enumerate(ndimage.find_objects(labels), start=1) if found is not None}
