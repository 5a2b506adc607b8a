"""The npe2 reader and writers: what they accept, what they decline, and opening a video
without naming the plugin."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_vosembed._napari import layers as L
from napari_vosembed._napari.reader import PREFERRED_PATTERNS, get_reader, prefer_reader
from napari_vosembed.io import read_label_folder, write_png_labels
from napari_vosembed.sample import sample_clip


def write_mp4(path, n=6, size=(48, 64)):
    av = pytest.importorskip("av")
    frames, _ = sample_clip(n, *size)
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = size[1], size[0], "yuv420p"
    for frame in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def write_frames(folder, n=4, size=(24, 32)):
    import cv2

    frames, masks = sample_clip(n, *size)
    folder.mkdir(parents=True)
    for t, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{t:05d}.png"), frame[..., ::-1])
    return frames, masks


def test_reader_declines_what_it_does_not_read(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    davis = tmp_path / "DAVIS"
    write_frames(davis / "JPEGImages" / "480p" / "bear")
    (davis / "Annotations" / "480p" / "bear").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "one.tif", np.zeros((24, 32), np.uint16))  # a single image
    tifffile.imwrite(tmp_path / "czyx.tif", np.zeros((3, 5, 24, 32), np.uint16),
                     metadata={"axes": "CZYX"})  # one time point of each plane: no time-lapse
    (tmp_path / "movie.txt").write_text("not a video")
    for name in ("empty", "notes", "DAVIS", "DAVIS/JPEGImages", "one.tif", "czyx.tif", "movie.txt", "missing"):
        assert get_reader(str(tmp_path / name)) is None, name
    assert get_reader([str(tmp_path / "one.tif"), str(tmp_path / "czyx.tif")]) is None


def test_a_text_file_named_tif_says_why_it_cannot_be_opened(make_napari_viewer, tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("these are notes, not an image")
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match="not a readable TIFF file") as info:
        viewer.open(str(path), plugin="napari-vosembed")
    assert "refused" not in str(info.value) and len(viewer.layers) == 0


def test_reader_accepts_frame_folders_sequences_stacks_and_videos(tmp_path):
    write_frames(tmp_path / "frames_only")
    davis = tmp_path / "DAVIS"
    write_frames(davis / "JPEGImages" / "480p" / "bear")
    (davis / "Annotations" / "480p" / "bear").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 24, 32), np.uint16), metadata={"axes": "TYX"})
    write_mp4(tmp_path / "clip.mp4")
    for name in ("frames_only", "DAVIS/JPEGImages/480p/bear", "stack.tif", "clip.mp4"):
        assert callable(get_reader(str(tmp_path / name))), name
    assert callable(get_reader([str(tmp_path / "clip.mp4")]))


def test_frame_folder_opens_lazily_and_remembers_its_source(make_napari_viewer, tmp_path):
    frames, _ = write_frames(tmp_path / "frames")
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(tmp_path / "frames"), plugin="napari-vosembed")
    assert image.rgb and image.data.shape == frames.shape and not isinstance(image.data, np.ndarray)
    np.testing.assert_array_equal(np.asarray(image.data[2]), frames[2])
    assert image.metadata[L.SOURCE_KEY] == str(tmp_path / "frames")


def test_davis_sequence_opens_with_its_ground_truth(make_napari_viewer, tmp_path):
    davis = tmp_path / "DAVIS"
    _, masks = write_frames(davis / "JPEGImages" / "480p" / "bear")
    write_png_labels(masks, davis / "Annotations" / "480p" / "bear")
    viewer = make_napari_viewer()
    image, truth = viewer.open(str(davis / "JPEGImages" / "480p" / "bear"), plugin="napari-vosembed")
    assert image.name == "bear" and truth.name == "bear ground truth"
    np.testing.assert_array_equal(truth.data, masks)
    assert np.allclose(truth.colormap.map(1), L.label_color(1))  # the DAVIS palette


def test_16bit_stack_gets_robust_contrast_limits(make_napari_viewer, tmp_path):
    rng = np.random.default_rng(0)
    stack = rng.integers(2000, 3000, (5, 24, 32)).astype(np.uint16)
    stack[:, 0, 0] = 65000  # a hot pixel must not set the display range
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, stack, metadata={"axes": "TYX"}, ome=True)
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(path), plugin="napari-vosembed")
    assert image.name == "cells" and image.data.dtype == np.uint16 and not image.rgb
    low, high = image.contrast_limits
    assert 2000 <= low < high <= 3000


def test_napari_builtins_claim_the_video_extensions_too():
    """Why `prefer_reader` exists: both readers match *.mp4 etc. by name."""
    from npe2 import PluginManager

    pm = PluginManager.instance()
    for pattern in PREFERRED_PATTERNS:
        plugins = {r.plugin_name for r in pm.iter_compatible_readers([f"x{pattern[1:]}"])}
        assert {"napari", "napari-vosembed"} <= plugins, pattern


def test_opening_an_mp4_without_naming_the_plugin(make_napari_viewer, tmp_path):
    from napari.errors import MultipleReaderError
    from napari.settings import get_settings

    path = write_mp4(tmp_path / "clip.mp4")
    viewer = make_napari_viewer()
    # viewer.open's default (plugin="napari") reads with napari's builtins: works, eagerly
    (eager,) = viewer.open(str(path))
    assert eager.data.shape[:3] == (6, 48, 64)
    # asking napari to choose: two readers claim *.mp4, and without a preference it cannot
    get_settings().plugins.extension2reader = {}
    with pytest.raises(MultipleReaderError):
        viewer.open(str(path), plugin=None)
    # our plugin's activation sets the preference (as the GUI's "remember this choice" would)
    from napari_vosembed._napari import activate

    activate()
    assert get_settings().plugins.extension2reader["*.mp4"] == "napari-vosembed"
    (lazy,) = viewer.open(str(path), plugin=None)
    assert lazy.data.shape[:3] == (6, 48, 64) and not isinstance(lazy.data, np.ndarray)
    assert lazy.metadata[L.SOURCE_KEY] == str(path)


def test_prefer_reader_never_overrides_the_users_choice():
    from napari.settings import get_settings

    get_settings().plugins.extension2reader = {"*.mp4": "napari"}
    added = prefer_reader()
    assert "*.mp4" not in added and "*.avi" in added
    assert get_settings().plugins.extension2reader["*.mp4"] == "napari"
    assert prefer_reader() == {}


@pytest.fixture
def labels_layer(make_napari_viewer):
    viewer = make_napari_viewer()
    data = np.zeros((3, 20, 30), np.uint8)
    data[0, 2:8, 3:9] = 1
    data[2, 10:15, 10:20] = 2  # object 2 only on frame 2
    data[0, 12:14, 20:25] = 2
    return viewer.add_labels(data, name="seg")


def test_writers_tiff_png_and_cell_tracking_challenge(labels_layer, tmp_path):
    data = np.asarray(labels_layer.data)
    (tif,) = labels_layer.save(str(tmp_path / "seg.tif"), plugin="napari-vosembed")
    np.testing.assert_array_equal(tifffile.imread(tif), data)

    pngs = labels_layer.save(str(tmp_path / "pngs"), plugin="napari-vosembed.write_labels_png")
    assert [p.rsplit("/", 1)[-1] for p in pngs] == ["00000.png", "00001.png", "00002.png"]
    masks = read_label_folder(tmp_path / "pngs", ["00000", "00001", "00002"])
    np.testing.assert_array_equal(np.stack([masks[t] for t in range(3)]), data)

    written = labels_layer.save(str(tmp_path / "01_RES"), plugin="napari-vosembed.write_labels_ctc")
    assert str(tmp_path / "01_RES" / "res_track.txt") in written
    tracks = (tmp_path / "01_RES" / "res_track.txt").read_text().split("\n")
    # object 2 leaves after frame 0 and comes back on frame 2: two tracks, the second its child
    assert tracks[:3] == ["1 0 0 0", "2 0 0 0", "3 2 2 2"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "01_RES" / "mask002.tif")[10:15, 10:20], 3)


def test_a_zarr_time_lapse_opens_one_lazy_layer_per_channel_that_reopens_its_channel(make_napari_viewer, tmp_path):
    import zarr

    store = tmp_path / "cells.ome.zarr"
    group = zarr.open_group(str(store), mode="w")
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": [{"name": a} for a in "tcyx"],
                                                              "datasets": [{"path": "0"}]}]}
    data = np.stack([np.full((4, 24, 32), 10 * c, np.uint16) + np.arange(4, dtype=np.uint16)[:, None, None]
                     for c in range(2)], 1)
    group.create_array("0", shape=data.shape, dtype="uint16")[:] = data
    assert callable(get_reader(str(store)))
    viewer = make_napari_viewer()
    layers = viewer.open(str(store), plugin="napari-vosembed")
    assert [layer.name for layer in layers] == ["cells c0", "cells c1"]
    second = layers[1]
    assert not isinstance(second.data, np.ndarray) and int(np.asarray(second.data[3])[0, 0]) == 13
    assert second.metadata[L.PLANE_KEY] == {"channel": 1}
    video = L.image_video(second)
    assert video.source == store and video.shape == (4, 24, 32) and int(video[2][0, 0]) == 12


def test_a_two_channel_tiff_time_lapse_opens_one_layer_per_channel(make_napari_viewer, tmp_path):
    data = np.stack([np.full((4, 24, 32), 10 * c, np.uint16) + np.arange(4, dtype=np.uint16)[:, None, None]
                     for c in range(2)], 1)
    tifffile.imwrite(tmp_path / "cells.ome.tif", data, metadata={"axes": "TCYX"})
    assert callable(get_reader(str(tmp_path / "cells.ome.tif")))
    viewer = make_napari_viewer()
    layers = viewer.open(str(tmp_path / "cells.ome.tif"), plugin="napari-vosembed")
    assert [layer.name for layer in layers] == ["cells c0", "cells c1"]
    assert int(np.asarray(layers[1].data[3])[0, 0]) == 13 and layers[1].metadata[L.PLANE_KEY] == {"channel": 1}
    assert int(L.image_video(layers[0])[2][0, 0]) == 2


@pytest.mark.parametrize("kind", ["zarr", "tiff"])
def test_a_time_lapse_with_channels_and_z_planes_opens_one_layer_per_plane(make_napari_viewer, tmp_path, kind):
    """T x C x Z x Y x X: a lazy layer per channel and z plane, each re-opening its own plane."""
    import zarr

    data = np.zeros((3, 2, 4, 16, 20), np.uint16)
    for c in range(2):
        for z in range(4):
            data[:, c, z] = 100 * c + 10 * z + np.arange(3, dtype=np.uint16)[:, None, None]
    if kind == "zarr":
        path = tmp_path / "stack.zarr"
        zarr.create_array(str(path), shape=data.shape, dtype="uint16", dimension_names=list("tczyx"))[:] = data
    else:
        path = tmp_path / "stack.ome.tif"
        tifffile.imwrite(path, data, metadata={"axes": "TCZYX"})
    layers = make_napari_viewer().open(str(path), plugin="napari-vosembed")
    assert [layer.name for layer in layers] == [f"stack c{c} z{z}" for c in range(2) for z in range(4)]
    c1z2 = layers[6]
    assert c1z2.metadata[L.PLANE_KEY] == {"channel": 1, "z": 2} and int(np.asarray(c1z2.data[2])[0, 0]) == 122
    assert int(L.image_video(c1z2)[1][0, 0]) == 121
