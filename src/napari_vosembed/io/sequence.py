"""Sequences with ground truth, in our layout (``SEQ/frames`` + ``SEQ/masks``) or DAVIS's
(``ROOT/JPEGImages/480p/SEQ`` + ``ROOT/Annotations/480p/SEQ``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import VideoReadError
from .labels import Masks, label_files, read_label_folder
from .video import Video, open_video

LAYOUTS = (
    "SEQ/frames/*.jpg|png with SEQ/masks/*.png (same file stems), or the DAVIS layout "
    "ROOT/JPEGImages/480p/SEQ with ROOT/Annotations/480p/SEQ"
)


@dataclass(frozen=True)
class Sequence:
    """A video with its ground-truth masks (``masks[t]`` is ``None`` where frame ``t`` has none)."""

    name: str
    video: Video
    masks: Masks

    def ground_truth(self) -> list[np.ndarray | None]:
        """Every frame's mask, read into a list (``None`` where a frame has none)."""
        return [self.masks[t] for t in range(len(self.masks))]


def _load(name: str, frames: Path, masks: Path) -> Sequence:
    if not masks.is_dir():
        raise VideoReadError(f"{masks}: the masks folder of sequence {name!r} is missing (expected {LAYOUTS})")
    video = open_video(frames)
    names = video.frame_names
    orphans = sorted(set(label_files(masks)) - set(names))
    if orphans:
        shown = ", ".join(orphans[:5]) + (", ..." if len(orphans) > 5 else "")
        raise VideoReadError(f"{masks}: masks without a frame of the same name in {frames}: {shown}")
    frame_size = tuple(video.shape[1:3])
    return Sequence(name, video, read_label_folder(masks, names, frame_size))


def read_sequence(path: str | os.PathLike, name: str | None = None, resolution: str = "480p") -> Sequence:
    """Open a sequence with ground truth.

    ``path`` is a sequence folder (``SEQ`` holding ``frames/`` and ``masks/``, or DAVIS's
    ``ROOT/JPEGImages/480p/SEQ``), or, with ``name``, the root holding the sequences.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise VideoReadError(f"{path}: no such folder")
    if name is not None:
        if (path / "JPEGImages").is_dir():
            path = path / "JPEGImages" / resolution / name
        else:
            path = path / name
        if not path.is_dir():
            raise VideoReadError(f"{path}: no sequence {name!r} here (expected {LAYOUTS})")
    if (path / "frames").is_dir():
        return _load(path.name, path / "frames", path / "masks")
    if path.parent.parent.name == "JPEGImages":
        root, res = path.parent.parent.parent, path.parent.name
        return _load(path.name, path, root / "Annotations" / res / path.name)
    raise VideoReadError(f"{path}: not a sequence folder; expected {LAYOUTS}")


def list_sequences(root: str | os.PathLike, resolution: str = "480p") -> list[str]:
    """Sorted names of the sequences under ``root`` (either layout), for ``read_sequence(root, name)``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise VideoReadError(f"{root}: no such folder")
    names = {p.name for p in root.iterdir() if (p / "frames").is_dir()}
    davis = root / "JPEGImages" / resolution
    if davis.is_dir():
        names |= {p.name for p in davis.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return sorted(names)
