"""Small trained heads on top of the cached backbone features: one file format for all methods.

A head file (`torch.save`) holds the constructor `config`, the `state_dict`, the
`EmbeddingSettings` the head was trained on (inference embeds with the same ones) and the
training record `meta`. The heads that ship with the package are listed with their sha256 in
`models/SHA256SUMS` (the format of `sha256sum`), checked when they are loaded and rewritten when
`vosembed train` saves into the package. `fit` is the optimisation loop of `vosembed train` and
of PML's one-shot fine-tuning.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from pathlib import Path
from typing import ClassVar, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelFileError
from ..progress import Progress
from .cache import EmbeddingSettings, Embeddings, embed_video

H = TypeVar("H", bound="Head")

#: The heads that ship with the package, and the list of their checksums.
MODELS_DIR = Path(__file__).parents[1] / "models"
SUMS = "SHA256SUMS"


def shipped_sums(folder: Path = MODELS_DIR) -> dict[str, str]:
    """File name -> sha256 of the heads listed in `folder`'s `SHA256SUMS`."""
    path = folder / SUMS
    if not path.is_file():
        return {}
    return {name.strip(): digest for digest, name in (line.split(None, 1) for line in path.read_text().splitlines()
                                                       if line.strip())}


def verify_shipped(path: Path, kind: str, command: str) -> None:
    """ModelFileError when `path` is a head of the package whose sha256 is not the listed one
    (`fetch.verified`: once per process while the file stays the same); files elsewhere (a user's
    heads) pass. `kind` and `command`: what the file is and what trains it, for the message."""
    from .fetch import _sha256, verified

    path = Path(path)
    sums = shipped_sums(path.parent) if path.parent.resolve() == MODELS_DIR.resolve() else {}
    if path.name in sums and not verified(path, None, sums[path.name]):
        raise ModelFileError(f"the shipped {kind} {path} is damaged (sha256 {_sha256(path)}, not the "
                             f"{sums[path.name]} listed in {SUMS}): reinstall napari-vosembed, or retrain it with "
                             f"`{command}`")


def record_shipped(path: Path) -> None:
    """Set `path`'s line of its folder's `SHA256SUMS` to its sha256 (a head `vosembed train` saved
    into the package)."""
    from .fetch import _sha256

    sums = shipped_sums(path.parent)
    sums[path.name] = _sha256(path)
    (path.parent / SUMS).write_text("".join(f"{sums[name]}  {name}\n" for name in sorted(sums)))


class Head(nn.Module):
    """Base of the methods' heads: subclasses store their constructor arguments in `self.config`
    and name the command that trains them in `train_command`."""

    config: dict
    kind: ClassVar[str] = "head"
    train_command: ClassVar[str] = ""

    def save(self, path: Path, settings: EmbeddingSettings, meta: dict) -> None:
        torch.save({"config": self.config, "settings": settings.__dict__, "state_dict": self.state_dict(),
                    "meta": meta}, path)

    @classmethod
    def load(cls: type[H], path: str | Path) -> tuple[H, EmbeddingSettings]:
        """The head in `path` (in eval mode, frozen) and its embedding settings."""
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"{cls.kind} {path} does not exist (train one with `{cls.train_command}`)")
        verify_shipped(path, cls.kind, cls.train_command)
        try:
            blob = torch.load(path, map_location="cpu", weights_only=False)
            head = cls(**blob["config"])
            head.load_state_dict(blob["state_dict"])
            settings = blob["settings"]
        except Exception as err:  # a foreign or damaged file: say which, and what it should be
            raise ModelFileError(f"{path} is not a {cls.kind} file ({type(err).__name__}: {err})") from err
        # files saved before `EmbeddingSettings.features` existed were trained on ISNet's decoder
        settings = {"features": "decoder", **settings, "levels": tuple(settings["levels"])}
        return head.eval().requires_grad_(False), EmbeddingSettings(**settings)


def embed_for_head(video, head_class: type[H], default: Path, head: str | Path | None, device: str,
                   settings: EmbeddingSettings | None = None) -> Generator[Progress, None, tuple]:
    """What a method's session starts from: `(video, head, embeddings)`. `head` is None (raw
    features, embedded with `settings`), "default" (the file `default`) or a path; a head embeds
    the video with the settings it was trained on. Yields the embedding progress (cached)."""
    from ..io import as_video

    video = as_video(video)
    model = None
    if head is not None:
        model, settings = head_class.load(default if head == "default" else Path(head))
    emb = yield from embed_video(video, settings or EmbeddingSettings(), device=str(device))
    return video, model, emb


def _source_index(out: np.ndarray, size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two input rows (or columns) and the weight of the second that bilinear resizing
    `size_in` -> `size_out` reads for each output in `out` (as `interpolate(align_corners=False)`)."""
    src = np.maximum((out + 0.5) * (size_in / size_out) - 0.5, 0)
    lo = np.floor(src).astype(np.int64)
    return lo, np.minimum(lo + 1, size_in - 1), (src - lo).astype(np.float32)


def project_levels(embeddings: Embeddings, weight: torch.Tensor, frames: list[int], top: int = 0, left: int = 0,
                   size: int | None = None) -> torch.Tensor:
    """`embeddings.frame_features(t) @ weight.T` for each t of `frames`, on the window of `size`
    cells (default: all) at (top, left): (len(frames), rows, cols, out).

    A head's first layer is linear and bilinear upsampling is linear, so each level is projected at
    its own resolution and the result upsampled: the same numbers, without building the
    1408-channel map (6x fewer operations at the default settings). `weight` (out, C) has its
    columns in the order of the levels. Levels held as tensors (crops, `nets.lse.crop_embeddings`)
    are read where they are and moved to `weight`'s device."""
    h, w = embeddings.grid_shape
    rows = np.arange(top, min(top + (size or h), h))
    cols = np.arange(left, min(left + (size or w), w))
    out = None
    weights = weight.split([a.shape[-1] for a in embeddings.levels.values()], dim=1)
    for array, part in zip(embeddings.levels.values(), weights):
        hi, wi = array.shape[1:3]
        same = (hi, wi) == (h, w)
        y0, y1, wy = _source_index(rows, hi, h)
        x0, x1, wx = _source_index(cols, wi, w)
        r0, c0 = y0.min(), x0.min()
        r1, c1 = (rows[-1], cols[-1]) if same else (y1.max(), x1.max())
        window = array[frames, r0 : r1 + 1, c0 : c1 + 1]
        window = window.float() if isinstance(window, torch.Tensor) else \
            torch.from_numpy(np.asarray(window, dtype=np.float32))
        level = F.normalize(window.to(part.device), dim=-1) @ part.T
        if not same:
            ya, yb, xa, xb = (torch.from_numpy(i).to(part.device) for i in (y0 - r0, y1 - r0, x0 - c0, x1 - c0))
            level = torch.lerp(level.index_select(1, ya), level.index_select(1, yb),
                               torch.from_numpy(wy).to(part.device)[:, None, None])
            level = torch.lerp(level.index_select(2, xa), level.index_select(2, xb),
                               torch.from_numpy(wx).to(part.device)[:, None])
        out = level if out is None else out + level
    return out


def fit(optimiser: torch.optim.Optimizer, steps: int, step_loss: Callable[[], torch.Tensor], stage: str = "training"
        ) -> Generator[Progress, None, list[tuple[int, float]]]:
    """`steps` optimiser steps on `step_loss()` with a cosine learning-rate schedule, reported as
    `stage`; returns the loss history [(step, mean loss of the last 25 steps)]."""
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    history, running = [], []
    for step in range(1, steps + 1):
        loss = step_loss()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        running.append(loss.item())
        if step % 25 == 0 or step == steps:
            history.append((step, float(np.mean(running))))
            running = []
        yield Progress(step, steps, stage)
    return history
