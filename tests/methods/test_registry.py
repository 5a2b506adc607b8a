from dataclasses import dataclass

import numpy as np
import pytest

from napari_vosembed import methods
from napari_vosembed.errors import MethodError
from napari_vosembed.methods import Method, Progress, register_method, segment
from napari_vosembed.prompts import Prompts


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(methods, "_REGISTRY", {})
    return methods._REGISTRY


def test_empty_registry_says_no_method(registry):
    with pytest.raises(MethodError, match="no segmentation method is installed"):
        segment(np.zeros((2, 4, 4), np.uint8), Prompts().add_point(0, 1, 1, 1))


def test_segment_drives_the_generator_and_validates_prompts(registry):
    @register_method
    class CopyFirstMask(Method):
        """Repeats the mask of frame 0 (test double for the registry, not a shipped method)."""

        name = "copy-first"

        @dataclass
        class Params:
            fill: int = 0

        def run(self, video, prompts):
            out = np.empty(video.shape[:3], np.int32)
            for t in range(len(video)):
                out[t] = prompts.masks[0] + self.params.fill
                yield Progress(t + 1, len(video), "copy")
            return out

    video = np.zeros((3, 4, 5), np.uint8)
    mask = np.eye(4, 5, dtype=np.uint8)
    seen = []
    labels = segment(video, Prompts().add_mask(0, mask), progress=seen.append, device="cpu", fill=1)
    assert labels.shape == (3, 4, 5) and np.all(labels == mask + 1)
    assert [p.done for p in seen] == [1, 2, 3]
    with pytest.raises(MethodError, match="no parameter bogus"):
        segment(video, Prompts().add_mask(0, mask), device="cpu", bogus=1)
    with pytest.raises(MethodError, match="unknown method 'nope'"):
        segment(video, Prompts().add_mask(0, mask), method="nope")
    with pytest.raises(ValueError, match="4x6"):
        segment(video, Prompts().add_mask(0, np.ones((4, 6), np.uint8)), device="cpu")


def test_only_tvos_shares_the_pml_session_and_names_the_pml_head_of_its_matcher():
    from napari_vosembed.methods import available_methods

    installed = available_methods()
    assert [name for name, cls in installed.items() if cls.shares_pml_session] == ["tvos"]
    pml, tvos = installed["pml"], installed["tvos"]
    assert pml.pml_head("/some/pml_head.pt") == "/some/pml_head.pt" and pml.pml_head(None) is None
    assert tvos.pml_head("/some/tvos_head.pt") == "default" and tvos.pml_head(None) is None
    with pytest.raises(MethodError, match="'pml' does not run on a PML session"):
        next(pml(device="cpu").open_session(np.zeros((2, 4, 4), np.uint8)))
