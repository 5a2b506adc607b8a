"""napari-vosembed: video object segmentation with pixel embeddings."""

from .errors import VosEmbedError
from .methods import available_methods, iter_segment, segment
from .prompts import Prompts

__version__ = "0.1.0"
__all__ = ["Prompts", "VosEmbedError", "available_methods", "iter_segment", "segment", "__version__"]
