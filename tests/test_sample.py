import numpy as np

from napari_vosembed.io import read_sequence
from napari_vosembed.sample import sample_clip, write_sample_sequence


def test_sample_clip_moves_an_object_with_exact_masks():
    frames, masks = sample_clip(n_frames=6)
    assert frames.shape == (6, 240, 320, 3) and frames.dtype == np.uint8
    assert set(np.unique(masks)) == {0, 1}
    centres = [np.argwhere(m)[:, 1].mean() for m in masks]
    assert all(b > a for a, b in zip(centres, centres[1:]))


def test_sample_sequence_round_trips(tmp_path):
    seq = read_sequence(write_sample_sequence(tmp_path))
    _, masks = sample_clip()
    assert len(seq.video) == len(masks)
    assert seq.video.frame_names[0] == "00000"
    np.testing.assert_array_equal(seq.masks[5], masks[5])
