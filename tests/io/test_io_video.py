"""Readers: frame folders, video files, TIFF stacks, single images and arrays behind one Video API."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_vosembed.errors import VideoReadError
from napari_vosembed.io import as_video, container, mirrored, normalize_frame, open_video, video

ROUND_TRIPS = [
    ("pyav", "libx264", "clip.mp4"),
    ("pyav", "libx264", "clip.mkv"),
    ("pyav", "libvpx-vp9", "clip.webm"),
    ("pyav", "mjpeg", "clip.avi"),
    ("pyav", "mpeg4", "clip.mov"),
    ("opencv", "mp4v", "clip.mp4"),
    ("opencv", "MJPG", "clip.avi"),
]


def _save_gray_pngs(folder, names, height=6, width=5):
    folder.mkdir(parents=True, exist_ok=True)
    for value, name in enumerate(names):
        Image.fromarray(np.full((height, width), value % 256, np.uint8)).save(folder / name)


# --- frame folders -----------------------------------------------------------------------------


def test_folder_natural_sort_and_api(tmp_path):
    names = ["frame10.png", "frame2.png", "frame1.png", "Frame3.png"]
    _save_gray_pngs(tmp_path / "f", names)
    (tmp_path / "f" / "notes.txt").write_text("not a frame")
    (tmp_path / "f" / ".hidden.png").write_bytes(b"")
    v = open_video(tmp_path / "f")
    assert v.frame_names == ["frame1", "frame2", "Frame3", "frame10"]
    assert [int(f[0, 0]) for f in v] == [2, 1, 3, 0]
    assert len(v) == 4 and v.shape == (4, 6, 5) and v.dtype == np.uint8 and v.ndim == 3
    assert v.source == tmp_path / "f"
    assert v[-1][0, 0] == 0 and v[0].shape == (6, 5)
    assert v[1:3].shape == (2, 6, 5) and list(v[::-2][:, 0, 0]) == [0, 1]
    assert list(v[[3, 0]][:, 0, 0]) == [0, 2]
    assert v[2, :2, 0].tolist() == [3, 3]
    assert v[:, 0, 0].tolist() == [2, 1, 3, 0]
    np.testing.assert_array_equal(v.to_array(), np.stack(list(v)))
    with pytest.raises(IndexError):
        v[4]
    with pytest.raises(IndexError):
        v[-5]


def test_rgb_jpeg_is_rgb_and_gray_jpeg_stays_2d(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 250
    Image.fromarray(red).save(folder / "a.jpg", quality=95)
    rgb = open_video(folder)
    assert rgb.shape == (1, 16, 16, 3)
    assert rgb[0][..., 0].min() > 200 and rgb[0][..., 2].max() < 50
    Image.fromarray(np.full((16, 16), 77, np.uint8)).save(tmp_path / "gray.jpg")
    gray = open_video(tmp_path / "gray.jpg")
    assert gray.shape == (1, 16, 16) and abs(int(gray[0].mean()) - 77) <= 1
    assert gray.frame_names == ["gray"]


def test_rgb_png_with_equal_channels_stays_rgb(tmp_path):
    Image.fromarray(np.full((4, 4, 3), 9, np.uint8)).save(tmp_path / "x.png")
    assert open_video(tmp_path / "x.png").shape == (1, 4, 4, 3)


def test_folder_is_lazy(tmp_path, monkeypatch):
    folder = tmp_path / "long"
    _save_gray_pngs(folder, [f"{t}.png" for t in range(1500)], height=4, width=4)
    decoded = []
    real = video.read_image
    monkeypatch.setattr(video, "read_image", lambda path: decoded.append(path.name) or real(path))
    v = open_video(folder)
    assert len(v) == 1500 and len(decoded) == 1
    assert v[1234][0, 0] == 1234 % 256 and v[-1][0, 0] == 1499 % 256
    assert decoded == ["0.png", "1234.png", "1499.png"]


def test_sequence_folder_opens_its_frames(tmp_path):
    _save_gray_pngs(tmp_path / "seq" / "frames", ["00000.png", "00001.png"])
    assert open_video(tmp_path / "seq").frame_names == ["00000", "00001"]


def test_16bit_png_folder_keeps_uint16(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    for t in range(3):
        Image.fromarray(np.full((5, 5), 40000 + t, np.uint16)).save(folder / f"{t}.png")
    v = open_video(folder)
    assert v.dtype == np.uint16 and v.shape == (3, 5, 5) and int(v[2][0, 0]) == 40002


# --- video files -------------------------------------------------------------------------------


@pytest.mark.parametrize(("writer", "codec", "name"), ROUND_TRIPS)
def test_video_file_round_trip(write_video, expected_frame, writer, codec, name):
    path = write_video(name, 30, codec=codec, writer=writer)
    v = open_video(path)
    assert len(v) == 30 and v.shape == (30, 64, 96, 3) and v.dtype == np.uint8
    assert v.frame_names[:2] == ["00000", "00001"] and v.frame_names[-1] == "00029"
    frames = v.to_array()
    for t, frame in enumerate(frames):
        truth = expected_frame(t)
        assert abs(frame[32:].mean() - truth[32:].mean()) < 5, t
        assert np.abs(frame.astype(int) - truth).mean() < 10, t
    for t in (29, 3, 17, 0, 28, 5):
        np.testing.assert_array_equal(v[t], frames[t])
    np.testing.assert_array_equal(v[-1], frames[29])
    v.close()


def test_video_random_access_is_lazy(write_video, expected_frame, monkeypatch):
    path = write_video("long.mp4", 300, gop=25)
    decoded = []
    real = container._decode_packet
    monkeypatch.setattr(container, "_decode_packet", lambda packet: decoded.append(1) or real(packet))
    with open_video(path) as v:
        assert len(v) == 300
        decoded.clear()
        frame = v[260]
        assert abs(frame[32:].mean() - expected_frame(260)[32:].mean()) < 5
        assert len(decoded) < 60
        decoded.clear()
        following = v[261:271]
        assert len(decoded) < 25
        assert all(abs(f[32:].mean() - expected_frame(261 + i)[32:].mean()) < 5 for i, f in enumerate(following))
        decoded.clear()
        np.testing.assert_array_equal(v[270], following[-1])
        assert decoded == []


def test_video_sequential_iteration_decodes_each_packet_once(write_video, monkeypatch):
    path = write_video("clip.mp4", 60, gop=10)
    v = open_video(path)
    decoded = []
    real = container._decode_packet
    monkeypatch.setattr(container, "_decode_packet", lambda packet: decoded.append(1) or real(packet))
    assert sum(1 for _ in v) == 60
    assert len(decoded) <= 61 + 3


# --- TIFF stacks -------------------------------------------------------------------------------


def test_uint16_tiff_stack_range_and_normalization(tmp_path):
    rng = np.random.default_rng(0)
    stack = rng.integers(1000, 5000, size=(20, 12, 10)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", stack)
    v = open_video(tmp_path / "s.tif")
    assert v.shape == (20, 12, 10) and v.dtype == np.uint16
    np.testing.assert_array_equal(v[7], stack[7])
    low, high = v.intensity_range()
    sample = stack[np.unique(np.linspace(0, 19, 16).round().astype(int))]
    assert (low, high) == pytest.approx(tuple(np.percentile(sample, (0.5, 99.5))))
    out = normalize_frame(v[7], low, high)
    assert out.dtype == np.float32 and out.shape == (12, 10, 3)
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    inside = (stack[7] > low) & (stack[7] < high)
    np.testing.assert_allclose(out[..., 1][inside], ((stack[7][inside] - low) / (high - low)), rtol=1e-5)


def test_normalize_frame_rgb_and_clipping():
    frame = np.array([[[0, 128, 255]]], np.uint8)
    np.testing.assert_allclose(normalize_frame(frame, 0, 255), [[[0, 128 / 255, 1]]], rtol=1e-6)
    np.testing.assert_allclose(normalize_frame(np.array([[-5.0, 20.0]]), 0, 10)[0, :, 0], [0, 1])
    stretched = np.array([[0, 10, 105, 200, 255]], np.uint8)
    np.testing.assert_allclose(normalize_frame(stretched, 10, 200)[0, :, 1], [0, 0, 0.5, 1, 1], atol=1e-6)
    with pytest.raises(ValueError, match="high > low"):
        normalize_frame(frame, 5, 5)


def test_intensity_range_uint8_rgb_is_full_range_and_samples_16_frames():
    reads = []

    class Counting:
        shape, dtype = (100, 4, 4), np.dtype(np.uint8)

        def __getitem__(self, t):
            reads.append(t)
            return np.full((4, 4), t, np.uint8)

    assert as_video(np.zeros((3, 4, 4, 3), np.uint8)).intensity_range() == (0.0, 255.0)
    low, high = as_video(Counting()).intensity_range()
    assert len(set(reads)) == 16 and min(reads) == 0 and max(reads) == 99
    assert 0 <= low < high <= 99


def test_tiff_layouts(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, (4, 8, 9, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "tyxc.tif", rgb)
    v = open_video(tmp_path / "tyxc.tif")
    assert v.shape == (4, 8, 9, 3)
    np.testing.assert_array_equal(v[2], rgb[2])

    tcyx = np.moveaxis(rgb, -1, 1).astype(np.uint16)
    tifffile.imwrite(tmp_path / "tcyx.ome.tif", tcyx, metadata={"axes": "TCYX"})
    v = open_video(tmp_path / "tcyx.ome.tif")
    assert v.shape == (4, 8, 9, 3) and v.dtype == np.uint16
    np.testing.assert_array_equal(v[3], rgb[3])

    ome = np.arange(5 * 8 * 9, dtype=np.uint16).reshape(5, 1, 1, 8, 9)
    tifffile.imwrite(tmp_path / "tczyx.ome.tif", ome, metadata={"axes": "TCZYX"})
    v = open_video(tmp_path / "tczyx.ome.tif")
    assert v.shape == (5, 8, 9)
    np.testing.assert_array_equal(v[4], ome[4, 0, 0])

    tifffile.imwrite(tmp_path / "imagej.tif", ome[:, 0, 0], imagej=True, metadata={"axes": "TYX"})
    np.testing.assert_array_equal(open_video(tmp_path / "imagej.tif")[1], ome[1, 0, 0])

    floats = np.random.default_rng(2).random((3, 5, 5)).astype(np.float32)
    tifffile.imwrite(tmp_path / "float.tif", floats, photometric="minisblack", compression="zlib")
    v = open_video(tmp_path / "float.tif")
    assert v.dtype == np.float32
    np.testing.assert_array_equal(v[-1], floats[-1])

    big_endian = np.arange(4 * 5 * 5, dtype=">u2").reshape(4, 5, 5)
    tifffile.imwrite(tmp_path / "be.tif", big_endian, byteorder=">", photometric="minisblack")
    v = open_video(tmp_path / "be.tif")
    assert v.dtype == np.uint16 and v[3].dtype == np.uint16
    np.testing.assert_array_equal(v[3], big_endian[3])

    tifffile.imwrite(tmp_path / "single.tif", floats[0])
    assert open_video(tmp_path / "single.tif").shape == (1, 5, 5)

    volume = np.arange(4 * 32 * 32, dtype=np.uint16).reshape(4, 32, 32)
    tifffile.imwrite(tmp_path / "volume.tif", volume, volumetric=True, photometric="minisblack")
    v = open_video(tmp_path / "volume.tif")
    assert v.shape == (4, 32, 32)
    np.testing.assert_array_equal(v[2], volume[2])


@pytest.mark.parametrize(("shape", "axes", "match"), [
    ((3, 2, 8, 9), "TZYX", r"the stack has 2 z planes \(axes TZYX, shape \(3, 2, 8, 9\)\); choose one"),
    ((3, 2, 8, 9), "TCYX", r"the stack has 2 channels \(axes TCYX, shape \(3, 2, 8, 9\)\); choose one"),
    ((3, 8, 9, 2), "TYXS", r"not supported\. Supported: .*T,Y,X"),
])
def test_unsupported_tiff_layouts_and_planes_to_choose(tmp_path, shape, axes, match):
    path = tmp_path / f"{axes}.ome.tif"
    kwargs = {"photometric": "minisblack", "planarconfig": "contig"} if axes.endswith("S") else {}
    tifffile.imwrite(path, np.zeros(shape, np.uint8), metadata={"axes": axes}, **kwargs)
    with pytest.raises(VideoReadError, match=match) as error:
        open_video(path)
    assert path.name in str(error.value)


def planes(t, c, z, y=8, x=9):
    """Pixel values that say which frame, channel and plane they come from: 100 t + 10 c + z."""
    grid = np.indices((t, c, z)).astype(np.uint16)
    return np.broadcast_to((100 * grid[0] + 10 * grid[1] + grid[2])[..., None, None], (t, c, z, y, x)).copy()


@pytest.mark.parametrize("layout", ["ome TCZYX", "imagej TZCYX", "contiguous TCYX"])
def test_a_channel_and_a_z_plane_of_a_tiff_stack(tmp_path, layout):
    path = tmp_path / "cells.tif"
    data = planes(5, 2, 3)
    if layout == "ome TCZYX":
        tifffile.imwrite(path, data, metadata={"axes": "TCZYX"})
        video = open_video(path, channel=1, z=2)
    elif layout == "imagej TZCYX":
        tifffile.imwrite(path, data.transpose(0, 2, 1, 3, 4).copy(), imagej=True, metadata={"axes": "TZCYX"})
        video = open_video(path, channel=1, z=2)
    else:
        data = data[:, :, 2:]
        tifffile.imwrite(path, data[:, :, 0], metadata={"axes": "TCYX"}, contiguous=True)
        video = open_video(path, channel=1)
    assert video.shape == (5, 8, 9)
    assert [int(video[t][0, 0]) for t in range(5)] == [100 * t + 12 for t in range(5)]
    with pytest.raises(VideoReadError, match="channel 2 does not exist; the stack has channels 0 to 1"):
        open_video(path, channel=2, z=0)


def test_an_rgb_stack_is_rgb_unless_a_channel_is_chosen(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (4, 3, 8, 9), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, metadata={"axes": "TCYX"})  # colour planes within each page
    assert open_video(tmp_path / "rgb.tif").shape == (4, 8, 9, 3)
    blue = open_video(tmp_path / "rgb.tif", channel=2)
    assert blue.shape == (4, 8, 9)
    np.testing.assert_array_equal(blue[3], rgb[3, 2])


# --- arrays ------------------------------------------------------------------------------------


def test_as_video_wraps_arrays():
    arr = np.random.default_rng(0).integers(0, 255, (5, 4, 6, 3)).astype(np.uint8)
    v = as_video(arr)
    assert v.shape == (5, 4, 6, 3) and v.source is None and v.frame_names[-1] == "00004"
    np.testing.assert_array_equal(v[-2], arr[-2])
    assert as_video(v) is v
    floats = as_video(np.zeros((2, 3, 3), np.float64))
    assert floats.dtype == np.float32 and floats[0].dtype == np.float32
    with pytest.raises(VideoReadError, match=r"\(T, H, W\)"):
        as_video(np.zeros((4, 4)))
    with pytest.raises(VideoReadError):
        as_video(np.zeros((2, 4, 4, 5)))


def test_as_video_reads_dask_lazily():
    da = pytest.importorskip("dask.array")
    arr = da.from_array(np.arange(4 * 3 * 3, dtype=np.uint16).reshape(4, 3, 3), chunks=(1, 3, 3))
    v = as_video(arr)
    assert v.dtype == np.uint16 and isinstance(v[1], np.ndarray)
    np.testing.assert_array_equal(v[1], np.arange(9, 18).reshape(3, 3))


def test_as_video_opens_paths(tmp_path):
    _save_gray_pngs(tmp_path / "f", ["a.png"])
    assert as_video(str(tmp_path / "f")).frame_names == ["a"]


def test_a_mirrored_video_reads_each_frame_mirrored_and_caches_apart(tmp_path):
    from napari_vosembed.engine.cache import video_fingerprint

    _save_gray_pngs(tmp_path / "f", ["a.png", "b.png"], height=3, width=4)
    frame = np.arange(12, dtype=np.uint8).reshape(3, 4)
    Image.fromarray(frame).save(tmp_path / "f" / "a.png")
    original = open_video(tmp_path / "f")
    flipped = mirrored(original)
    assert flipped.shape == original.shape and flipped.frame_names == ["a", "b"] and flipped.source is None
    np.testing.assert_array_equal(flipped[0], frame[:, ::-1])
    np.testing.assert_array_equal(mirrored(flipped)[0], frame)
    assert video_fingerprint(flipped) != video_fingerprint(original)
    rgb = np.random.default_rng(0).integers(0, 255, (2, 3, 5, 3)).astype(np.uint8)
    np.testing.assert_array_equal(mirrored(rgb)[1], rgb[1, :, ::-1])


# --- bad input ---------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(VideoReadError, match="no such file") as error:
        open_video(tmp_path / "nothing.mp4")
    assert "nothing.mp4" in str(error.value)


def test_folder_without_frames(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(VideoReadError, match="no frames") as error:
        open_video(tmp_path / "empty")
    assert "empty" in str(error.value)


def test_unsupported_extension(tmp_path):
    (tmp_path / "clip.xyz").write_bytes(b"abc")
    with pytest.raises(VideoReadError, match="unsupported") as error:
        open_video(tmp_path / "clip.xyz")
    assert "clip.xyz" in str(error.value) and ".mp4" in str(error.value) and ".png" in str(error.value)


def test_random_bytes_mp4(tmp_path):
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(0).bytes(20000))
    with pytest.raises(VideoReadError) as error:
        open_video(path)
    assert "noise.mp4" in str(error.value)


@pytest.mark.parametrize("faststart", [False, True])
def test_mp4_cut_in_half(tmp_path, write_video, faststart):
    av = pytest.importorskip("av")
    if faststart:
        path = tmp_path / "fast.mp4"
        out = av.open(str(path), "w", options={"movflags": "faststart"})
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for t in range(30):
            noise = np.random.default_rng(t).integers(0, 255, (64, 96, 3)).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(noise, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        out.close()
    else:
        path = write_video("full.mp4", 30)
    data = path.read_bytes()
    half = tmp_path / "half.mp4"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoReadError) as error:
        open_video(half)
    assert "half.mp4" in str(error.value)


def test_avi_cut_in_half_is_reported_truncated(tmp_path, write_video):
    data = write_video("full.avi", 30, codec="mjpeg").read_bytes()
    (tmp_path / "half.avi").write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoReadError, match="truncated") as error:
        open_video(tmp_path / "half.avi")
    assert "half.avi" in str(error.value)


def test_video_with_zero_frames(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "zero.avi"
    out = av.open(str(path), "w")
    stream = out.add_stream("mjpeg", rate=25)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuvj420p"
    out.start_encoding()
    out.close()
    with pytest.raises(VideoReadError, match="zero frames") as error:
        open_video(path)
    assert "zero.avi" in str(error.value)


def test_folder_with_differing_frame_sizes(tmp_path):
    folder = tmp_path / "f"
    _save_gray_pngs(folder, ["0.png", "1.png", "3.png"])
    Image.fromarray(np.zeros((7, 5), np.uint8)).save(folder / "2.png")
    Image.fromarray(np.zeros((8, 5), np.uint8)).save(folder / "4.png")
    with pytest.raises(VideoReadError) as error:
        open_video(folder)
    message = str(error.value)
    assert "2.png" in message and "4.png" not in message and "5x7" in message and "5x6" in message


def test_folder_mixing_gray_and_colour(tmp_path):
    folder = tmp_path / "f"
    _save_gray_pngs(folder, ["0.png"])
    Image.fromarray(np.zeros((6, 5, 3), np.uint8)).save(folder / "1.png")
    with pytest.raises(VideoReadError, match="colour") as error:
        open_video(folder)
    assert "1.png" in str(error.value)


def test_corrupt_frame_in_folder(tmp_path):
    folder = tmp_path / "f"
    _save_gray_pngs(folder, ["0.png", "1.png"])
    (folder / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(VideoReadError) as error:
        open_video(folder)
    assert "2.png" in str(error.value)

