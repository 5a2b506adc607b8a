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
