"""Video I/O without napari: lazy readers (video files, frame folders, TIFF and Zarr stacks, sequences with
ground truth, label images), label writers (indexed PNG, multi-page TIFF, Cell Tracking Challenge) and
the objects as tracks (napari Tracks data, GEFF graphs)."""

from ._files import IMAGE_EXTENSIONS, LABEL_EXTENSIONS, VIDEO_EXTENSIONS, natural_key
from .labels import Masks, read_label_folder, read_label_image
from .sequence import Sequence, list_sequences, read_sequence
from .tracks import object_tracks, track_features, write_geff
from .video import Video, as_video, channel_count, mirrored, normalize_frame, open_video, z_count
from .writers import ctc_tracks, davis_palette, write_ctc, write_png_labels, write_tiff_labels, zarr_labels

__all__ = [
    "IMAGE_EXTENSIONS",
    "LABEL_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "Masks",
    "Sequence",
    "Video",
    "as_video",
    "channel_count",
    "ctc_tracks",
    "davis_palette",
    "list_sequences",
    "mirrored",
    "natural_key",
    "normalize_frame",
    "object_tracks",
    "open_video",
    "read_label_folder",
    "read_label_image",
    "read_sequence",
    "track_features",
    "write_ctc",
    "write_geff",
    "write_png_labels",
    "write_tiff_labels",
    "z_count",
    "zarr_labels",
]
