"""Sequences with ground truth: our layout, the DAVIS layout, and (if present) the shared data."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_vosembed.errors import VideoReadError
from napari_vosembed.io import list_sequences, read_sequence

SHARED = Path("/work/shared/data")


def _frames(folder, names, size=(6, 8)):
    folder.mkdir(parents=True, exist_ok=True)
    for t, name in enumerate(names):
        Image.fromarray(np.full((*size, 3), 10 * t, np.uint8)).save(folder / f"{name}.jpg")


def _masks(folder, names, size=(6, 8)):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        mask = np.zeros(size, np.uint8)
        mask[1:3, 2:5] = 255
        Image.fromarray(mask).save(folder / f"{name}.png")


def test_our_layout(tmp_path):
    seq = tmp_path / "root" / "cat"
    _frames(seq / "frames", ["00000", "00001", "00002"])
    _masks(seq / "masks", ["00000", "00002"])
    s = read_sequence(seq)
    assert s.name == "cat" and len(s.video) == 3 and s.video.shape == (3, 6, 8, 3)
    assert len(s.masks) == 3 and s.masks[1] is None and s.masks.annotated == [0, 2]
    mask = s.masks[-1]
    assert mask.dtype == np.int32 and mask.shape == (6, 8)
    assert set(np.unique(mask)) == {0, 1} and mask[1:3, 2:5].all()
    truth = s.ground_truth()
    assert len(truth) == 3 and truth[1] is None and np.array_equal(truth[0], s.masks[0])
    assert read_sequence(tmp_path / "root", name="cat").masks.annotated == [0, 2]


def test_davis_layout(tmp_path):
    root = tmp_path / "DAVIS"
    for name in ("bear", "blackswan"):
        _frames(root / "JPEGImages" / "480p" / name, ["00000", "00001"])
        _masks(root / "Annotations" / "480p" / name, ["00000", "00001"])
    s = read_sequence(root / "JPEGImages" / "480p" / "bear")
    assert s.name == "bear" and len(s.video) == 2 and s.masks.annotated == [0, 1]
    assert read_sequence(root, name="blackswan").name == "blackswan"
    assert list_sequences(root) == ["bear", "blackswan"]


def test_list_sequences_our_layout(tmp_path):
    for name in ("zebra", "ant"):
        _frames(tmp_path / name / "frames", ["0"])
        _masks(tmp_path / name / "masks", ["0"])
    (tmp_path / "not-a-sequence").mkdir()
    assert list_sequences(tmp_path) == ["ant", "zebra"]


def test_mask_size_differs_from_frames(tmp_path):
    _frames(tmp_path / "s" / "frames", ["00000", "00001"])
    _masks(tmp_path / "s" / "masks", ["00000"])
    _masks(tmp_path / "s" / "masks", ["00001"], size=(5, 8))
    with pytest.raises(VideoReadError) as error:
        read_sequence(tmp_path / "s")
    message = str(error.value)
    assert "00001.png" in message and "8x5" in message and "8x6" in message


def test_bad_sequences(tmp_path):
    with pytest.raises(VideoReadError, match="nowhere"):
        read_sequence(tmp_path / "nowhere")
    _frames(tmp_path / "s" / "frames", ["00000"])
    with pytest.raises(VideoReadError, match="masks"):
        read_sequence(tmp_path / "s")
    _masks(tmp_path / "s" / "masks", ["00000", "00007"])
    with pytest.raises(VideoReadError, match="00007"):
        read_sequence(tmp_path / "s")
    with pytest.raises(VideoReadError, match="not a sequence"):
        read_sequence(tmp_path / "s" / "masks")
    with pytest.raises(VideoReadError, match="'dog'"):
        read_sequence(tmp_path, name="dog")


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared evaluation data is not available")
def test_shared_data():
    boat = read_sequence(SHARED / "davis2016-train" / "boat")
    assert boat.video.shape == (75, 480, 854, 3) and boat.video.dtype == np.uint8
    assert set(np.unique(boat.masks[0])) <= {0, 1} and boat.masks[0].any()
    hela = read_sequence(SHARED / "ctc-dic-hela-01")
    assert hela.video.shape == (84, 512, 512) and hela.video.frame_names[0] == "t000"
    assert len(np.unique(hela.masks[23])) > 5
    assert "boat" in list_sequences(SHARED / "davis2016-train")
