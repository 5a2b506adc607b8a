"""Optical flow between neighbouring frames, computed once per video and kept on disk.

OpenCV's DIS flow (Kroeger et al., ECCV 2016, *Fast optical flow using dense inverse search*): dense,
CPU-only, tens of milliseconds per pair at our working size, no network and no model file (it ships
with opencv-python-headless). The learned flows of the papers (FlowNet 2.0 in MaskTrack) need a GPU
and weights we cannot fetch. Both directions are kept: from t to t + 1 and from t to t - 1, on a
frame scaled to about `FLOW_PIXELS` pixels, as float16 memory maps beside the embeddings (`flow-<key>/`, the key hashing
the video's content and these settings), marked done frame by frame like the embeddings.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..progress import Progress
from . import cache
from .cache import video_fingerprint
from .frames import FrameArray, release

FORMAT_VERSION = 1
#: Flow is computed on frames scaled to about this many pixels (never upsampled).
FLOW_PIXELS = 100_000
#: DIS preset: 'medium' (variational refinement on every scale) is worth its cost on large motions.
PRESET = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM


def flow_scale(height: int, width: int) -> float:
    """The factor frames are scaled by before the flow is computed."""
    return min(1.0, math.sqrt(FLOW_PIXELS / (height * width)))


@dataclass
class Flow:
    """The cached flow of one video. `forward[t]`: from frame t to t + 1; `backward[t]`: from t to
    t - 1; (T, h, w, 2) float16, (dx, dy) in pixels of the scaled frame (zero where there is no
    neighbour)."""

    path: Path
    frame_shape: tuple[int, int]
    forward: FrameArray
    backward: FrameArray
    done: np.ndarray

    @property
    def scale(self) -> float:
        return self.forward.shape[1] / self.frame_shape[0]

    def toward(self, t: int, direction: int) -> np.ndarray:
        """(h, w, 2) float32 flow from frame t to frame t - `direction` (the frame a run in
        `direction` comes from), in pixels of the scaled frame."""
        return np.asarray(self.backward[t] if direction > 0 else self.forward[t], np.float32)

    def warp(self, mask: np.ndarray, t: int, direction: int) -> np.ndarray:
        """Frame t - `direction`'s binary `mask` (full resolution) moved onto frame t: each pixel of
        frame t takes the mask's value where the flow sends it (backward warping)."""
        height, width = self.frame_shape
        flow = cv2.resize(self.toward(t, direction), (width, height), interpolation=cv2.INTER_LINEAR) / self.scale
        xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
        moved = cv2.remap(np.asarray(mask, np.uint8), xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return moved > 0

    def motion(self, t: int, shape: tuple[int, int] | None = None) -> np.ndarray:
        """(h, w, 2) float32 motion of frame t toward the previous frame (the first frame: toward the
        next), in pixels of the full frame, resized to `shape` (default: the flow's own)."""
        flow = self.toward(t, 1 if t > 0 or len(self.done) == 1 else -1) / self.scale
        if shape is not None and shape != flow.shape[:2]:
            flow = cv2.resize(flow, shape[::-1], interpolation=cv2.INTER_AREA)
        return flow

    def magnitude(self, t: int) -> np.ndarray:
        """The flow magnitude of frame t (`motion`) as an (H, W, 3) uint8 image (MaskTrack's flow
        input, Sec. 3.3): 255 at the frame's 99th percentile of the magnitude (at least one pixel of
        motion), replicated to three channels."""
        mag = np.sqrt((self.motion(t) ** 2).sum(-1))
        top = max(float(np.percentile(mag, 99)), 1.0)
        image = cv2.resize(np.clip(mag * (255 / top), 0, 255).astype(np.uint8), self.frame_shape[::-1],
                           interpolation=cv2.INTER_LINEAR)
        return np.repeat(image[..., None], 3, axis=2)


class MagnitudeReader:
    """A reader (`io.video.Video`'s protocol) of a video's flow magnitude images."""

    def __init__(self, flow: Flow):
        self.flow = flow
        self.frame_shape = (*flow.frame_shape, 3)
        self.dtype = np.dtype(np.uint8)
        self.n_frames = len(flow.done)
        self.frame_names = [f"{t:05d}" for t in range(self.n_frames)]

    def read(self, t: int) -> np.ndarray:
        return self.flow.magnitude(t)


def magnitude_video(flow: Flow):
    """The flow magnitude images of a video as a `Video` (what the backbone embeds for the flow branch)."""
    from ..io.video import Video

    return Video(MagnitudeReader(flow), None)


def _gray(frame: np.ndarray, low: float, high: float, size: tuple[int, int]) -> np.ndarray:
    from ..io.video import normalize_frame

    image = normalize_frame(frame, low, high).mean(-1)
    return cv2.resize((image * 255).astype(np.uint8), size, interpolation=cv2.INTER_AREA)


def _flow_path(video) -> Path:
    key = json.dumps([FORMAT_VERSION, video_fingerprint(video), FLOW_PIXELS, PRESET])
    return cache.embeddings_root() / f"flow-{hashlib.blake2b(key.encode(), digest_size=16).hexdigest()}"


def video_flow(video) -> Generator[Progress, None, Flow]:
    """The flow of `video` both ways between neighbouring frames, computed (or reused) frame by frame."""
    from ..io import as_video

    video = as_video(video)
    n, height, width = len(video), *video.shape[1:3]
    scale = flow_scale(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    path = _flow_path(video)
    names = {"forward": ((n, size[1], size[0], 2), np.float16), "backward": ((n, size[1], size[0], 2), np.float16),
             "done": ((n,), np.bool_)}
    if not (path / "done.npy").exists():
        partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for name, (shape, dtype) in names.items():
            np.lib.format.open_memmap(partial / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
        try:
            partial.rename(path)
        except OSError:  # another process published it meanwhile: use that one
            shutil.rmtree(partial, ignore_errors=True)
    arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r+") for name in names}
    done = arrays["done"]
    todo = np.flatnonzero(~done)
    if len(todo):
        dis = cv2.DISOpticalFlow_create(PRESET)
        low, high = video.intensity_range()
        gray = {}

        def frame(t: int) -> np.ndarray:
            if t not in gray:
                gray[t] = _gray(video[t], low, high, size)
            return gray[t]

        yield Progress(int(done.sum()), n, "optical flow")
        for t in todo:
            t = int(t)
            if t + 1 < n:
                arrays["forward"][t] = dis.calc(frame(t), frame(t + 1), None)
            if t > 0:
                arrays["backward"][t] = dis.calc(frame(t), frame(t - 1), None)
            for key in [k for k in gray if k < t - 1]:
                del gray[key]
            for name in ("forward", "backward"):
                arrays[name].flush()
                release(arrays[name])  # a long video's flow is not all kept resident
            done[t] = True
            done.flush()
            yield Progress(int(done.sum()), n, "optical flow")
    return Flow(path, (height, width), FrameArray(arrays["forward"]), FrameArray(arrays["backward"]), done)
