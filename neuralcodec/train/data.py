"""Training data: frames of a folder of videos held in RAM, sampled as random crops.

Videos are decoded once with PyAV (to RGB, area-downscaled so the short side is at most
``max_short_side``) and cached as ``.npy`` files (uint8, T×H×W×3) in a cache folder. Batches
are random crops of ``1 + 4k`` consecutive frames, or single frames for image (first-frame)
mode, with random horizontal flips, drawn from a seeded generator.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List

import numpy as np
import torch

VIDEO_EXTS = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".264", ".h264", ".265", ".hevc", ".y4m"}


def decode_video_rgb(path: Path, max_short_side: int, max_frames: int = 100000) -> np.ndarray:
    """Decode ``path`` → uint8 array ``T×H×W×3`` (RGB), area-downscaled so that
    min(H, W) <= max_short_side (even sizes)."""
    import av

    frames = []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for fr in c.decode(s):
            w, h = fr.width, fr.height
            scale = min(1.0, max_short_side / min(w, h))
            tw, th = int(round(w * scale / 2)) * 2, int(round(h * scale / 2)) * 2
            frames.append(fr.reformat(width=tw, height=th, format="rgb24",
                                      interpolation="AREA").to_ndarray())
            if len(frames) >= max_frames:
                break
    if not frames:
        raise ValueError(f"{path}: no frames")
    return np.stack(frames)


@dataclass
class ClipSampler:
    """Random crops from a list of videos (uint8 ``T×H×W×3`` arrays)."""

    videos: List[np.ndarray]
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        w = np.array([v.shape[0] * v.shape[1] * v.shape[2] for v in self.videos], dtype=np.float64)
        self.weights = w / w.sum()

    def sample(self, batch: int, frames: int, size: int) -> torch.Tensor:
        """→ ``batch×3×frames×size×size`` float in [-1, 1]."""
        out = np.empty((batch, frames, size, size, 3), dtype=np.uint8)
        for b in range(batch):
            while True:
                v = self.videos[self.rng.choice(len(self.videos), p=self.weights)]
                t, h, w, _ = v.shape
                if t >= frames and h >= size and w >= size:
                    break
            t0 = self.rng.integers(0, t - frames + 1)
            y0 = self.rng.integers(0, h - size + 1)
            x0 = self.rng.integers(0, w - size + 1)
            clip = v[t0:t0 + frames, y0:y0 + size, x0:x0 + size]
            if self.rng.random() < 0.5:
                clip = clip[:, :, ::-1]
            out[b] = clip
        x = torch.from_numpy(out).permute(0, 4, 1, 2, 3).float()
        return x / 127.5 - 1.0


def load_folder(folder: Path, cache: Path, max_short_side: int = 360) -> List[np.ndarray]:
    """Decode every video in ``folder`` (cached in ``cache``) → list of uint8 arrays."""
    cache.mkdir(parents=True, exist_ok=True)
    vids = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in VIDEO_EXTS:
            continue
        st = p.stat()
        key = hashlib.sha1(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}|{max_short_side}".encode()).hexdigest()[:16]
        f = cache / f"{p.stem}-{key}.npy"
        if f.exists():
            arr = np.load(f, mmap_mode=None, allow_pickle=False)
        else:
            arr = decode_video_rgb(p, max_short_side)
            tmp = f.with_suffix(".tmp.npy")
            np.save(tmp, arr, allow_pickle=False)
            os.replace(tmp, f)
        vids.append(arr)
    if not vids:
        raise ValueError(f"no videos in {folder}")
    return vids
