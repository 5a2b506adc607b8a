"""Corrupt and hostile media: every file either opens with the frames it really holds or is refused
with our VideoReadError naming the file and the problem, within bounded memory and time, and the
file is byte-identical afterwards."""

import os
import re
import struct
import threading
import tracemalloc
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_vosembed.errors import VideoReadError
from napari_vosembed.io import open_video, read_label_image

#: generous limits: a hostile file must be refused long before either is reached
MEMORY_LIMIT = 64 << 20
TIME_LIMIT = 60.0


def files_under(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def guarded(fn, *args):
    """`fn(*args)` in a thread, its Python/numpy allocations traced; returns (result or error, peak bytes)."""
    outcome = {}

    def run():
        try:
            outcome["value"] = fn(*args)
        except Exception as exc:  # the caller checks its class
            outcome["value"] = exc

    tracemalloc.start()
    try:
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(TIME_LIMIT)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not thread.is_alive(), f"{fn.__name__}{args} did not return within {TIME_LIMIT} s"
    assert peak < MEMORY_LIMIT, f"{fn.__name__}{args} allocated {peak >> 20} MiB"
    return outcome["value"]


def refused(path, match, reader=open_video):
    """`reader(path)` raises VideoReadError naming `path` and matching `match`; the files under
    `path`'s folder are unchanged."""
    before = files_under(path.parent)
    error = guarded(reader, path)
    assert type(error) is VideoReadError, f"{path.name}: {error!r}"
    assert str(path) in str(error)
    assert re.search(match, str(error)), str(error)
    assert files_under(path.parent) == before
    return error


def opened(path):
    before = files_under(path.parent)
    video = guarded(open_video, path)
    assert not isinstance(video, Exception), repr(video)
    frames = [np.asarray(video[t]) for t in range(len(video))]
    video.close()
    assert files_under(path.parent) == before
    return frames


def frame(t, height=48, width=64):
    out = np.full((height, width, 3), 10 * t, np.uint8)
    out[10:20, 5 + 3 * t : 20 + 3 * t] = 250
    return out


def mp4(path, n=20, **options):
    av = pytest.importorskip("av")
    container = av.open(str(path), "w", options=options)
    stream = container.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    for t in range(n):
        container.mux(stream.encode(av.VideoFrame.from_ndarray(frame(t), format="rgb24")))
    container.mux(stream.encode())
    container.close()
    return path


def avi(path, n=20):
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    for t in range(n):
        writer.write(frame(t))
    writer.release()
    return path


def cut(path, fraction, name):
    data = path.read_bytes()
    out = path.with_name(name)
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


@pytest.mark.parametrize("fraction", [0.5, 0.02])
def test_a_truncated_mp4_is_refused(tmp_path, fraction):
    path = cut(mp4(tmp_path / "whole.mp4"), fraction, "cut.mp4")
    refused(path, "not a readable video file|truncated or corrupt")


def test_a_truncated_streamable_mp4_says_how_many_frames_are_left(tmp_path):
    path = cut(mp4(tmp_path / "whole.mp4", movflags="faststart"), 0.5, "cut.mp4")
    refused(path, r"truncated or corrupt video file: the container declares 20 frames but only \d+ can be read")


def test_a_truncated_avi_is_refused(tmp_path):
    refused(cut(avi(tmp_path / "whole.avi"), 0.5, "cut.avi"), "truncated or corrupt")


@pytest.mark.parametrize("name", ["empty.mp4", "empty.avi", "empty.tif", "empty.png", "empty.jpg"])
def test_a_zero_byte_file_is_refused(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    refused(tmp_path / name, "not a readable")


@pytest.mark.parametrize("name", ["notes.tif", "notes.png", "notes.mp4"])
def test_a_text_file_with_a_media_name_is_refused(tmp_path, name):
    (tmp_path / name).write_text("frame 1: the cell divides\n" * 20)
    refused(tmp_path / name, "not a readable")


def test_a_zero_byte_frame_in_a_folder_is_named_when_the_folder_opens(tmp_path):
    for t in range(3):
        Image.fromarray(frame(t)).save(tmp_path / f"{t:05d}.png")
    (tmp_path / "00003.png").write_bytes(b"")
    error = refused(tmp_path / "00003.png", "not a readable image")
    assert "00003.png" in str(error)
    with pytest.raises(VideoReadError, match=r"00003\.png: not a readable image"):
        open_video(tmp_path)


def test_frames_of_differing_sizes_in_a_folder_are_refused(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(4):
        Image.fromarray(frame(t, width=64 if t != 2 else 80)).save(folder / f"{t:05d}.png")
    before = files_under(folder)
    with pytest.raises(VideoReadError, match=r"00002\.png.*80"):
        open_video(folder)
    assert files_under(folder) == before


STACK = np.stack([np.full((48, 64), 10 * t, np.uint8) for t in range(5)])
OME_MILLION = (
    '<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
    '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" SizeX="64" SizeY="48" '
    'SizeC="1" SizeZ="1" SizeT="1000000"><Channel ID="Channel:0:0" SamplesPerPixel="1"/><TiffData/>'
    "</Pixels></Image></OME>"
)


def test_an_ome_tiff_declaring_a_million_frames_it_does_not_hold_is_refused(tmp_path):
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, STACK, description=OME_MILLION, metadata=None)
    refused(path, "declare 1,000,000 pages but the file holds 5")


def test_an_imagej_tiff_declaring_a_million_frames_opens_the_five_it_holds(tmp_path):
    path = tmp_path / "stack.tif"
    description = "ImageJ=1.11a\nimages=1000000\nframes=1000000\nhyperstack=true\nmode=grayscale\n"
    tifffile.imwrite(path, STACK, description=description, metadata=None)
    frames = opened(path)
    assert [int(f.mean()) for f in frames] == [0, 10, 20, 30, 40]


def first_ifd(data):
    offset = struct.unpack("<I", data[4:8])[0]
    return offset, struct.unpack("<H", data[offset : offset + 2])[0]


def test_a_tiff_whose_pages_form_a_loop_opens_its_one_page(tmp_path):
    tifffile.imwrite(tmp_path / "one.tif", STACK[1], metadata=None)
    data = bytearray((tmp_path / "one.tif").read_bytes())
    offset, entries = first_ifd(data)
    next_ifd = offset + 2 + 12 * entries
    data[next_ifd : next_ifd + 4] = struct.pack("<I", offset)  # the next page is this page again
    (tmp_path / "loop.tif").write_bytes(bytes(data))
    frames = opened(tmp_path / "loop.tif")
    assert len(frames) == 1 and int(frames[0].mean()) == 10


def tiff_bomb(path, width, height):
    """A few hundred bytes whose header declares a `width` x `height` frame."""
    tifffile.imwrite(path, STACK[0], metadata=None)
    data = bytearray(path.read_bytes())
    offset, entries = first_ifd(data)
    for k in range(entries):
        entry = offset + 2 + 12 * k
        tag, kind = struct.unpack("<HH", data[entry : entry + 4])
        value = {256: width, 257: height}.get(tag)
        if value is not None:
            data[entry + 8 : entry + 12] = struct.pack("<H" if kind == 3 else "<I", value).ljust(4, b"\0")
    path.write_bytes(bytes(data))
    return path


def png_bomb(path, width, height):
    """A valid PNG header declaring a `width` x `height` RGB frame, with almost no data."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (3 * width + 1) * 4, 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("make, name, size", [
    (tiff_bomb, "bomb.tif", (60000, 200000)),
    (png_bomb, "bomb.png", (30000, 30000)),  # refused by Pillow's own bomb limit, reported as ours
    (png_bomb, "big.png", (17000, 17000)),  # under Pillow's limit, over ours
])
@pytest.mark.parametrize("reader", [open_video, read_label_image])
def test_an_image_bomb_is_refused_before_decoding(tmp_path, make, name, size, reader):
    path = make(tmp_path / name, *size)
    assert path.stat().st_size < 100_000
    refused(path, "image bomb", reader)


def test_a_folder_with_a_loop_of_links_opens_its_frames(tmp_path):
    for t in range(3):
        Image.fromarray(frame(t)).save(tmp_path / f"{t:05d}.png")
    os.symlink(tmp_path / "b.png", tmp_path / "a.png")
    os.symlink(tmp_path / "a.png", tmp_path / "b.png")
    os.symlink(tmp_path, tmp_path / "self")
    frames = opened(tmp_path / "00000.png")  # the folder's files stay unchanged
    assert len(frames) == 1
    video = open_video(tmp_path)
    assert len(video) == 3 and video.frame_names == ["00000", "00001", "00002"]


def test_a_link_to_itself_is_refused_as_a_loop(tmp_path):
    os.symlink(tmp_path / "clip.mp4", tmp_path / "clip.mp4")
    refused(tmp_path / "clip.mp4", "a symbolic link to nothing")


def test_a_frames_link_to_its_own_folder_ends(tmp_path):
    os.symlink(tmp_path, tmp_path / "frames")
    with pytest.raises(VideoReadError, match="no frames found"):
        open_video(tmp_path)


def deny(monkeypatch, path):
    """Take read permission from `path`; as root, where permissions do not apply, the operating
    system's answer is stood in for at the calls the readers make."""
    path.chmod(0)
    if os.geteuid() != 0:
        return
    import builtins
    from pathlib import Path

    target = str(path)

    def refuse(name):
        raise PermissionError(13, "Permission denied", name)

    real_open, real_iterdir = builtins.open, Path.iterdir
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: refuse(f) if str(f) == target else real_open(f, *a, **k))
    monkeypatch.setattr(Path, "iterdir", lambda self: refuse(self) if str(self) == target else real_iterdir(self))


def test_an_unreadable_tiff_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, STACK, metadata=None)
    deny(monkeypatch, path)
    try:
        refused(path, "Permission denied")
    finally:
        path.chmod(0o644)


def test_an_unreadable_frame_folder_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.fromarray(frame(0)).save(folder / "00000.png")
    deny(monkeypatch, folder)
    try:
        with pytest.raises(VideoReadError, match="frames: the folder cannot be listed"):
            open_video(folder)
    finally:
        folder.chmod(0o755)
