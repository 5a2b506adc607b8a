"""Label images: palette, binary and id PNGs, TIFF, folders matched by stem."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_vosembed.errors import VideoReadError
from napari_vosembed.io import read_label_folder, read_label_image


def _palette_png(path, ids):
    image = Image.fromarray(ids.astype(np.uint8))
    image.putpalette([255 - (i % 256) for i in range(768)])
    image.save(path)


def test_palette_png_gives_indices_not_colours(tmp_path):
    ids = np.array([[0, 1, 2], [7, 7, 200]])
    _palette_png(tmp_path / "p.png", ids)
    labels = read_label_image(tmp_path / "p.png")
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, ids)


def test_binary_grayscale_png_gives_0_1(tmp_path):
    Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_label_image(tmp_path / "m.png"), [[0, 1], [1, 0]])
    Image.fromarray(np.full((2, 2), 255, np.uint8)).save(tmp_path / "full.png")
    np.testing.assert_array_equal(read_label_image(tmp_path / "full.png"), np.ones((2, 2)))


def test_grayscale_ids_are_kept(tmp_path):
    Image.fromarray(np.array([[0, 3], [255, 9]], np.uint8)).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_label_image(tmp_path / "m.png"), [[0, 3], [255, 9]])
    Image.fromarray(np.array([[0, 300], [40000, 2]], np.uint16)).save(tmp_path / "m16.png")
    np.testing.assert_array_equal(read_label_image(tmp_path / "m16.png"), [[0, 300], [40000, 2]])


def test_uint16_tiff_labels(tmp_path):
    ids = np.array([[0, 1], [65535, 1234]], np.uint16)
    tifffile.imwrite(tmp_path / "m.tif", ids)
    labels = read_label_image(tmp_path / "m.tif")
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, ids)


def test_rgb_colour_png_is_rejected(tmp_path):
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (128, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    with pytest.raises(VideoReadError, match="palette") as error:
        read_label_image(tmp_path / "colour.png")
    assert "colour.png" in str(error.value)
    Image.fromarray(np.dstack([np.array([[0, 255], [0, 0]], np.uint8)] * 3)).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(read_label_image(tmp_path / "gray.png"), [[0, 1], [0, 0]])


def test_bad_label_files(tmp_path):
    with pytest.raises(VideoReadError, match="missing.png"):
        read_label_image(tmp_path / "missing.png")
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "m.jpg")
    with pytest.raises(VideoReadError, match=r"m\.jpg.*\.png"):
        read_label_image(tmp_path / "m.jpg")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(VideoReadError, match="bad.png"):
        read_label_image(tmp_path / "bad.png")
    tifffile.imwrite(tmp_path / "float.tif", np.array([[0.5, 1.0]], np.float32))
    with pytest.raises(VideoReadError, match="float.tif"):
        read_label_image(tmp_path / "float.tif")


def test_label_folder_by_stem(tmp_path):
    for name, value in [("f10", 3), ("f2", 2), ("f1", 1)]:
        _palette_png(tmp_path / f"{name}.png", np.full((3, 4), value))
    masks = read_label_folder(tmp_path)
    assert masks.frame_names == ["f1", "f2", "f10"] and len(masks) == 3
    assert [int(m[0, 0]) for m in masks] == [1, 2, 3]
    aligned = read_label_folder(tmp_path, frame_names=["f0", "f1", "f2", "f3", "f10"])
    assert aligned.annotated == [1, 2, 4]
    assert aligned[0] is None and int(aligned[-1][0, 0]) == 3
    assert aligned.paths[2].name == "f2.png"


def test_label_folder_size_mismatch_names_the_file(tmp_path):
    _palette_png(tmp_path / "a.png", np.zeros((3, 4)))
    _palette_png(tmp_path / "b.png", np.zeros((5, 4)))
    with pytest.raises(VideoReadError) as error:
        read_label_folder(tmp_path)
    assert "b.png" in str(error.value) and "4x5" in str(error.value) and "4x3" in str(error.value)
    with pytest.raises(VideoReadError, match="a.png"):
        read_label_folder(tmp_path, frame_names=["a"], frame_size=(7, 7))
    with pytest.raises(VideoReadError, match="no such folder"):
        read_label_folder(tmp_path / "a.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoReadError, match="no label images"):
        read_label_folder(tmp_path / "empty")
