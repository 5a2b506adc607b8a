"""A write that fails midway (a full disk, a crash) leaves no half-written file and the file it was
to replace byte-identical."""

import errno

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_vosembed.errors import VosEmbedError
from napari_vosembed.io import writers


def full_disk_after(nbytes):
    """A writer that puts `nbytes` of its file on disk, then fails as a full disk does."""
    def write(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"II*\0" + b"\0" * nbytes)
        raise OSError(errno.ENOSPC, "No space left on device")
    return write


def labels(n=3):
    out = np.zeros((n, 16, 20), np.uint8)
    out[:, 4:9, 5:12] = 1
    return out


def test_a_full_disk_while_overwriting_a_tiff_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "labels.tif"
    writers.write_tiff_labels(labels(), path)
    before = path.read_bytes()
    monkeypatch.setattr(tifffile, "imwrite", full_disk_after(100))
    with pytest.raises(VosEmbedError, match=r"labels\.tif: could not be written \(No space left on device\); "
                                            "the existing file is unchanged"):
        writers.write_tiff_labels(labels() * 2, path, overwrite=True)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["labels.tif"]  # no partial file left


def test_a_png_that_fails_midway_leaves_the_frames_before_it_and_the_old_frame(tmp_path, monkeypatch):
    out = tmp_path / "masks"
    writers.write_png_labels(labels(), out)
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    save, calls = Image.Image.save, []

    def failing(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 2:
            full_disk_after(10)(fp)
        return save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing)
    with pytest.raises(VosEmbedError, match=r"00001\.png: could not be written"):
        writers.write_png_labels(labels() * 2, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert out.joinpath("00000.png").read_bytes() != old["00000.png"]  # written before the failure
    assert out.joinpath("00001.png").read_bytes() == old["00001.png"]
    assert out.joinpath("00002.png").read_bytes() == old["00002.png"]


def test_a_cell_tracking_result_is_complete_only_with_its_track_file(tmp_path, monkeypatch):
    monkeypatch.setattr(tifffile, "imwrite", full_disk_after(10))
    with pytest.raises(VosEmbedError, match="nothing was written"):
        writers.write_ctc(labels(), tmp_path / "ctc")
    assert list((tmp_path / "ctc").iterdir()) == []
