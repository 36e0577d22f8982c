"""Video output with PyAV: frames written to a file, a PNG pattern or a pipe.

Frames are ``H×W×3`` numpy arrays, ``uint8`` RGB, consumed one at a time (memory does not grow
with video length). The codec is picked from the output name:

=====================  ===================================================================
``.mkv``               FFV1 (lossless)
``.mp4``               H.264 (libx264, CRF 12) or, without libx264, MPEG-4 part 2 at q 2
``.y4m``               raw YUV4MPEG2
``.nut``               raw video in NUT (also to a pipe, like y4m and mkv)
``*%0Nd.png``          one PNG per frame (numbered from 1)
=====================  ===================================================================

The output keeps the source pixel format where the codec supports it, else the nearest one
(:func:`choose_pix_fmt`), and the rate as an exact fraction with one frame per tick.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import re
from fractions import Fraction
from typing import Callable, Iterable, List, Optional, Sequence

import numpy as np

from .errors import OutputError
from .video_io import VideoMeta, ffmpeg_message

PIPE_KINDS = ("y4m", "nut", "mkv")  # output kinds that can be written to a pipe (stdout)

def output_kind(path) -> str:
    """"mkv", "mp4", "y4m", "nut" or "png" (a ``%0Nd.png`` pattern) → :class:`OutputError`
    otherwise."""
    p = str(path)
    ext = os.path.splitext(p)[1].lower()
    if ext == ".png":
        check_pattern(p)
        return "png"
    if ext in (".mkv", ".mp4", ".y4m", ".nut"):
        return ext[1:]
    raise OutputError(f"{p}: unsupported output extension '{ext}' (use .mkv, .mp4, .y4m, .nut or "
                      f"%05d.png)")


_CONVERSION_RE = re.compile(r"%(%|0?[1-9]?\d?d)")


def check_pattern(path) -> None:
    """A PNG output name holds exactly one frame number ``%d`` / ``%0Nd`` (N ≤ 99) in its file
    name, and any other ``%`` is written ``%%`` → :class:`OutputError`."""
    p = str(path)
    base = os.path.basename(p)
    numbers = 0
    i = 0
    while i < len(base):
        if base[i] != "%":
            i += 1
            continue
        m = _CONVERSION_RE.match(base, i)
        if m is None:
            raise OutputError(f"{p}: a '%' in a PNG pattern must be a frame number (%d, %05d) "
                              f"or written '%%'")
        numbers += m.group(1) != "%"
        i = m.end()
    if numbers != 1:
        raise OutputError(f"{p}: PNG output needs exactly one frame number pattern, e.g. "
                          f"out_%05d.png")


def pattern_names(pattern, count: int, start: int = 1) -> List[str]:
    """File names a ``%0Nd`` pattern produces for ``count`` frames numbered from ``start``
    (the pattern is in the file name; the directory is taken as it is)."""
    d, base = os.path.split(str(pattern))
    return [os.path.join(d, base % i) for i in range(start, start + count)]


_Y4M_FORMATS = ("yuv420p", "yuv422p", "yuv444p", "yuv411p", "gray", "yuv420p10le",
                "yuv422p10le", "yuv444p10le", "gray16le")


def _supported(kind: str, codec: str) -> List[str]:
    import av

    if kind == "y4m":
        return list(_Y4M_FORMATS)
    if kind == "nut":
        return list(_Y4M_FORMATS) + ["gbrp", "rgb24"]
    try:
        return [f.name for f in (av.codec.Codec(codec, "w").video_formats or [])]
    except Exception:  # pragma: no cover - codec missing in this FFmpeg build
        return []


def choose_pix_fmt(source: str, supported: Sequence[str]) -> str:
    """The source pixel format if ``supported`` has it, else the nearest: full-chroma formats
    for RGB/GBR/alpha sources, ``gray`` for gray, ``yuv420p`` otherwise."""
    if source in supported:
        return source
    s = source.lower()
    if s.startswith(("rgb", "bgr", "gbr", "argb", "abgr", "rgba", "bgra", "yuva444", "pal8")):
        prefs = ("gbrp", "rgb24", "bgr0", "yuv444p", "yuv420p")
    elif s.startswith(("gray", "ya", "mono")):
        prefs = ("gray", "yuv420p", "rgb24")
    elif s.startswith(("yuv444", "yuvj444", "nv24")):
        prefs = ("yuv444p", "yuv420p")
    elif s.startswith(("yuv422", "yuvj422", "nv16", "yuyv", "uyvy")):
        prefs = ("yuv422p", "yuv420p")
    else:
        prefs = ("yuv420p", "rgb24")
    for p in prefs:
        if p in supported:
            return p
    return supported[0] if supported else "yuv420p"


def _codec_opens(codec: str, width: int, height: int, pix: str, options: dict, fps: Fraction) -> bool:
    """Whether FFmpeg's ``codec`` accepts this frame size, pixel format and options (some
    refuse small or odd sizes: FFV1's slices, 4:2:0 in libx264)."""
    import av

    try:
        cc = av.CodecContext.create(codec, "w")
        cc.width, cc.height, cc.pix_fmt = width, height, pix
        cc.time_base = Fraction(1) / fps
        cc.options = dict(options)
        cc.open()
        return True
    except (av.FFmpegError, ValueError, TypeError, OverflowError):
        return False


def output_codec(kind: str, meta: VideoMeta, crf: int = 12):
    """(codec, pixel format, options) for writing ``meta``'s frames as ``kind``: the source
    pixel format where the codec supports it (else the nearest), then fall-backs for sizes a
    codec refuses (one FFV1 slice; full chroma for odd sizes) → :class:`OutputError` with a
    clear message when none fits (checked before any frame is decoded)."""
    import av

    if kind == "mp4":
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    else:
        codec = {"mkv": "ffv1", "y4m": "rawvideo", "png": "png", "nut": "rawvideo"}[kind]
    options = {"libx264": {"crf": str(int(crf)), "preset": "medium"},
               "mpeg4": {"qscale": "2"}, "ffv1": {"level": "3", "slicecrc": "1"}}.get(codec, {})
    pix = choose_pix_fmt(meta.pix_fmt, _supported(kind, codec))
    if codec not in ("libx264", "mpeg4", "ffv1"):
        return codec, pix, options
    supported = _supported(kind, codec)
    pixes = [pix] + [p for p in ("yuv444p", "yuv420p") if p in supported and p != pix]
    cands = [(p, options) for p in pixes]
    if codec == "ffv1":
        cands += [(p, {**options, "slices": "1"}) for p in pixes]
    for p, o in cands:
        if _codec_opens(codec, meta.width, meta.height, p, o, meta.fps):
            return codec, p, o
    raise OutputError(f"{kind} output ({codec}) cannot hold {meta.width}x{meta.height} frames; "
                      f"use .y4m or a PNG pattern")


def write_video(path, meta: VideoMeta, frames: Iterable[np.ndarray], *,
                kind: Optional[str] = None,
                progress: Optional[Callable[[int], None]] = None,
                audio=None, warn: Optional[Callable[[str], None]] = None, crf: int = 12) -> int:
    """Encode ``frames`` (``H×W×3`` uint8 RGB, size ``meta.width×meta.height``) into ``path``
    at ``meta.fps`` → number of frames written. ``kind`` overrides the extension (used when
    writing to a temporary name); :class:`OutputError` when the file cannot be written.
    ``path`` may be a binary file object (e.g. stdout; ``kind`` then required, one of
    :data:`PIPE_KINDS`; ``nut`` is raw video in NUT): it is flushed, not closed.
    ``crf``: libx264's constant rate factor for ``.mp4`` (0 = best, 51 = worst).

    ``audio``: a :class:`neuralcodec.audio.AudioSink` filled while ``frames`` is consumed;
    its packets are muxed unchanged (stream copy) into outputs that can hold their codec
    (:meth:`~neuralcodec.audio.AudioSink.output_streams`); other tracks are dropped with a
    ``warn(message)``."""
    import av

    warn = warn or (lambda m: None)
    to_fobj = hasattr(path, "write")  # a binary file object (stdout): written, not closed
    kind = kind or output_kind(path)
    if to_fobj and kind not in PIPE_KINDS:
        raise OutputError(f"{kind} cannot be written to a pipe (use {', '.join(PIPE_KINDS)})")
    fmt = {"mkv": "matroska", "mp4": "mp4", "y4m": "yuv4mpegpipe", "png": "image2",
           "nut": "nut"}[kind]
    codec, pix, options = output_codec(kind, meta, crf)  # refuses before any frame is decoded
    frames = iter(frames)
    first = next(frames, None)  # decoding frame 0 reads the AUDIO track records before it
    # single-file outputs go through a Python file object: FFmpeg's own file protocol drops
    # write errors (a full disk would give a truncated file and success); Python's write
    # raises, and PyAV re-raises it from the next call (at the latest from close)
    fobj = None
    name = "stdout" if to_fobj else path
    try:
        if to_fobj:
            fobj = path
        elif kind != "png":
            fobj = open(path, "wb")
        c = av.open(fobj if fobj is not None else str(path), "w", format=fmt)
    except (av.FFmpegError, OSError) as e:
        if fobj is not None and not to_fobj:
            fobj.close()
        raise OutputError(f"{name}: cannot create ({ffmpeg_message(e)})") from None
    n = 0
    ok = False
    try:
        s = c.add_stream(codec, rate=meta.fps, options=options)
        s.width, s.height, s.pix_fmt = meta.width, meta.height, pix
        s.time_base = Fraction(1) / meta.fps
        astreams = audio.output_streams(c, kind, warn) if audio is not None and first is not None else {}
        alast: dict = {}
        started = False
        for arr in (itertools.chain([first], frames) if first is not None else ()):
            if arr.shape != (meta.height, meta.width, 3) or arr.dtype != np.uint8:
                raise OutputError(f"frame {n} has shape {arr.shape} {arr.dtype}, expected "
                                  f"{(meta.height, meta.width, 3)} uint8")
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            f.pts = n  # in the codec's time base (1/fps); a frame time_base made libx264
            # packets with pts < dts on some real clips (PyAV 18: 'Invalid argument' at mux)
            for pkt in s.encode(f):
                c.mux(pkt)
                started = True
            n += 1
            if progress:
                progress(1)
            if astreams and started:  # the first video packet writes the header (time bases)
                audio.mux_pending(c, astreams, warn, alast)
        for pkt in s.encode():
            c.mux(pkt)
        if astreams:
            audio.mux_pending(c, astreams, warn, alast)
        ok = True
    except av.FFmpegError as e:
        raise OutputError(f"{name}: writing failed ({ffmpeg_message(e)})") from None
    except OSError as e:  # a Python write error, re-raised by PyAV
        raise OutputError(f"{name}: writing failed ({e.strerror or e})") from None
    finally:
        if not ok:
            with contextlib.suppress(av.FFmpegError, OSError):
                c.close()
            if fobj is not None and not to_fobj:
                with contextlib.suppress(OSError):
                    fobj.close()
    try:
        c.close()
        if fobj is not None:
            fobj.flush() if to_fobj else fobj.close()
    except av.FFmpegError as e:
        raise OutputError(f"{name}: writing failed ({ffmpeg_message(e)})") from None
    except OSError as e:
        raise OutputError(f"{name}: writing failed ({e.strerror or e})") from None
    return n
