"""Zarr arrays and OME-Zarr images, read frame by frame, with a channel / z plane chosen."""

import tracemalloc

import numpy as np
import pytest
import zarr

from napari_vosembed.errors import VideoReadError
from napari_vosembed.io import open_video


def planes(t, c, z, y=24, x=32):
    """Pixel values that say which frame, channel and plane they come from: 100 t + 10 c + z."""
    grid = np.indices((t, c, z)).astype(np.uint16)
    values = 100 * grid[0] + 10 * grid[1] + grid[2]
    return np.broadcast_to(values[..., None, None], (t, c, z, y, x)).copy()


def test_a_long_stack_opens_and_reads_one_frame_without_loading_the_rest(tmp_path):
    store = tmp_path / "long.zarr"
    array = zarr.create_array(str(store), shape=(2000, 256, 256), chunks=(1, 256, 256), dtype="uint16", fill_value=3)
    array[1999] = 7
    tracemalloc.start()
    video = open_video(store)
    last = video[1999]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert video.shape == (2000, 256, 256) and video.dtype == np.uint16 and video.frame_names[-1] == "01999"
    assert (last == 7).all() and (video[5] == 3).all()
    assert peak < 8 << 20  # the whole stack is 250 MiB


@pytest.fixture
def tczyx(tmp_path):
    store = tmp_path / "cells.zarr"
    zarr.create_array(str(store), shape=(6, 2, 3, 24, 32), chunks=(1, 1, 1, 24, 32), dtype="uint16",
                      dimension_names=["t", "c", "z", "y", "x"])[:] = planes(6, 2, 3)
    return store


def test_a_channel_and_a_plane_are_chosen_by_name(tczyx):
    video = open_video(tczyx, channel=1, z=2)
    assert video.shape == (6, 24, 32)
    assert [int(video[t][0, 0]) for t in range(6)] == [100 * t + 12 for t in range(6)]


@pytest.mark.parametrize("kwargs, match", [
    ({}, r"the image has 2 channels \(axes tczyx, shape \(6, 2, 3, 24, 32\)\); choose one: "
         r"open_video\(path, channel=K\) or `--channel K`"),
    ({"channel": 0}, "the image has 3 z planes"),
    ({"channel": 2, "z": 0}, "channel 2 does not exist; the image has channels 0 to 1"),
    ({"channel": 0, "z": -1}, "z plane -1 does not exist"),
])
def test_a_missing_or_wrong_choice_is_refused_by_name(tczyx, kwargs, match):
    with pytest.raises(VideoReadError, match=match):
        open_video(tczyx, **kwargs)


def test_axes_without_names_follow_the_ome_order_and_rgb_is_interleaved(tmp_path):
    zarr.create_array(str(tmp_path / "tcyx.zarr"), shape=(4, 2, 24, 32), dtype="uint8")[:] = planes(4, 2, 1)[:, :, 0]
    video = open_video(tmp_path / "tcyx.zarr", channel=1)
    assert video.shape == (4, 24, 32) and int(video[3][0, 0]) == 310 % 256  # 310 wraps in uint8
    rgb = np.random.default_rng(0).integers(0, 256, (3, 24, 32, 3), dtype=np.uint8)
    zarr.create_array(str(tmp_path / "rgb.zarr"), shape=rgb.shape, dtype="uint8")[:] = rgb
    video = open_video(tmp_path / "rgb.zarr")
    assert video.shape == (3, 24, 32, 3)
    np.testing.assert_array_equal(video[2], rgb[2])


def ome_axes(names):
    kinds = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    return [{"name": n, "type": kinds[n]} for n in names]


def test_an_ome_zarr_image_opens_at_full_resolution(tmp_path):
    store = tmp_path / "image.ome.zarr"
    group = zarr.open_group(str(store), mode="w", zarr_format=2)
    group.attrs["multiscales"] = [{"version": "0.4", "axes": ome_axes("tczyx"),
                                   "datasets": [{"path": "0"}, {"path": "1"}]}]
    group.create_array("0", shape=(5, 1, 1, 24, 32), dtype="uint16")[:] = planes(5, 1, 1)
    group.create_array("1", shape=(5, 1, 1, 12, 16), dtype="uint16")
    video = open_video(store)
    assert video.shape == (5, 24, 32) and int(video[4][3, 3]) == 400


def test_an_ome_zarr_0_5_image_in_zarr_v3(tmp_path):
    store = tmp_path / "image.ome.zarr"
    group = zarr.open_group(str(store), mode="w", zarr_format=3)
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": ome_axes("tcyx"), "datasets": [{"path": "s0"}]}]}
    group.create_array("s0", shape=(3, 2, 24, 32), dtype="uint16")[:] = planes(3, 2, 1)[:, :, 0]
    assert int(open_video(store, channel=1)[2][0, 0]) == 210


def test_a_group_of_several_arrays_without_ome_metadata_is_refused(tmp_path):
    group = zarr.open_group(str(tmp_path / "two.zarr"), mode="w")
    group.create_array("raw", shape=(2, 8, 8), dtype="uint8")
    group.create_array("labels", shape=(2, 8, 8), dtype="uint8")
    with pytest.raises(VideoReadError, match=r"a Zarr group with 2 arrays \(labels, raw\) and no OME metadata"):
        open_video(tmp_path / "two.zarr")
    assert open_video(tmp_path / "two.zarr" / "raw").shape == (2, 8, 8)


def test_a_channel_is_chosen_only_in_tiff_and_zarr_stacks(tmp_path):
    (tmp_path / "frames").mkdir()
    with pytest.raises(VideoReadError, match="a channel or z plane is chosen only in TIFF and Zarr stacks"):
        open_video(tmp_path / "frames", channel=0)


def test_a_damaged_zarr_store_is_refused(tmp_path):
    store = tmp_path / "broken.zarr"
    zarr.create_array(str(store), shape=(2, 8, 8), dtype="uint8")
    (store / "zarr.json").write_text("{ not json")
    with pytest.raises(VideoReadError, match="not a readable Zarr store"):
        open_video(store)


def test_ome_metadata_that_make_no_sense_are_refused(tmp_path):
    group = zarr.open_group(str(tmp_path / "odd.ome.zarr"), mode="w")
    group.attrs["ome"] = {"multiscales": [{"axes": [{"type": "time"}], "datasets": []}]}
    with pytest.raises(VideoReadError, match="the OME-Zarr metadata or full resolution cannot be read"):
        open_video(tmp_path / "odd.ome.zarr")
