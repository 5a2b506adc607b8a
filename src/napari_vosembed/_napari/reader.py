"""npe2 reader: videos, frame folders, (OME-)TIFF stacks, Zarr arrays and OME-Zarr images, and
sequences with ground truth.

Everything opens lazily (a dask array that decodes a frame when napari shows it). A TIFF or Zarr
stack with several channels opens as one Image layer per channel. A sequence folder (`SEQ/frames` +
`SEQ/masks`, or DAVIS's `ROOT/JPEGImages/480p/SEQ`) opens as an Image layer plus a Labels layer of
its ground truth. Folders that are neither a frame folder nor a sequence, and TIFFs that are single
images or layouts we do not read, get `None`, so that other readers can take them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import VosEmbedError
from ..io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from ..io.zarrstack import is_zarr
from .layers import PLANE_KEY, ROLE_KEY, SOURCE_KEY, labels_colormap

TIFF_EXTENSIONS = (".tif", ".tiff")
#: File patterns the plugin asks napari to open with this reader by default (see `prefer_reader`).
PREFERRED_PATTERNS = tuple(f"*{ext}" for ext in VIDEO_EXTENSIONS)
PLUGIN_NAME = "napari-vosembed"


def lazy_array(video):
    """A dask array over a `Video` that decodes a frame only when napari shows it."""
    import dask
    import dask.array as da

    frames = [da.from_delayed(dask.delayed(video.__getitem__)(t), video.shape[1:], video.dtype)
              for t in range(len(video))]
    return da.stack(frames)


def _is_davis_sequence(path: Path) -> bool:
    return path.parent.parent.name == "JPEGImages" and path.parent.parent.parent.joinpath(
        "Annotations", path.parent.name, path.name).is_dir()


def _is_sequence(path: Path) -> bool:
    return ((path / "frames").is_dir() and (path / "masks").is_dir()) or _is_davis_sequence(path)


def _has_frames(folder: Path) -> bool:
    try:
        return any(p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
                   for p in folder.iterdir())
    except OSError:
        return False


def _tiff_is_a_stack(path: Path) -> bool:
    """A TIFF we read as a video: a supported layout with more than one frame (of its first channel
    and z plane, where it has several)."""
    from ..io import channel_count, open_video, z_count

    try:
        with open_video(path, channel=0 if channel_count(path) else None, z=0 if z_count(path) else None) as video:
            return len(video) > 1
    except VosEmbedError:
        return False


def _is_a_tiff(path: Path) -> bool:
    """Whether tifffile reads `path` as a TIFF at all (a layout we do not read is still one)."""
    import tifffile

    try:
        with tifffile.TiffFile(path):
            return True
    except Exception:  # noqa: BLE001 - tifffile raises several kinds for files that are no TIFF
        return False


def get_reader(path):
    """Return a reader for `path` when it is something we read, else None (npe2 protocol). A file
    named .tif that is no TIFF gets the reader too, so that napari shows why it cannot be read
    instead of "refused the file"; TIFF images of layouts we do not read are left to others."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if not p.exists():
        return None
    if is_zarr(p):
        return read
    if p.is_dir():
        if _is_sequence(p) or _has_frames(p) or ((p / "frames").is_dir() and _has_frames(p / "frames")):
            return read
        return None
    name = p.name.lower()
    if p.suffix.lower() in VIDEO_EXTENSIONS:
        return read
    if name.endswith(TIFF_EXTENSIONS) and (_tiff_is_a_stack(p) or not _is_a_tiff(p)):
        return read  # a stack, or a broken file whose reading error says what is wrong with it
    return None


def read(path):
    """Layer data of `path`: an Image layer (one per channel and z plane of a stack with several),
    plus a Labels layer of ground truth for sequences."""
    from ..io import read_sequence

    if isinstance(path, (list, tuple)):
        path = path[0]
    p = Path(path)
    try:
        if p.is_dir() and _is_sequence(p):
            seq = read_sequence(p)
            layers = [image_layer_data(seq.video, seq.name)]
            masks = seq.ground_truth()
            if any(m is not None for m in masks):
                shape = seq.video.shape[1:3]
                gt = np.stack([m if m is not None else np.zeros(shape, np.int32) for m in masks])
                if gt.max() <= np.iinfo(np.uint8).max:
                    gt = gt.astype(np.uint8)
                meta = {"name": f"{seq.name} ground truth", "opacity": 0.5, "colormap": labels_colormap(),
                        "metadata": {ROLE_KEY: "ground truth"}}
                layers.append((gt, meta, "labels"))
            return layers
        name = p.stem  # cells.ome.tif, cells.ome.zarr -> cells
        if p.suffix.lower() in (*TIFF_EXTENSIONS, ".zarr") and name.lower().endswith(".ome"):
            name = name[: -len(".ome")]
        return [image_layer_data(video, " ".join([name, *(f"{k[0]}{v}" for k, v in plane.items())]), plane)
                for video, plane in planes(p)]
    except VosEmbedError as err:
        raise ValueError(str(err)) from err


def planes(path: Path) -> list:
    """(video, plane) of each channel and z plane of a TIFF or Zarr stack with several (plane:
    {"channel": K, "z": K}, what it has), else [(video, {})]: one lazy Image layer per time-lapse."""
    from ..io import channel_count, open_video, z_count

    choices = [[{name: k} for k in range(n)] if n else [{}]
               for name, n in (("channel", channel_count(path)), ("z", z_count(path)))]
    chosen = [{**c, **z} for c in choices[0] for z in choices[1]]
    return [(open_video(path, **plane), plane) for plane in chosen]


def image_layer_data(video, name, plane: dict | None = None):
    """(data, meta, "image") of a `Video`: lazy, RGB when it has 3 channels; contrast limits
    from the video's robust intensity range (0.5 / 99.5 percentiles) for 16-bit and float. `plane`:
    the channel / z plane of the source it shows."""
    rgb = len(video.shape) == 4
    meta = {"name": name, "rgb": rgb, "metadata": {SOURCE_KEY: str(video.source) if video.source else ""}}
    if plane:
        meta["metadata"][PLANE_KEY] = dict(plane)
    if video.dtype != np.uint8:
        meta["contrast_limits"] = [float(v) for v in video.intensity_range()]
    return (lazy_array(video), meta, "image")


def prefer_reader(patterns=PREFERRED_PATTERNS) -> dict[str, str]:
    """Make this plugin napari's reader for video files, where the user has no preference yet.

    napari_builtins also claims *.mp4, *.avi, *.mov, *.webm and *.mkv, so without a preference
    `viewer.open(path, plugin=None)` raises MultipleReaderError and the GUI asks which reader to
    use. This writes what the GUI's "remember this choice" writes (napari's settings,
    `plugins.extension2reader`), never overriding a choice the user made. Returns what it added.
    """
    from napari.settings import get_settings

    settings = get_settings().plugins
    current = dict(settings.extension2reader)
    added = {pattern: PLUGIN_NAME for pattern in patterns if pattern not in current}
    if added:
        settings.extension2reader = {**current, **added}
    return added
