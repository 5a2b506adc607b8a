"""Label images (masks): palette / grayscale / 16-bit PNG and TIFF, read as int32 ids."""

from __future__ import annotations

import collections.abc
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from ..errors import VideoReadError
from ._files import LABEL_EXTENSIONS, TIFF_EXTENSIONS, describe, image_header, list_files

LABEL_FORMATS = (
    "a palette (indexed) PNG, a grayscale PNG (binary 0/255, or the object ids themselves), "
    "a 16-bit PNG or an integer TIFF"
)
_INT32_MAX = np.iinfo(np.int32).max


def _to_int32(values: np.ndarray, path: Path) -> np.ndarray:
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
            raise VideoReadError(f"{path}: a label image must hold integer ids, found fractional values")
    elif values.dtype.kind not in "biu":
        raise VideoReadError(f"{path}: unsupported label dtype {values.dtype}; expected {LABEL_FORMATS}")
    if values.size and (values.min() < 0 or values.max() > _INT32_MAX):
        raise VideoReadError(
            f"{path}: label ids must lie in [0, {_INT32_MAX}], found {values.min()}..{values.max()}"
        )
    return values.astype(np.int32)


def _binary_or_ids(values: np.ndarray) -> np.ndarray:
    """8-bit grayscale masks holding only 0 and 255 are binary: 255 -> 1."""
    if np.isin(values, (0, 255)).all():
        return (values == 255).astype(np.int32)
    return values.astype(np.int32)


def _read_pil(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        mode = im.mode
        values = np.asarray(im)
    if mode in ("P", "PA"):
        return (values[..., 0] if values.ndim == 3 else values).astype(np.int32)
    if mode in ("L", "LA"):
        return _binary_or_ids(values[..., 0] if values.ndim == 3 else values)
    if mode in ("RGB", "RGBA"):
        rgb = values[..., :3]
        if not ((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])).all():
            raise VideoReadError(
                f"{path}: an {mode} colour image is not a label image; expected {LABEL_FORMATS}. "
                "Save masks as palette PNGs (e.g. with napari_vosembed.io.write_png_labels)."
            )
        return _binary_or_ids(rgb[..., 0])
    if mode in ("1", "I", "F") or mode.startswith("I;16"):
        return _to_int32(values, path)
    raise VideoReadError(f"{path}: unsupported PNG mode {mode!r}; expected {LABEL_FORMATS}")


def read_label_image(path: str | os.PathLike) -> np.ndarray:
    """Read a mask as an int32 ``(H, W)`` label image (0 = background).

    Palette PNGs give their indices, 8-bit grayscale PNGs holding only 0 and 255 give 0/1, other
    grayscale values (8 or 16 bit) and integer TIFFs are the ids themselves.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"{path}: no such label image")
    suffix = path.suffix.lower()
    if suffix not in LABEL_EXTENSIONS:
        raise VideoReadError(
            f"{path}: unsupported label file type {suffix or '(no extension)'}; "
            f"supported: {', '.join(LABEL_EXTENSIONS)}"
        )
    image_header(path)  # a readable header and a frame size that can be decoded
    try:
        if suffix in TIFF_EXTENSIONS:
            labels = _to_int32(np.squeeze(tifffile.imread(path)), path)
        else:
            labels = _read_pil(path)
    except VideoReadError:
        raise
    except Exception as exc:  # any parser error: see _files.describe()
        raise VideoReadError(f"{path}: not a readable label image ({describe(exc)})") from exc
    if labels.ndim != 2:
        raise VideoReadError(f"{path}: a label image must be 2D, got shape {labels.shape}")
    return labels


class Masks(collections.abc.Sequence):
    """Lazy label images, one per frame: ``masks[t]`` is int32 ``(H, W)`` or ``None``."""

    def __init__(self, paths: list[Path | None], frame_names: list[str], frame_size: tuple[int, int] | None):
        self.paths = paths
        self.frame_names = frame_names
        self.frame_size = frame_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, t: int) -> np.ndarray | None:
        path = self.paths[t]
        if path is None:
            return None
        labels = read_label_image(path)
        if self.frame_size is not None and labels.shape != self.frame_size:
            raise VideoReadError(_size_message(path, labels.shape, self.frame_size, "the frame size"))
        return labels

    def __iter__(self) -> Iterator[np.ndarray | None]:
        for t in range(len(self)):
            yield self[t]

    @property
    def annotated(self) -> list[int]:
        """Indices of the frames that have a mask."""
        return [t for t, p in enumerate(self.paths) if p is not None]

    def __repr__(self) -> str:
        return f"Masks({len(self.annotated)} of {len(self)} frames annotated)"


def _size_message(path: Path, size: tuple[int, ...], expected: tuple[int, int], what: str) -> str:
    return (
        f"{path}: mask size {size[1]}x{size[0]} (WxH) differs from {what} "
        f"{expected[1]}x{expected[0]}"
    )


def label_files(folder: Path) -> dict[str, Path]:
    """Label image files of ``folder`` by stem, in natural order."""
    files: dict[str, Path] = {}
    for path in list_files(folder, LABEL_EXTENSIONS):
        if path.stem in files:
            raise VideoReadError(f"{path}: two label images for frame {path.stem!r} ({files[path.stem].name})")
        files[path.stem] = path
    return files


def read_label_folder(
    path: str | os.PathLike,
    frame_names: list[str] | None = None,
    frame_size: tuple[int, int] | None = None,
) -> Masks:
    """Lazily read a folder of label images (ground truth or predictions), matched by file stem.

    With ``frame_names``, ``masks[t]`` is the file named like frame ``t`` (``None`` if absent) and
    other files are ignored; without, every label file counts, in natural order. Sizes are checked
    against ``frame_size`` ``(H, W)``, or against the first mask.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise VideoReadError(f"{folder}: no such folder of label images")
    files = label_files(folder)
    if frame_names is None:
        if not files:
            raise VideoReadError(f"{folder}: no label images ({', '.join(LABEL_EXTENSIONS)}) in this folder")
        frame_names = list(files)
    paths = [files.get(name) for name in frame_names]
    what = "the frame size"
    for mask in paths:
        if mask is None:
            continue
        size, _ = image_header(mask)
        if frame_size is None:
            frame_size, what = size, f"the first mask {mask.name}"
        elif size != frame_size:
            raise VideoReadError(_size_message(mask, size, frame_size, what))
    return Masks(paths, list(frame_names), frame_size)
