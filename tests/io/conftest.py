"""Synthetic videos and frame folders for the I/O tests, written into tmp_path."""

import numpy as np
import pytest


def brightness(t: int) -> int:
    """Mean grey level of synthetic frame ``t`` (13 grey levels apart for neighbouring frames)."""
    return 30 + (t * 13) % 200


def synthetic_frame(t: int, height: int = 64, width: int = 96) -> np.ndarray:
    """An RGB frame whose brightness encodes ``t``, with a red square moving right."""
    frame = np.full((height, width, 3), brightness(t), np.uint8)
    x = (2 * t) % (width - 16)
    frame[8:24, x : x + 16] = (255, 0, 0)
    return frame


def _write_pyav(path, codec, n_frames, gop):
    av = pytest.importorskip("av")
    if codec not in av.codecs_available:
        pytest.skip(f"PyAV has no {codec} encoder")
    container = av.open(str(path), "w")
    stream = container.add_stream(codec, rate=25)
    stream.width, stream.height = 96, 64
    stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    stream.options = {"g": str(gop)}
    for t in range(n_frames):
        frame = av.VideoFrame.from_ndarray(synthetic_frame(t), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def _write_opencv(path, fourcc, n_frames):
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25, (96, 64))
    if not writer.isOpened():
        pytest.skip(f"OpenCV cannot write {fourcc} to {path.suffix}")
    for t in range(n_frames):
        writer.write(synthetic_frame(t)[..., ::-1].copy())
    writer.release()


@pytest.fixture
def write_video(tmp_path):
    """``write_video(name, n_frames, codec="libx264", writer="pyav", gop=12) -> Path``."""

    def write(name, n_frames, codec="libx264", writer="pyav", gop=12):
        path = tmp_path / name
        if writer == "pyav":
            _write_pyav(path, codec, n_frames, gop)
        else:
            _write_opencv(path, codec, n_frames)
        return path

    return write


@pytest.fixture
def expected_frame():
    """``expected_frame(t)``: the synthetic RGB frame ``t`` that ``write_video`` encodes."""
    return synthetic_frame
