"""YUV4MPEG2 (.y4m) reading/writing and the one YUV→RGB conversion every metric uses.

Frames are kept as planar YUV 4:2:0 in numpy:

* ``Y``: ``T×H×W`` uint8 (8-bit) or uint16 (10-bit, values in [0, 1023]),
* ``U``, ``V``: ``T×H/2×W/2`` of the same dtype.

Only 4:2:0 (``C420``, ``C420jpeg``, ``C420mpeg2``, ``C420paldv``) and ``C420p10`` are supported,
plus ``C444`` 8-bit, which is converted to 4:2:0 by 2×2 averaging on read.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from neuralcodec.errors import InputError

_MAGIC = b"YUV4MPEG2"


@dataclass
class YUVVideo:
    """A planar YUV 4:2:0 clip (see module docstring for layouts and value ranges)."""

    y: np.ndarray  # T×H×W, uint8 or uint16
    u: np.ndarray  # T×H/2×W/2
    v: np.ndarray  # T×H/2×W/2
    fps: Fraction  # frame rate, frames per second
    bit_depth: int = 8  # 8 (uint8) or 10 (uint16)

    @property
    def frames(self) -> int:
        return int(self.y.shape[0])

    @property
    def height(self) -> int:
        return int(self.y.shape[1])

    @property
    def width(self) -> int:
        return int(self.y.shape[2])

    def to_8bit(self) -> "YUVVideo":
        """10-bit → 8-bit by rounding ``(v + 2) >> 2`` (clipped); 8-bit is returned as is."""
        if self.bit_depth == 8:
            return self

        def conv(p):
            return np.clip((p.astype(np.int32) + 2) >> 2, 0, 255).astype(np.uint8)

        return YUVVideo(conv(self.y), conv(self.u), conv(self.v), self.fps, 8)

    def to_10bit(self) -> "YUVVideo":
        """8-bit → 10-bit by ``v << 2`` (exact: ``to_10bit().to_8bit()`` is the identity)."""
        if self.bit_depth == 10:
            return self

        def conv(p):
            return p.astype(np.uint16) << 2

        return YUVVideo(conv(self.y), conv(self.u), conv(self.v), self.fps, 10)

    def head(self, n: int) -> "YUVVideo":
        """The first ``n`` frames."""
        return YUVVideo(self.y[:n], self.u[:n], self.v[:n], self.fps, self.bit_depth)


def write_y4m(path: Path, video: YUVVideo) -> None:
    """Write ``video`` as .y4m (``C420jpeg`` for 8-bit, ``C420p10`` little-endian for 10-bit)."""
    if video.width % 2 or video.height % 2:
        raise InputError(f"4:2:0 needs even sizes, got {video.width}x{video.height}")
    tag = "C420jpeg" if video.bit_depth == 8 else "C420p10 XYSCSS=420P10"
    dtype = np.uint8 if video.bit_depth == 8 else np.dtype("<u2")
    fps = Fraction(video.fps).limit_denominator(1001 * 1000)
    header = f"YUV4MPEG2 W{video.width} H{video.height} F{fps.numerator}:{fps.denominator} Ip A1:1 {tag}\n"
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        for t in range(video.frames):
            f.write(b"FRAME\n")
            for plane in (video.y[t], video.u[t], video.v[t]):
                f.write(np.ascontiguousarray(plane, dtype=dtype).tobytes())


def read_y4m(path: Path) -> YUVVideo:
    """Read a .y4m file → :class:`YUVVideo`. Raises :class:`InputError` on a malformed file."""
    data = Path(path).read_bytes()
    end = data.find(b"\n")
    if end < 0 or not data.startswith(_MAGIC):
        raise InputError(f"{path}: not a YUV4MPEG2 file")
    params = {}
    for tok in data[len(_MAGIC):end].split():
        params[tok[:1].decode()] = tok[1:].decode()
    try:
        w, h = int(params["W"]), int(params["H"])
    except (KeyError, ValueError) as e:
        raise InputError(f"{path}: y4m header without valid W/H") from e
    num, _, den = params.get("F", "25:1").partition(":")
    fps = Fraction(int(num), int(den or 1)) if int(den or 1) else Fraction(25)
    cs = params.get("C", "420jpeg")
    if cs in ("420", "420jpeg", "420mpeg2", "420paldv"):
        depth, sub = 8, True
    elif cs == "420p10":
        depth, sub = 10, True
    elif cs == "444":
        depth, sub = 8, False
    else:
        raise InputError(f"{path}: unsupported y4m colour space C{cs}")
    bps = 1 if depth == 8 else 2
    cw, ch = ((w + 1) // 2, (h + 1) // 2) if sub else (w, h)
    frame_bytes = (w * h + 2 * cw * ch) * bps
    ys, us, vs = [], [], []
    pos = end + 1
    dtype = np.uint8 if depth == 8 else np.dtype("<u2")
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0 or not data.startswith(b"FRAME", pos):
            raise InputError(f"{path}: bad FRAME marker at byte {pos}")
        pos = nl + 1
        if pos + frame_bytes > len(data):
            raise InputError(f"{path}: truncated frame at byte {pos}")
        buf = np.frombuffer(data, dtype=dtype, count=frame_bytes // bps, offset=pos)
        pos += frame_bytes
        ys.append(buf[: w * h].reshape(h, w))
        us.append(buf[w * h: w * h + cw * ch].reshape(ch, cw))
        vs.append(buf[w * h + cw * ch:].reshape(ch, cw))
    if not ys:
        raise InputError(f"{path}: no frames")
    y, u, v = np.stack(ys), np.stack(us), np.stack(vs)
    if not sub:
        if w % 2 or h % 2:
            raise InputError(f"{path}: 4:4:4 with odd size cannot be converted to 4:2:0")
        u, v = (_down2(p) for p in (u, v))
    if depth == 10:
        y, u, v = (p.astype(np.uint16) for p in (y, u, v))
    return YUVVideo(y, u, v, fps, depth)


def _down2(p: np.ndarray) -> np.ndarray:
    """T×H×W uint8 → T×H/2×W/2 by rounded 2×2 averaging."""
    s = p.astype(np.uint16)
    s = s[:, 0::2, 0::2] + s[:, 1::2, 0::2] + s[:, 0::2, 1::2] + s[:, 1::2, 1::2]
    return ((s + 2) >> 2).astype(np.uint8)


# BT.601 limited range, what FFmpeg's swscale assumes for untagged YUV: the same matrix is applied
# to source and decoded frames, so PSNR-RGB compares like with like for every codec.
_KR, _KB = 0.299, 0.114


def yuv420_to_rgb(video: YUVVideo) -> np.ndarray:
    """8-bit YUV 4:2:0 → ``T×H×W×3`` uint8 RGB (BT.601 limited range, nearest chroma upsampling)."""
    if video.bit_depth != 8:
        video = video.to_8bit()
    y = (video.y.astype(np.float32) - 16.0) * (255.0 / 219.0)
    u = np.repeat(np.repeat(video.u, 2, axis=1), 2, axis=2)[:, : video.height, : video.width]
    v = np.repeat(np.repeat(video.v, 2, axis=1), 2, axis=2)[:, : video.height, : video.width]
    cb = (u.astype(np.float32) - 128.0) * (255.0 / 224.0)
    cr = (v.astype(np.float32) - 128.0) * (255.0 / 224.0)
    kg = 1.0 - _KR - _KB
    r = y + 2.0 * (1.0 - _KR) * cr
    b = y + 2.0 * (1.0 - _KB) * cb
    g = (y - _KR * r - _KB * b) / kg
    rgb = np.stack([r, g, b], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
