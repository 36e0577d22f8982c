"""Video input with PyAV: probe, stream RGB frames in.

Frames are ``H×W×3`` numpy arrays, ``uint8`` RGB, yielded one at a time (memory does not grow
with video length). Reading accepts anything FFmpeg opens: mp4, mkv, avi, y4m, raw H.264/HEVC
elementary streams (their rate is taken from the bitstream, else 25 fps), image files (a
1-frame video), ``%05d.png`` patterns, and pipes (:func:`open_pipe`). Writing is
:mod:`neuralcodec.video_out`.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np

from .errors import InputError, ResourceError

DEFAULT_FPS = Fraction(25)  # rate assumed for inputs that carry none (raw elementary streams)
# demuxers without timestamps: their average rate is FFmpeg's guess, the codec's rate is better
RAW_FORMATS = {"h264", "hevc", "m4v", "mpegvideo", "cavsvideo", "vc1", "obu", "rawvideo"}
PATTERN_RE = re.compile(r"%0?\d*d")
# File name endings taken as videos when a folder of clips is read (evaluation, training).
VIDEO_EXTS = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".264", ".h264", ".265", ".hevc", ".y4m"}


@dataclass(frozen=True)
class VideoMeta:
    """What the codec needs to know about a video."""

    width: int  # pixels
    height: int  # pixels
    fps: Fraction  # frames per second, exact
    frames: Optional[int]  # frame count, None if the container does not say
    pix_fmt: str  # FFmpeg pixel format name of the source (e.g. "yuv420p")
    rotation: int = 0  # display rotation applied when reading (0/90/180/270 counter-clockwise);
    # width and height are the displayed (rotated) size


def open_container(path) -> "av.container.InputContainer":  # noqa: F821
    """Open ``path`` for reading with PyAV → :class:`InputError` for a missing, empty or
    unreadable file or one without a video stream."""
    import av

    p = str(path)
    if not PATTERN_RE.search(p):
        if not os.path.exists(p):
            raise InputError(f"{p}: no such file")
        if os.path.isdir(p):
            raise InputError(f"{p}: is a directory")
        if os.path.getsize(p) == 0:
            raise InputError(f"{p}: empty file")
    try:
        c = av.open(p, "r")
    except av.FFmpegError as e:
        raise InputError(f"{p}: not a readable video ({ffmpeg_message(e)})") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{p}: cannot open ({e})") from None
    if not c.streams.video:
        c.close()
        raise InputError(f"{p}: no video stream")
    return c


def ffmpeg_message(e: Exception) -> str:
    """The first line of an FFmpeg error (its strerror where PyAV has one)."""
    return getattr(e, "strerror", None) or str(e).splitlines()[0]


def _rate(c, s, path="input") -> Fraction:
    """The stream's frame rate (FFmpeg's best estimate); 25 fps when FFmpeg has none;
    :class:`InputError` when it is outside the 1/1000..1000 fps an .mgv header can store
    (never silently another rate)."""
    cands = []
    if c.format.name.split(",")[0] in RAW_FORMATS:
        cands += [s.guessed_rate, s.base_rate]
    cands += [s.average_rate, s.guessed_rate, s.base_rate]
    for r in cands:
        try:
            rate = Fraction(r) if r else None
        except (TypeError, ValueError, ZeroDivisionError):
            rate = None
        if rate is None or rate <= 0:
            continue
        if not Fraction(1, 1000) <= rate <= 1000:
            raise InputError(f"{path}: frame rate {float(rate):.6g} fps is outside the "
                             f"1/1000..1000 fps an .mgv stream can store")
        # keep the fraction small enough for the container header (num, den <= 10^6)
        return rate.limit_denominator(1_000_000) if rate.denominator > 1_000_000 else rate
    return DEFAULT_FPS


def _first_rotation(c, s) -> int:
    """Display rotation of the first frame, rounded to a multiple of 90 degrees (counter-
    clockwise, 0..270); 0 when there is none or the first frame does not decode."""
    import av

    try:
        for frame in c.decode(s):
            r = getattr(frame, "rotation", 0) or 0
            return int(round(r / 90.0)) % 4 * 90
    except (av.FFmpegError, ValueError):
        return 0
    return 0


def probe(path) -> VideoMeta:
    """Metadata of the first video stream of ``path`` → :class:`VideoMeta`.

    Raises :class:`InputError` for a missing, empty or unreadable file or one without video.
    """
    c = open_container(path)
    try:
        s = c.streams.video[0]
        cc = s.codec_context
        w, h = cc.width, cc.height
        if not w or not h:
            raise InputError(f"{path}: video stream without a frame size")
        pix = cc.pix_fmt or (s.format.name if s.format else None) or "rgb24"
        frames = int(s.frames) if s.frames and s.frames > 0 else None
        single_image = c.format.name.startswith("image2") or c.format.name.endswith("_pipe")
        if frames is None and single_image and not PATTERN_RE.search(str(path)):
            frames = 1
        rot = _first_rotation(c, s)
        if rot % 180:
            w, h = h, w
        return VideoMeta(int(w), int(h), _rate(c, s, path), frames, str(pix), rot)
    finally:
        c.close()


def count_frames(path) -> Optional[int]:
    """Frames of the first video stream of ``path`` counted by demuxing its packets (no
    decoding; fast) → count, or None where the file cannot be read that way. For inputs that
    do not declare a frame count (raw ``.264``/``.265``, some ``.webm``), so that progress
    shows a total."""
    try:
        c = open_container(path)
    except InputError:
        return None
    try:
        s = c.streams.video[0]
        n = sum(1 for p in c.demux(s) if p.size)
        return n or None
    except Exception:  # a damaged file: no total, the decode itself reports the error
        return None
    finally:
        c.close()


def decode_frames(path, fmt: str = "rgb24",
                  size: Optional[Callable[[int, int], Tuple[int, int]]] = None,
                  interpolation: Optional[str] = None,
                  max_frames: Optional[int] = None) -> Iterator[np.ndarray]:
    """Decode the first video stream of ``path`` one frame at a time → arrays in FFmpeg pixel
    format ``fmt`` (``H×W×3`` uint8 for ``rgb24``; planar formats as PyAV lays them out), all
    at ``size(width, height)`` of the first frame (default: its own size), scaled with
    ``interpolation`` (a swscale name such as ``"AREA"``; default bilinear); at most
    ``max_frames`` → :class:`InputError` when the file cannot be opened or decoded. The
    package's one PyAV decoding loop (codec input, training data, the RD benchmark)."""
    import av

    c = open_container(path)
    try:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        wh = None
        n = 0
        try:
            for frame in c.decode(s):
                if wh is None:
                    wh = size(frame.width, frame.height) if size else (frame.width, frame.height)
                yield frame.reformat(width=wh[0], height=wh[1], format=fmt,
                                     interpolation=interpolation).to_ndarray()
                n += 1
                if max_frames is not None and n >= max_frames:
                    return
        except av.FFmpegError as e:
            raise InputError(f"{path}: decoding failed ({ffmpeg_message(e)})") from None
    finally:
        c.close()


def read_frames(path, meta: Optional[VideoMeta] = None) -> Iterator[np.ndarray]:
    """Decode ``path`` → frames ``H×W×3`` uint8 RGB, one at a time, all at the size of
    ``meta`` (the probed size by default; frames of another size are rescaled)."""
    meta = meta or probe(path)
    k = (meta.rotation // 90) % 4
    wh = (meta.height, meta.width) if k % 2 else (meta.width, meta.height)
    for a in decode_frames(path, size=lambda w, h: wh):
        yield np.ascontiguousarray(np.rot90(a, k)) if k else a


def scaled_size(width: int, height: int, max_short_side: int) -> Tuple[int, int]:
    """(width, height) scaled down so that the short side is <= ``max_short_side`` (0: no
    limit), rounded to even sizes."""
    scale = min(1.0, max_short_side / min(width, height)) if max_short_side else 1.0
    return int(round(width * scale / 2)) * 2, int(round(height * scale / 2)) * 2


def read_rgb(path, max_short_side: int = 0, max_frames: Optional[int] = None) -> np.ndarray:
    """The first ``max_frames`` frames of ``path`` (all by default) → uint8 ``T×H×W×3`` RGB,
    area-downscaled so that min(H, W) <= ``max_short_side`` (0: native size; even sizes).
    InputError when the file has no frame. The clip reader of evaluation, studies and
    training (rotation metadata is not applied)."""
    frames = list(decode_frames(path, "rgb24", lambda w, h: scaled_size(w, h, max_short_side)
                                if max_short_side else (w, h), "AREA", max_frames))
    if not frames:
        raise InputError(f"{path}: no frames")
    return np.stack(frames)


def open_pipe(fobj, name: str = "stdin") -> tuple:
    """Read a video from a binary file object that may not seek (a pipe: y4m, nut, mkv, or
    anything FFmpeg reads sequentially) → (:class:`VideoMeta` with ``frames`` None, iterator
    of ``H×W×3`` uint8 RGB frames). The container is opened once (a pipe cannot be probed
    and re-read); the iterator closes it. Rotation metadata is not applied."""
    import av

    try:
        c = av.open(fobj, "r")
    except av.FFmpegError as e:
        raise InputError(f"{name}: not a readable video ({ffmpeg_message(e)})") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{name}: cannot open ({e})") from None
    try:
        if not c.streams.video:
            raise InputError(f"{name}: no video stream")
        s = c.streams.video[0]
        cc = s.codec_context
        if not cc.width or not cc.height:
            raise InputError(f"{name}: video stream without a frame size")
        pix = cc.pix_fmt or (s.format.name if s.format else None) or "rgb24"
        meta = VideoMeta(int(cc.width), int(cc.height), _rate(c, s), None, str(pix))
    except BaseException:
        c.close()
        raise

    def gen() -> Iterator[np.ndarray]:
        try:
            for frame in c.decode(s):
                yield frame.to_ndarray(format="rgb24", width=meta.width, height=meta.height)
        except av.FFmpegError as e:
            raise InputError(f"{name}: decoding failed ({ffmpeg_message(e)})") from None
        finally:
            c.close()

    return meta, gen()


def frames_of(source) -> Iterator[np.ndarray]:
    """Frames of an in-memory ``T×H×W×3`` uint8 array, one at a time."""
    for i in range(source.shape[0]):
        yield source[i]


class FrameSpool:
    """Frames kept for a second pass, on disk (an unnamed temporary file, gone when closed):
    :meth:`wrap` passes ``H×W×3`` uint8 frames through and appends their bytes, :meth:`replay`
    yields them again in order. ``frames`` × ``width`` × ``height`` (when known) is checked
    against the free space first → :class:`ResourceError`."""

    def __init__(self, width: int, height: int, frames: Optional[int]) -> None:
        need = (frames or 0) * width * height * 3
        free = shutil.disk_usage(tempfile.gettempdir()).free
        if need > free:
            raise ResourceError(f"keeping {frames} frames for a second pass needs {need >> 20} MiB "
                                f"in {tempfile.gettempdir()} ({free >> 20} MiB free; set TMPDIR)")
        self.file = tempfile.TemporaryFile()
        self.shape: Optional[Tuple[int, ...]] = None
        self.count = 0

    def wrap(self, it: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for f in it:
            self.shape = self.shape or f.shape
            try:
                self.file.write(np.ascontiguousarray(f).tobytes())
            except OSError as e:  # e.g. the disk filled up (a count the input did not declare)
                raise ResourceError(f"keeping frames for a second pass in {tempfile.gettempdir()}: "
                                    f"{e.strerror or e}") from None
            self.count += 1
            yield f

    def replay(self) -> Iterator[np.ndarray]:
        self.file.seek(0)
        size = int(np.prod(self.shape or (0,)))
        for _ in range(self.count):
            yield np.frombuffer(self.file.read(size), np.uint8).reshape(self.shape)

    def read(self, first: int, count: int) -> List[np.ndarray]:
        """Frames ``first`` .. ``first + count - 1`` of those kept (fewer at the end)."""
        size = int(np.prod(self.shape or (0,)))
        count = max(0, min(count, self.count - first))
        self.file.seek(first * size)
        data = self.file.read(count * size)
        return [np.frombuffer(data, np.uint8, size, i * size).reshape(self.shape) for i in range(count)]

    def close(self) -> None:
        self.file.close()
