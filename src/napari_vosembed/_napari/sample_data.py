"""The sample clip as napari layer data."""

from ..sample import SAMPLE_NAME, sample_clip as _clip
from .layers import ROLE_KEY, labels_colormap


def sample_clip():
    """The horse-gallop clip and its ground truth, as an Image and a Labels layer."""
    frames, masks = _clip()
    return [
        (frames, {"name": SAMPLE_NAME, "rgb": True}, "image"),
        (masks, {"name": f"{SAMPLE_NAME} ground truth", "opacity": 0.5, "colormap": labels_colormap(),
                 "metadata": {ROLE_KEY: "ground truth"}}, "labels"),
    ]
