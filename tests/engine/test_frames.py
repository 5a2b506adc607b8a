"""Per-frame arrays whose resident memory stays bounded, and the volumes runs write labels into."""

import numpy as np
import pytest
import zarr

from napari_vosembed.engine import frames
from napari_vosembed.engine.frames import FrameArray, label_volume
from napari_vosembed.errors import VosEmbedError


def resident_mib(path) -> float:
    """Resident MiB of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and ":" in head[3]:
                inside = len(head) > 5 and head[5] == str(path)
            elif inside and head[0] == "Rss:":
                total += int(head[1])
    return total / 1024


def test_small_scratch_arrays_stay_in_memory_and_large_ones_go_to_an_unlinked_file(tmp_path, monkeypatch):
    small = FrameArray.scratch((4, 10, 3), np.float16, tmp_path)
    assert not small.mapped and small.shape == (4, 10, 3) and small.dtype == np.float16
    monkeypatch.setattr(frames, "IN_MEMORY_BYTES", 1000)
    large = FrameArray.scratch((20, 100, 8), np.float16, tmp_path / "scratch")
    assert large.mapped and list((tmp_path / "scratch").iterdir()) == []  # nothing left behind
    values = np.random.default_rng(0).standard_normal((20, 100, 8)).astype(np.float16)
    for t in range(20):
        large[t] = values[t]
    large.release()
    assert np.array_equal(large[:], values) and np.array_equal(large[3, [1, 5]], values[3, [1, 5]])


def test_a_mapped_array_read_and_written_front_to_back_holds_a_bounded_part_resident(tmp_path, monkeypatch):
    monkeypatch.setattr(frames, "RELEASE_BYTES", 4 * 2**20)
    path = tmp_path / "levels.npy"
    array = FrameArray(np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(64, 512, 512)))
    frame = np.ones((512, 512), np.float32)  # 1 MiB
    peak = 0.0
    for t in range(64):
        array[t] = frame * t
        peak = max(peak, resident_mib(path))
    for t in range(64):
        assert array[t, 7, 9] == t  # a part of a frame counts as the whole frame
        peak = max(peak, resident_mib(path))
    assert peak <= 5  # without releasing: all 64 MiB
    array.release()
    assert resident_mib(path) == 0 and np.load(path, mmap_mode="r")[63, 0, 0] == 63


def test_label_volumes_are_new_arrays_or_checked_outputs(tmp_path):
    assert label_volume(None, 3, (4, 5), 255).dtype == np.uint8
    assert label_volume(None, 3, (4, 5), 300).dtype == np.int32
    out = zarr.create_array(str(tmp_path / "l.zarr"), shape=(3, 4, 5), chunks=(1, 4, 5), dtype="uint16")
    assert label_volume(out, 3, (4, 5), 65535) is out
    with pytest.raises(VosEmbedError, match=r"shape \(3, 4, 5\).*need \(3, 4, 6\)"):
        label_volume(out, 3, (4, 6), 1)
    with pytest.raises(VosEmbedError, match="dtype uint16 cannot hold label 70000"):
        label_volume(out, 3, (4, 5), 70_000)
    with pytest.raises(VosEmbedError, match="dtype float32"):
        label_volume(np.zeros((3, 4, 5), np.float32), 3, (4, 5), 1)
