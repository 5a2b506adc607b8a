"""The memory guard's arithmetic and its refusal."""

import pytest

from napari_vosembed.engine import memory
from napari_vosembed.engine.memory import MemoryModel, available_bytes, check_fits, resident_bytes
from napari_vosembed.errors import ResourceError


def test_the_estimate_grows_with_frames_and_with_pixels_beyond_480p():
    model = MemoryModel(base_mib=500, per_frame_mib=10)
    assert model.estimate(0, 480, 854) == 500 * 2**20
    assert model.estimate(100, 480, 854) == 1500 * 2**20
    assert model.estimate(100, 240, 427) == 1500 * 2**20  # smaller frames: no less than at 480p
    assert model.estimate(100, 960, 1708) == 4500 * 2**20  # four times the pixels


def test_this_machine_reports_its_memory():
    assert 0 < available_bytes() and 0 < resident_bytes() < 2**40


@pytest.fixture
def machine(monkeypatch):
    """A machine with 2 GiB available, this process holding 1 GiB."""
    monkeypatch.setattr(memory, "available_bytes", lambda: 2 * 2**30)
    monkeypatch.setattr(memory, "resident_bytes", lambda: 2**30)
    monkeypatch.delenv("VOSEMBED_MEMORY_CHECK", raising=False)
    return monkeypatch


def test_a_job_that_fits_with_what_the_process_holds_runs(machine):
    check_fits("the job", int(2.9 * 2**30))


def test_a_job_that_does_not_fit_is_refused_with_the_figures(machine):
    with pytest.raises(ResourceError, match=r"the job needs about 3\.5 GiB of memory, 2\.5 GiB more than this "
                                            r"process holds, but only 2\.0 GiB are available\. .*"
                                            "VOSEMBED_MEMORY_CHECK=off"):
        check_fits("the job", int(3.5 * 2**30))


def test_the_check_can_be_turned_off_and_is_skipped_where_memory_is_unknown(machine):
    machine.setenv("VOSEMBED_MEMORY_CHECK", "off")
    check_fits("the job", 2**40)
    machine.delenv("VOSEMBED_MEMORY_CHECK")
    machine.setattr(memory, "available_bytes", lambda: None)
    check_fits("the job", 2**40)


def test_a_run_writing_its_labels_to_disk_is_not_charged_for_them():
    model = MemoryModel(base_mib=1000, per_frame_mib=0.5)
    labels = 480 * 854 / 2**20  # MiB per 480p frame, a byte per pixel
    assert model.estimate(100, 480, 854, labels_in_memory=False) == int((1000 + (0.5 - labels) * 100) * 2**20)
    on_disk = model.estimate(20_000, 1024, 1024, labels_in_memory=False)
    assert abs(model.estimate(20_000, 1024, 1024) - on_disk - 20_000 * 2**20) <= 1  # a byte per pixel less
    assert MemoryModel(500, 0.1).estimate(100, 480, 854, labels_in_memory=False) == 500 * 2**20  # never below base


def test_segment_into_an_output_volume_tells_the_guard(monkeypatch):
    import numpy as np

    from napari_vosembed.methods import Method, iter_segment
    from napari_vosembed.prompts import Prompts

    seen = []

    def opened(self, video, shared=None, settings=None, prompt_masks=None, labels_in_memory=True):
        seen.append(labels_in_memory)
        raise RuntimeError("opened")

    monkeypatch.setattr(Method, "open_session", opened)
    video = np.zeros((3, 16, 16), np.uint8)
    prompts = Prompts().add_mask(0, np.pad(np.ones((4, 4), np.int32), 6))
    for out in (None, np.zeros((3, 16, 16), np.uint8)):
        with pytest.raises(RuntimeError, match="opened"):
            next(iter_segment(video, prompts, "pml", "cpu", out=out))
    assert seen == [True, False]
