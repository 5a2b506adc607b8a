"""Writers: indexed PNGs with the DAVIS palette, multi-page TIFF, Cell Tracking Challenge."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_vosembed.errors import VosEmbedError
from napari_vosembed.io import (
    davis_palette,
    open_video,
    read_label_folder,
    read_label_image,
    write_ctc,
    write_png_labels,
    write_tiff_labels,
)


def test_davis_palette():
    palette = davis_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert palette[:9].tolist() == [
        [0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128],
        [128, 0, 128], [0, 128, 128], [128, 128, 128], [64, 0, 0],
    ]
    assert len({tuple(c) for c in palette}) == 256


def test_png_labels_round_trip(tmp_path):
    labels = np.random.default_rng(0).integers(0, 256, (3, 5, 7))
    names = ["a", "b", "c"]
    paths = write_png_labels(labels, tmp_path / "out", names)
    assert [p.name for p in paths] == ["a.png", "b.png", "c.png"]
    with Image.open(paths[1]) as image:
        assert image.mode == "P"
        assert image.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
    for t, path in enumerate(paths):
        np.testing.assert_array_equal(read_label_image(path), labels[t])
    masks = read_label_folder(tmp_path / "out", frame_names=names)
    np.testing.assert_array_equal(masks[2], labels[2])


def test_png_labels_ids_above_255(tmp_path):
    with pytest.raises(VosEmbedError, match="TIFF"):
        write_png_labels(np.full((1, 2, 2), 256), tmp_path / "out", ["a"])
    assert not (tmp_path / "out").exists()


def test_png_labels_do_not_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    write_png_labels(np.ones((1, 2, 2), np.uint8), out, ["a"])
    with pytest.raises(VosEmbedError, match="overwrite=True") as error:
        write_png_labels(np.full((1, 2, 2), 2), out, ["a"])
    assert str(out) in str(error.value)
    np.testing.assert_array_equal(read_label_image(out / "a.png"), np.ones((2, 2)))
    write_png_labels(np.full((1, 2, 2), 2), out, ["a"], overwrite=True)
    np.testing.assert_array_equal(read_label_image(out / "a.png"), np.full((2, 2), 2))


def test_png_labels_bad_input(tmp_path):
    with pytest.raises(VosEmbedError, match="frame names"):
        write_png_labels(np.zeros((2, 2, 2), np.uint8), tmp_path / "o", ["a"])
    with pytest.raises(VosEmbedError, match="non-negative"):
        write_png_labels(np.full((1, 2, 2), -1), tmp_path / "o", ["a"])
    with pytest.raises(VosEmbedError, match=r"\(T, H, W\)"):
        write_png_labels(np.zeros((2, 2), np.uint8), tmp_path / "o", ["a"])


def test_tiff_labels(tmp_path):
    small = np.array([[[0, 1], [2, 60000]]])
    path = write_tiff_labels(small, tmp_path / "small.tif")
    data = tifffile.imread(path)
    assert data.dtype == np.uint16
    np.testing.assert_array_equal(data, small)
    big = np.zeros((2, 2, 2), np.int64)
    big[1, 1, 1] = 70000
    data = tifffile.imread(write_tiff_labels(big, tmp_path / "big.tif"))
    assert data.dtype == np.uint32 and data.shape == (2, 2, 2) and data[1, 1, 1] == 70000
    assert open_video(tmp_path / "big.tif").shape == (2, 2, 2)
    with pytest.raises(VosEmbedError, match="small.tif"):
        write_tiff_labels(small, tmp_path / "small.tif")
    write_tiff_labels(small * 0, tmp_path / "small.tif", overwrite=True)
    assert tifffile.imread(tmp_path / "small.tif").max() == 0


def test_ctc_splits_discontinuous_tracks(tmp_path):
    # id 1: frames 0-1 and 3-4 (gap at 2); id 2: every frame; id 5: frames 1, 3 and 5.
    labels = np.zeros((6, 3, 3), np.uint16)
    for t in (0, 1, 3, 4):
        labels[t, 0, 0] = 1
    labels[:, 1, 1] = 2
    for t in (1, 3, 5):
        labels[t, 2, 2] = 5
    tracks = write_ctc(labels, tmp_path / "RES")
    expected = ["1 0 1 0", "2 0 5 0", "5 1 1 0", "6 3 4 1", "7 3 3 5", "8 5 5 7"]
    assert (tmp_path / "RES" / "res_track.txt").read_text().splitlines() == expected
    assert [" ".join(map(str, track)) for track in tracks] == expected
    files = sorted(p.name for p in (tmp_path / "RES").glob("mask*.tif"))
    assert files == [f"mask{t:03d}.tif" for t in range(6)]
    masks = np.stack([tifffile.imread(tmp_path / "RES" / name) for name in files])
    assert masks.dtype == np.uint16
    assert masks[:, 0, 0].tolist() == [1, 1, 0, 6, 6, 0]
    assert masks[:, 1, 1].tolist() == [2] * 6
    assert masks[:, 2, 2].tolist() == [0, 5, 0, 7, 0, 8]
    with pytest.raises(VosEmbedError, match="RES"):
        write_ctc(labels, tmp_path / "RES")


def test_ctc_four_digits_beyond_1000_frames(tmp_path):
    labels = np.zeros((1001, 2, 2), np.uint8)
    labels[:, 0, 0] = 3
    write_ctc(labels, tmp_path / "RES")
    assert (tmp_path / "RES" / "mask0000.tif").is_file() and (tmp_path / "RES" / "mask1000.tif").is_file()
    assert (tmp_path / "RES" / "res_track.txt").read_text() == "3 0 1000 0\n"
