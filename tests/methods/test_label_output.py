"""`segment(..., out=)`: a run writes its labels into a given volume (a Zarr array on disk) frame by
frame, the same labels as in memory; frames a one-way run does not reach are left as they were."""

import numpy as np
import pytest
import zarr

from napari_vosembed.engine.cache import EmbeddingSettings
from napari_vosembed.errors import VosEmbedError
from napari_vosembed.methods import get_method
from napari_vosembed.progress import drive
from napari_vosembed.prompts import Prompts
from napari_vosembed.sample import moving_square, sample_clip

TINY = EmbeddingSettings(backbone="tiny", scale=1.0, levels=(4, 8), saliency_stride=0)


def zarr_labels(path, shape, dtype="uint8"):
    return zarr.create_array(str(path), shape=shape, chunks=(1, *shape[1:]), dtype=dtype, fill_value=0)


@pytest.mark.parametrize("name", ["pml", "tvos"])
def test_labels_written_to_a_zarr_store_are_those_of_a_run_in_memory(name, tmp_path):
    frames, masks = moving_square(8, 96, 128, side=32, step=4)
    session = drive(get_method(name)(device="cpu", head="none").open_session(frames, settings=TINY), quiet=True)
    prompts = Prompts().add_mask(0, masks[0])
    in_memory = drive(session.segment(prompts), quiet=True)
    assert (in_memory[1:] > 0).any()
    stored = zarr_labels(tmp_path / "labels.zarr", masks.shape)
    assert drive(session.segment(prompts, out=stored), quiet=True) is stored
    assert np.array_equal(zarr.open_array(str(tmp_path / "labels.zarr"))[:], in_memory)
    with pytest.raises(VosEmbedError, match="shape"):
        drive(session.segment(prompts, out=zarr_labels(tmp_path / "short.zarr", (5, 96, 128))), quiet=True)


def test_a_one_way_run_leaves_the_frames_it_does_not_reach_as_they_were(tmp_path):
    frames, masks = sample_clip(8, 64, 96)
    session = drive(get_method("tvos")(device="cpu", head="none").open_session(frames, settings=TINY), quiet=True)
    stored = zarr_labels(tmp_path / "labels.zarr", masks.shape)
    stored[:] = 7  # what the user had
    prompts = Prompts().add_mask(0, masks[0]).add_mask(4, masks[4])
    expected = drive(session.segment(prompts, start=4, direction=1), quiet=True)
    drive(session.segment(prompts, start=4, direction=1, out=stored), quiet=True)
    assert (stored[:4] == 7).all() and np.array_equal(stored[4:], expected[4:]) and not expected[:4].any()


def test_the_unsupervised_method_writes_into_a_given_volume(tmp_path):
    frames, _ = sample_clip(6, 64, 96)
    session = drive(get_method("unsupervised")(device="cpu", seeds=30).open_session(frames), quiet=True)
    in_memory = drive(session.segment(Prompts()), quiet=True)
    stored = zarr_labels(tmp_path / "labels.zarr", in_memory.shape)
    drive(session.segment(Prompts(), out=stored), quiet=True)
    assert np.array_equal(stored[:], in_memory)
