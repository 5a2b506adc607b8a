"""A job that would not fit in memory is refused before any work: no embedding is computed, no
file is written."""

import re

import numpy as np
import pytest

from napari_vosembed import segment
from napari_vosembed.engine import cache, memory
from napari_vosembed.errors import ResourceError
from napari_vosembed.methods import available_methods
from napari_vosembed.prompts import Prompts


def test_every_method_declares_its_memory():
    for name, method in available_methods().items():
        assert method.memory is not None, name
        assert method.memory.base_mib > 0 and method.memory.per_frame_mib > 0, name


@pytest.mark.parametrize("method", sorted(available_methods()))
def test_a_video_too_long_for_the_memory_is_refused_before_any_work(method, tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "embeddings_root", lambda: tmp_path)
    monkeypatch.setattr(memory, "available_bytes", lambda: 256 * 2**20)
    monkeypatch.setattr(memory, "resident_bytes", lambda: 100 * 2**20)  # whatever earlier tests left
    monkeypatch.delenv("VOSEMBED_MEMORY_CHECK", raising=False)
    video = np.broadcast_to(np.zeros((1, 480, 854, 3), np.uint8), (400, 480, 854, 3))  # no memory of its own
    mask = np.zeros((480, 854), np.uint8)
    mask[100:200, 300:400] = 1
    title = re.escape(available_methods()[method].title or method)
    with pytest.raises(ResourceError, match=rf"{title} on 400 frames of 854 x 480 needs about .* GiB of memory"):
        segment(video, Prompts().add_mask(0, mask), method=method, device="cpu")
    assert list(tmp_path.iterdir()) == []
