"""A write that fails midway (a full disk, a crash) leaves no half-written file and the file it was
to replace byte-identical."""

import errno

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_vosembed.errors import ResourceError, VosEmbedError
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


def test_a_full_disk_refuses_new_embeddings_before_any_work_and_keeps_the_cache(tmp_path, monkeypatch):
    """The disk space of new embeddings is reserved up front: a full disk is reported then, not as a
    crash (SIGBUS) when a memory-mapped frame is stored."""
    import os

    from napari_vosembed.engine import cache
    from napari_vosembed.engine.cache import EmbeddingSettings, embed_video
    from napari_vosembed.progress import drive

    monkeypatch.setattr(cache, "embeddings_root", lambda: tmp_path)
    settings = EmbeddingSettings(backbone="tiny", scale=1.0, levels=(4, 8), saliency_stride=4)
    rng = np.random.default_rng(3)
    old, new = (rng.integers(0, 256, (n, 32, 48, 3), dtype=np.uint8) for n in (3, 5))
    drive(embed_video(old, settings, device="cpu"), quiet=True)
    cached = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    with pytest.raises(ResourceError, match=r"the embeddings of this video cannot be stored \(No space left on "
                                            r"device\); they need 0 MiB there\. Free space, or set "
                                            "VOSEMBED_EMBEDDINGS_DIR"):
        drive(embed_video(new, settings, device="cpu"), quiet=True)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == cached  # no partial entry
    assert drive(embed_video(old, settings, device="cpu"), quiet=True).computed == 0  # still whole


def test_a_training_that_fails_while_saving_keeps_the_head_it_was_to_replace(tmp_path, monkeypatch, capsys):
    import torch

    from napari_vosembed.cli import main
    from napari_vosembed.engine.fetch import default_model_path
    from napari_vosembed.sample import write_sample_sequence

    if not default_model_path().exists():
        pytest.skip("the ISNet backbone is not cached (run `vosembed fetch-models`)")
    root = tmp_path / "data"
    root.mkdir()
    sample = write_sample_sequence(tmp_path / "sample")
    for name in ("a-held-out", "b-train"):
        (root / name).symlink_to(sample, target_is_directory=True)
    out = tmp_path / "heads" / "pml.pt"
    train = ["--quiet", "train", "pml", "--data", str(root), "--steps", "2", "--device", "cpu", "--out", str(out)]
    assert main(train) == 0
    before = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    monkeypatch.setattr(torch, "save", lambda obj, path, *a, **k: full_disk_after(1000)(path))
    assert main(train) == 2
    assert "pml.pt: could not be written (No space left on device); the existing file is unchanged" in \
        capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == before  # no partial file either
