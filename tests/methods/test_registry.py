from dataclasses import dataclass

import numpy as np
import pytest

from napari_vosembed.errors import MethodError
from napari_vosembed.methods.pml import PML
from napari_vosembed.methods import Method, Progress, Session, available_methods, base, register_method, segment
from napari_vosembed.progress import drive
from napari_vosembed.prompts import Prompts


@pytest.fixture
def registry(monkeypatch):
    available_methods()  # the shipped methods are discovered (once) before the registry is emptied
    monkeypatch.setattr(base.METHODS, "items", {})
    return base.METHODS.items


class CopyFirstMask(Method):
    """Repeats the mask of frame 0 plus `fill` (test double for the registry, not a shipped method)."""

    name = "copy-first"
    session_params = ()  # its session depends on no parameter: `fill` applies to each call

    @dataclass
    class Params:
        fill: int = 0

    def create_session(self, video, shared, settings):
        yield Progress(1, 1, "opening")
        return CopySession(self, video)


class CopySession(Session):
    def segment(self, prompts, start=None, direction=0, live=False):
        self.check(prompts, start, direction)
        out = np.empty(self.video.shape[:3], np.int32)
        for t in range(len(self.video)):
            out[t] = prompts.masks[0] + self.params.fill
            yield Progress(t + 1, len(self.video), "copy")
        return out


def test_empty_registry_says_no_method(registry):
    with pytest.raises(MethodError, match="no segmentation method is installed"):
        segment(np.zeros((2, 4, 4), np.uint8), Prompts().add_point(0, 1, 1, 1))


def test_segment_opens_a_session_drives_its_generator_and_validates_prompts(registry):
    register_method(CopyFirstMask)
    video = np.zeros((3, 4, 5), np.uint8)
    mask = np.eye(4, 5, dtype=np.uint8)
    seen = []
    labels = segment(video, Prompts().add_mask(0, mask), progress=seen.append, device="cpu", fill=1)
    assert labels.shape == (3, 4, 5) and np.all(labels == mask + 1)
    assert [(p.stage, p.done) for p in seen] == [("opening", 1), ("copy", 1), ("copy", 2), ("copy", 3)]
    with pytest.raises(MethodError, match="no parameter bogus"):
        segment(video, Prompts().add_mask(0, mask), device="cpu", bogus=1)
    with pytest.raises(MethodError, match="unknown method 'nope'"):
        segment(video, Prompts().add_mask(0, mask), method="nope")
    with pytest.raises(ValueError, match="4x6"):
        segment(video, Prompts().add_mask(0, np.ones((4, 6), np.uint8)), device="cpu")


def test_a_session_answers_only_what_its_method_can(registry):
    register_method(CopyFirstMask)
    session = drive(CopyFirstMask(device="cpu").open_session(np.zeros((3, 4, 5), np.uint8)), quiet=True)
    prompts = Prompts().add_mask(0, np.eye(4, 5, dtype=np.uint8))
    with pytest.raises(MethodError, match="does not answer frame by frame"):
        session.predict_frame(prompts, 1)
    with pytest.raises(MethodError, match="does not propagate"):
        next(session.segment(prompts, start=1, direction=1))
    # new parameters of the same session key are taken over; another method's are refused
    session.use(CopyFirstMask(device="cpu", fill=2))
    assert session.params.fill == 2 and drive(session.segment(prompts), quiet=True)[2, 0, 0] == 3
    with pytest.raises(MethodError, match="opened for other parameters"):
        session.use(PML(device="cpu"))


def test_the_shipped_methods_declare_what_they_do():
    installed = available_methods()
    assert list(installed)[:2] == ["pml", "tvos"]
    pml, tvos = installed["pml"], installed["tvos"]
    assert pml.interactive and not pml.propagates and pml.requires == () and pml.session_params == ("head",)
    assert tvos.propagates and not tvos.interactive and tvos.requires == ("pml",)
    assert pml.title and tvos.title  # what the dock shows
    assert pml(device="cpu").session_key() == pml(device="cpu", k_mask=7).session_key()
    assert pml(device="cpu").session_key() != pml(device="cpu", head="none").session_key()
    assert tvos(device="cpu").session_key() != tvos(device="cpu", global_matching=0.5).session_key()


def test_chains_cover_every_frame_from_its_closest_annotated_frame():
    from napari_vosembed.methods.base import chains

    runs = chains({2: None, 7: None}, 10)
    assert runs == [(2, 1, [3, 4]), (2, -1, [1, 0]), (7, 1, [8, 9]), (7, -1, [6, 5])]
    assert chains([2, 7], 10, start=7, direction=-1) == [(7, -1, [6, 5, 4, 3, 2, 1, 0])]
    assert chains([2, 7], 10, start=4, direction=1) == []
