"""Video files (mp4, avi, mov, webm, mkv) decoded lazily with PyAV, with exact random access.

On opening, the packets are demuxed once (no decoding) to build an index of presentation
timestamps and keyframes. Frame ``t`` is decoded by seeking to the keyframe before it and
decoding forward; reading frames in order just keeps decoding. When the container's own frame
count disagrees with the packets, every frame is decoded once to count them.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import VideoReadError
from ._files import check_frame_size, describe

_CACHE_BYTES = 64 << 20


def _decode_packet(packet):
    """Decode one demuxed packet into zero or more frames."""
    return packet.decode()


def _import_av():
    try:
        import av
    except ImportError as exc:
        raise VideoReadError(
            "reading video files needs PyAV: install it with `pip install av`"
        ) from exc
    return av


def _output_format(stream) -> str:
    """The PyAV pixel format frames are converted to: gray, gray16le, rgb24 or rgb48le."""
    fmt = stream.codec_context.format
    bits = max((c.bits for c in fmt.components), default=8) if fmt is not None else 8
    if fmt is not None and fmt.name.startswith("gray"):
        return "gray" if bits <= 8 else "gray16le"
    return "rgb24" if bits <= 8 else "rgb48le"


class ContainerReader:
    """Frame reader of one video stream of a container file."""

    def __init__(self, path: Path):
        self._av = _import_av()
        self.path = path
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._frames = None
        self._position = -1
        try:
            self._container = self._av.open(str(path))
        except Exception as exc:  # any parser error, e.g. UnicodeDecodeError: see _files.describe()
            raise VideoReadError(f"{path}: not a readable video file ({describe(exc)})") from exc
        try:
            self._build_index()
            first = self._read(0)
        except BaseException:
            self._container.close()
            raise
        self.frame_shape = first.shape
        self.dtype = first.dtype
        self.frame_names = [f"{t:05d}" for t in range(self.n_frames)]

    def _error(self, problem: str, exc: Exception | None = None) -> VideoReadError:
        detail = f" ({describe(exc)})" if exc is not None else ""
        return VideoReadError(f"{self.path}: {problem}{detail}")

    def _build_index(self) -> None:
        if not self._container.streams.video:
            raise self._error("the file has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        width, height = self._stream.codec_context.width, self._stream.codec_context.height
        if width and height:  # 0 where only decoding tells
            check_frame_size(self.path, height, width)
        pts, keys = [], []
        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0 or packet.is_discard:
                    continue
                stamp = packet.pts if packet.pts is not None else packet.dts
                if stamp is None:
                    raise self._error("the video packets have no timestamps; re-encode it, e.g. with ffmpeg")
                pts.append(stamp)
                if packet.is_keyframe:
                    keys.append(stamp)
        except VideoReadError:
            raise
        except Exception as exc:  # any parser error: see _files.describe()
            raise self._error("corrupt or truncated video file", exc) from exc
        declared = self._stream.frames
        if declared and len(pts) < declared:
            raise self._error(
                f"truncated or corrupt video file: the container declares {declared} frames "
                f"but only {len(pts)} can be read"
            )
        if declared and len(pts) != declared:
            pts = self._count_by_decoding()
        if not pts:
            raise self._error("the video has zero frames")
        self._check_duration(max(pts), len(pts))
        self._pts = sorted(pts)
        self._index = {stamp: t for t, stamp in enumerate(self._pts)}
        self._keys = sorted({self._index[k] for k in keys if k in self._index} | {0})
        self.n_frames = len(self._pts)

    def _count_by_decoding(self) -> list[int]:
        """Presentation timestamps of every decodable frame (the container's count is wrong)."""
        self._seek_start()
        try:
            stamps = [frame.pts for frame in self._decoded()]
        except VideoReadError:
            raise
        except Exception as exc:  # any parser error: see _files.describe()
            raise self._error("corrupt or truncated video file", exc) from exc
        if any(stamp is None for stamp in stamps):
            raise self._error("the decoded frames have no timestamps; re-encode it, e.g. with ffmpeg")
        return stamps

    def _check_duration(self, last_pts: int, n_frames: int) -> None:
        """Catch truncated files whose container does not declare a frame count."""
        stream = self._stream
        if stream.time_base is None or not stream.average_rate:
            return
        if stream.duration:
            declared = float(stream.duration * stream.time_base)
        elif self._container.duration and len(self._container.streams) == 1:
            declared = self._container.duration / 1_000_000
        else:
            return
        start = stream.start_time or 0
        covered = float((last_pts - start) * stream.time_base) + 1 / float(stream.average_rate)
        if covered < 0.9 * declared - 2 / float(stream.average_rate):
            raise self._error(
                f"truncated video file: the container declares {declared:.2f} s but the frames "
                f"stop at {covered:.2f} s ({n_frames} frames)"
            )

    def _decoded(self):
        for packet in self._container.demux(self._stream):
            yield from _decode_packet(packet)

    def _seek_start(self) -> None:
        self._container.seek(self._stream.start_time or 0, stream=self._stream, backward=True)
        self._frames = self._decoded()
        self._position = -1

    def _seek(self, t: int) -> None:
        key = self._keys[bisect.bisect_right(self._keys, t) - 1]
        self._container.seek(self._pts[key], stream=self._stream, backward=True)
        self._frames = self._decoded()
        self._position = -1

    def _frame_index(self, frame) -> int:
        if frame.pts is None:
            raise self._error("a decoded frame has no timestamp; re-encode it, e.g. with ffmpeg")
        index = self._index.get(frame.pts)
        if index is None:
            index = max(bisect.bisect_right(self._pts, frame.pts) - 1, 0)
        return index

    def _decode_until(self, t: int):
        """Decode forward to frame ``t``; ``None`` if the stream went past it or ended."""
        for frame in self._frames:
            index = self._frame_index(frame)
            self._position = index
            if index == t:
                return frame
            if index > t:
                return None
        return None

    def _read(self, t: int) -> np.ndarray:
        key = self._keys[bisect.bisect_right(self._keys, t) - 1]
        try:
            if self._frames is None or not (key - 1 <= self._position < t):
                self._seek(t)
            frame = self._decode_until(t)
            if frame is None:
                self._seek_start()
                frame = self._decode_until(t)
        except VideoReadError:
            self._frames = None
            raise
        except Exception as exc:  # any parser error: see _files.describe()
            self._frames = None
            raise self._error(f"cannot decode frame {t}", exc) from exc
        if frame is None:
            self._frames = None
            raise self._error(f"cannot decode frame {t}: the file is truncated or corrupt")
        return frame.to_ndarray(format=_output_format(self._stream))

    def read(self, t: int) -> np.ndarray:
        """Frame ``t`` (``0 <= t < n_frames``), RGB or grayscale, uint8 or uint16; recent frames are cached."""
        with self._lock:
            if t in self._cache:
                self._cache.move_to_end(t)
                return self._cache[t].copy()
            array = self._read(t)
            self._cache[t] = array
            while len(self._cache) > 1 and len(self._cache) * array.nbytes > _CACHE_BYTES:
                self._cache.popitem(last=False)
            return array.copy()

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._frames = None
            self._container.close()
