"""Turn input videos into the raw sources every codec reads.

Each input is decoded once with PyAV, cut to ``frames`` frames, area-downscaled to fit inside
``max_size`` (aspect kept, sizes rounded down to even numbers, never upscaled) and written as

* ``<work>/<name>/source.y4m``: 8-bit YUV 4:2:0, the reference for every metric and the input of
  8-bit encoders and of ``mgv`` (which converts it to RGB itself);
* ``<work>/<name>/source10.y4m``: the same frames as 10-bit (``v << 2``), for vvenc, which needs
  10-bit input.

A source is rebuilt only when its recipe (input path, size, mtime, frames, max size) changes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

import numpy as np

from neuralcodec.errors import InputError
from neuralcodec.video_io import decode_frames, probe
from neuralcodec.weights import file_sha256

from .y4m import YUVVideo, read_y4m, write_y4m

VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".y4m", ".264", ".h264", ".265", ".hevc", ".ivf"}
RAW_STREAM_FPS = Fraction(25)  # raw elementary streams (.264) carry no usable frame rate


@dataclass
class Source:
    """A prepared sequence: its name, files and properties."""

    name: str  # sequence name (input file stem)
    input: str  # path of the original input video
    y4m: Path  # 8-bit yuv420p source
    y4m10: Path  # 10-bit yuv420p10le source
    width: int  # luma width in pixels (even)
    height: int  # luma height in pixels (even)
    frames: int  # number of frames
    fps: Fraction  # frame rate
    sha256: str  # sha256 of source.y4m, part of every cache key

    def to_dict(self) -> dict:
        return {"name": self.name, "input": self.input, "width": self.width, "height": self.height,
                "frames": self.frames, "fps": str(self.fps), "sha256": self.sha256}


def parse_size(text: str) -> Tuple[int, int]:
    """``"640x360"`` → ``(640, 360)``; raises :class:`InputError` on anything else."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise InputError(f"size must look like 640x360, got {text!r}") from e
    if w < 16 or h < 16:
        raise InputError(f"size must be at least 16x16, got {text!r}")
    return w, h


def fit_size(width: int, height: int, max_size: Optional[Tuple[int, int]]) -> Tuple[int, int]:
    """The largest even size ≤ ``max_size`` with the aspect of ``width×height`` (never upscales)."""
    scale = 1.0
    if max_size is not None:
        scale = min(1.0, max_size[0] / width, max_size[1] / height)
    w = max(2, int(width * scale) // 2 * 2)
    h = max(2, int(height * scale) // 2 * 2)
    return w, h


def find_inputs(paths: Iterable[str]) -> List[Path]:
    """Expand folders into their video files (sorted); files are taken as given."""
    out: List[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix.lower() in VIDEO_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise InputError(f"input not found: {p}")
    if not out:
        raise InputError("no input videos found")
    names = [p.stem for p in out]
    if len(set(names)) != len(names):
        raise InputError(f"input names must be unique (they name the sequences): {names}")
    return out


def decode_input(path: Path, frames: int, max_size: Optional[Tuple[int, int]]) -> YUVVideo:
    """Decode ``frames`` frames of ``path`` with PyAV → 8-bit 4:2:0 :class:`YUVVideo` (area-scaled)."""
    fps = probe(path).fps
    if path.suffix.lower() in (".264", ".h264", ".265", ".hevc"):
        fps = RAW_STREAM_FPS
    ys, us, vs = [], [], []
    for arr in decode_frames(path, "yuv420p", lambda w, h: fit_size(w, h, max_size), "AREA", frames):
        h, w = arr.shape[0] * 2 // 3, arr.shape[1]  # (H*3/2)×W: Y plane, then U and V of H/2×W/2
        ys.append(arr[:h])
        uv = arr[h:].reshape(2, h // 2, w // 2)
        us.append(uv[0])
        vs.append(uv[1])
    if not ys:
        raise InputError(f"{path}: no frames decoded")
    return YUVVideo(np.stack(ys), np.stack(us), np.stack(vs), Fraction(fps), 8)


def prepare_source(path: Path, work: Path, frames: int, max_size: Optional[Tuple[int, int]]) -> Source:
    """Decode/convert ``path`` once into ``work/<stem>/`` (reused when the recipe is unchanged)."""
    path = Path(path)
    st = path.stat()
    recipe = {"input": str(path.resolve()), "bytes": st.st_size, "mtime": int(st.st_mtime),
              "frames": frames, "max_size": list(max_size) if max_size else None, "version": 1}
    d = Path(work) / path.stem
    d.mkdir(parents=True, exist_ok=True)
    y8, y10, meta = d / "source.y4m", d / "source10.y4m", d / "source.json"
    if meta.exists() and y8.exists() and y10.exists():
        info = json.loads(meta.read_text())
        if info.get("recipe") == recipe:
            return Source(path.stem, str(path), y8, y10, info["width"], info["height"], info["frames"],
                          Fraction(info["fps"]), info["sha256"])
    video = decode_input(path, frames, max_size)
    write_y4m(y8, video)
    write_y4m(y10, video.to_10bit())
    src = Source(path.stem, str(path), y8, y10, video.width, video.height, video.frames, video.fps,
                 file_sha256(y8))
    meta.write_text(json.dumps({"recipe": recipe, **src.to_dict()}, indent=1))
    return src


def load_source_frames(src: Source) -> YUVVideo:
    """The 8-bit reference frames of ``src``."""
    return read_y4m(src.y4m)


def make_synthetic_clip(path: Path, frames: int = 9, width: int = 128, height: int = 96, seed: int = 0) -> Path:
    """Write a small synthetic .y4m (moving gradients, a moving square, mild noise) for smoke runs/tests."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ys, us, vs = [], [], []
    for t in range(frames):
        y = 60 + 80 * (0.5 + 0.5 * np.sin((xx + 3 * t) / 9.0)) * (0.5 + 0.5 * np.cos(yy / 13.0))
        x0, y0 = (5 + 4 * t) % (width - 24), (7 + 2 * t) % (height - 24)
        y[y0:y0 + 20, x0:x0 + 20] = 220
        y = y + rng.normal(0, 2.0, y.shape)
        ys.append(np.clip(np.rint(y), 16, 235).astype(np.uint8))
        cy, cx = yy[::2, ::2], xx[::2, ::2]
        us.append(np.clip(128 + 40 * np.sin((cx + t) / 7.0), 16, 240).astype(np.uint8))
        vs.append(np.clip(128 + 40 * np.cos((cy - t) / 5.0), 16, 240).astype(np.uint8))
    write_y4m(Path(path), YUVVideo(np.stack(ys), np.stack(us), np.stack(vs), Fraction(25), 8))
    return Path(path)
