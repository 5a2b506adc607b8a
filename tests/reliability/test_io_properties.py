"""Property-based tests of the readers and writers: any bytes under a media file's name open as a
video whose frames read, or are refused with our VideoReadError; any label volume is written and
reads back the same, or is refused with our VosEmbedError; never an error from inside a dependency."""

import io

import numpy as np
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from napari_vosembed.errors import VideoReadError, VosEmbedError
from napari_vosembed.io import open_video, read_label_image, write_png_labels, write_tiff_labels

SETTINGS = settings(max_examples=150, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def encoded(fmt: str) -> bytes:
    """A small valid file of `fmt`."""
    frame = np.arange(12 * 16 * 3, dtype=np.uint8).reshape(12, 16, 3)
    buffer = io.BytesIO()
    if fmt == "mp4":
        import av

        with av.open(buffer, "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = 16, 12, "yuv420p"
            for t in range(4):
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.roll(frame, t, 1), format="rgb24")))
            container.mux(stream.encode())
    elif fmt == "tif":
        tifffile.imwrite(buffer, np.stack([frame[..., 0]] * 3))
    else:
        Image.fromarray(frame).save(buffer, format={"png": "PNG", "jpg": "JPEG", "bmp": "BMP"}[fmt])
    return buffer.getvalue()


VALID = {fmt: encoded(fmt) for fmt in ("tif", "png", "jpg", "bmp", "mp4")}


@st.composite
def damaged(draw):
    """(extension, bytes): a valid file cut short, with bytes flipped, or bytes from nowhere."""
    fmt = draw(st.sampled_from(sorted(VALID)))
    data = bytearray(VALID[fmt])
    kind = draw(st.sampled_from(["cut", "flipped", "random"]))
    if kind == "cut":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "flipped":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    else:
        data = bytearray(draw(st.binary(max_size=600)))
    return fmt, bytes(data)


@SETTINGS
@given(damaged())
def test_any_bytes_under_an_image_name_open_and_read_or_raise_a_read_error(tmp_path, case):
    fmt, data = case
    path = tmp_path / f"frame.{fmt}"
    path.write_bytes(data)
    try:
        video = open_video(path)
        frames = [np.asarray(video[t]) for t in range(len(video))]
        video.close()
        assert frames and all(f.shape[:2] == frames[0].shape[:2] for f in frames)
    except VideoReadError as err:
        assert str(path) in str(err)
    try:
        if fmt in ("png", "tif"):
            read_label_image(path)
    except VideoReadError as err:
        assert str(path) in str(err)
    assert path.read_bytes() == data


ids = st.one_of(st.integers(0, 3), st.integers(0, 300), st.integers(0, 70_000), st.integers(-2, 2**40))
dtypes = st.sampled_from([np.uint8, np.uint16, np.int32, np.int64, np.uint64, np.float32, np.float64, np.bool_])


@st.composite
def volumes(draw):
    shape = draw(st.sampled_from([(2, 5, 7), (1, 1, 1), (3, 4, 4), (0, 3, 3), (1, 0, 4), (4, 6)]))
    values = draw(st.lists(ids, min_size=1, max_size=5))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    array = rng.choice(values, size=shape)
    dtype = draw(dtypes)
    with np.errstate(all="ignore"):
        cast = array.astype(dtype)
    if dtype in (np.float32, np.float64) and draw(st.booleans()):
        cast = cast + draw(st.sampled_from([0.5, np.nan, np.inf]))
    return cast


def same_ids(written, expected):
    return np.array_equal(np.asarray(written, np.int64), np.asarray(expected).astype(np.int64))


@SETTINGS
@given(volumes())
def test_any_label_volume_is_written_and_read_back_unchanged_or_refused(tmp_path, labels):
    for old in tmp_path.iterdir():
        old.unlink() if old.is_file() else [p.unlink() for p in old.iterdir()]
    try:
        path = write_tiff_labels(labels, tmp_path / "labels.tif", overwrite=True)
    except VosEmbedError as err:
        assert str(err)
    else:
        assert same_ids(tifffile.imread(path).reshape(labels.shape), labels)
    try:
        paths = write_png_labels(labels, tmp_path / "png", overwrite=True)
    except VosEmbedError as err:
        assert str(err)
    else:
        assert same_ids(np.stack([read_label_image(p) for p in paths]).reshape(labels.shape), labels)
