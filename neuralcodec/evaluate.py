"""Evaluation: the codec's one "encode, decode, measure" path and its quality metrics.

Every script that reports quality goes through here — ``tools/eval_model.py`` (a model on a
folder of clips), the RD harness (``benchmarks/rd``, PSNR and MS-SSIM of any codec's decoded
frames), the speed benchmark and the lab's studies — so that a dB here is a dB there.

* :func:`psnr` — PSNR of two uint8 clips, squared error pooled over all frames and channels;
* :func:`psnr_from_mse` / :func:`frame_mse` — per-frame PSNR, capped at :data:`PSNR_CAP`;
* :func:`ms_ssim_rgb` — mean per-frame MS-SSIM of RGB clips (``pytorch-msssim``);
* :func:`measure` — compress a clip at one rate point through :func:`neuralcodec.codec.compress`
  (real stream bytes, headers included), decompress it, and measure → :class:`RatePoint`.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from . import codec
from .errors import InputError
from .losses import ms_ssim_frames, msssim_window
from .options import EncodeOptions

PSNR_CAP = 100.0  # dB reported for a frame (or plane, or clip) without error
# The knee of a model's nested-rate curve, where its default rate sits (registry default_bits):
# the last step up to the default must gain at least this much PSNR-RGB per doubling of the
# stream's bytes (x265 medium gains 2.4-4.3 dB per doubling at 0.006-0.1 bpp on foreman, RD cache).
KNEE_DB_PER_DOUBLING = 1.0


def psnr_from_mse(mse, peak: float = 255.0) -> np.ndarray:
    """PSNR in dB of each MSE (float array-like), capped at :data:`PSNR_CAP` where ``mse == 0``."""
    mse = np.asarray(mse, dtype=np.float64)
    with np.errstate(divide="ignore"):
        p = 10.0 * np.log10(peak * peak / mse)
    return np.minimum(p, PSNR_CAP)


def frame_mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MSE per frame of two ``T×…`` arrays of equal shape → ``T`` float64 (InputError when the
    shapes differ)."""
    if a.shape != b.shape:
        raise InputError(f"shape mismatch: {a.shape} vs {b.shape}")
    d = a.astype(np.float64) - b.astype(np.float64)
    return (d * d).reshape(d.shape[0], -1).mean(axis=1)


def psnr(ref: np.ndarray, dec: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB of two clips of equal shape (e.g. ``T×H×W×3`` uint8 RGB), the squared error
    pooled over every sample (not a mean of per-frame PSNRs), capped at :data:`PSNR_CAP`."""
    return float(psnr_from_mse(frame_mse(ref, dec).mean(), peak))


def ms_ssim_rgb(ref_rgb: np.ndarray, dec_rgb: np.ndarray, batch: int = 8) -> Dict[str, float]:
    """Mean per-frame MS-SSIM of two ``T×H×W×3`` uint8 RGB clips (data range 255) →
    ``{"ms_ssim", "ms_ssim_db" (= -10·log10(1 - ms_ssim)), "ms_ssim_win"}``; ``{}`` when the
    frames are too small for 5 scales. The standard 11-tap window is used when the short side
    is > 160; smaller frames use the largest window that fits."""
    import torch

    if ref_rgb.shape != dec_rgb.shape:
        raise InputError(f"shape mismatch: {ref_rgb.shape} vs {dec_rgb.shape}")
    win = msssim_window(ref_rgb.shape[1], ref_rgb.shape[2])
    if win is None:
        return {}
    vals = []
    with torch.no_grad():
        for i in range(0, ref_rgb.shape[0], batch):
            a = torch.from_numpy(ref_rgb[i:i + batch]).permute(0, 3, 1, 2).float()
            b = torch.from_numpy(dec_rgb[i:i + batch]).permute(0, 3, 1, 2).float()
            vals.append(ms_ssim_frames(a, b, 255.0, win, mean=False))
    m = float(torch.cat(vals).mean().clamp(0.0, 1.0))
    db = PSNR_CAP if m >= 1.0 else min(PSNR_CAP, -10.0 * math.log10(1.0 - m))
    return {"ms_ssim": m, "ms_ssim_db": db, "ms_ssim_win": win}


def knee_bits(points: Sequence[Tuple[int, float, float]],
              min_db_per_doubling: float = KNEE_DB_PER_DOUBLING) -> int:
    """The default rate of a model from its measured nested-rate curve: ``points`` are
    (bits, bytes, PSNR dB) of the same clips at each measured bit count (bytes summed, PSNR
    pooled) → the largest bits b such that every step between consecutive measured points up
    to b gains at least ``min_db_per_doubling`` dB per doubling of the bytes (the lowest point
    always qualifies). ValueError when ``points`` is empty."""
    pts = sorted(points)
    if not pts:
        raise ValueError("no rate points")
    best = pts[0][0]
    for (_, r0, q0), (b1, r1, q1) in zip(pts, pts[1:]):
        if r1 <= r0 or (q1 - q0) / math.log2(r1 / r0) < min_db_per_doubling:
            break
        best = b1
    return int(best)


@dataclass(frozen=True)
class RatePoint:
    """One clip coded at one rate point and measured."""

    bits: int  # bits per token stored (b <= K; under rate control the most a segment may keep)
    frames: int  # frames coded
    width: int  # frame width in pixels
    height: int  # frame height in pixels
    bytes: int  # size of the whole .mgv stream, headers included
    bpp: float  # bits per pixel of the stream: 8·bytes / (frames·width·height)
    mse: float  # mean squared error per RGB sample, 8-bit scale
    psnr_rgb: float  # dB from ``mse`` (peak 255, capped at PSNR_CAP)
    ms_ssim: Optional[float]  # mean per-frame MS-SSIM on RGB; None when the frames are too small
    encode_s: float  # wall seconds of compress
    decode_s: float  # wall seconds of decompress
    stream: bytes  # the stream itself (left out of :meth:`row`)

    def row(self) -> dict:
        """The measurements as a JSON-ready dict (the stream left out)."""
        d = asdict(self)
        del d["stream"]
        return d


def pooled_psnr(points: Sequence[RatePoint]) -> float:
    """PSNR-RGB of several measured clips taken together: their squared error pooled over every
    pixel (not a mean of the clips' PSNRs) → dB, capped at :data:`PSNR_CAP`."""
    npix = sum(p.frames * p.width * p.height for p in points)
    return float(psnr_from_mse(sum(p.mse * p.frames * p.width * p.height for p in points) / npix))


def measure(model, frames: np.ndarray, options: Optional[EncodeOptions] = None, *,
            fps: Fraction = Fraction(25), ssim: bool = True, **fields) -> RatePoint:
    """Compress ``frames`` (``T×H×W×3`` uint8 RGB) with ``model`` under ``options`` (an
    :class:`~neuralcodec.options.EncodeOptions`; ``fields`` such as ``bits=…``, ``rdo=…``
    replace its fields) through the codec API exactly as ``mgv encode`` does, decompress the
    stream, and measure it against the source → :class:`RatePoint`. ``ssim=False`` skips
    MS-SSIM (it costs about a decode's time)."""
    opts = EncodeOptions.of(options, **fields).checked(model)
    t, h, w, _ = frames.shape
    t0 = time.perf_counter()
    data = codec.compress(model, frames, opts, fps=fps)
    t1 = time.perf_counter()
    _, rec = codec.decompress(data, model=model)
    t2 = time.perf_counter()
    if rec.shape != frames.shape:
        raise InputError(f"decoded {rec.shape}, expected {frames.shape}")
    m = ms_ssim_rgb(frames, rec).get("ms_ssim") if ssim else None
    mse = float(frame_mse(frames, rec).mean())
    return RatePoint(bits=opts.stored_bits(model), frames=t, width=w, height=h, bytes=len(data),
                     bpp=len(data) * 8 / (t * h * w), mse=mse, psnr_rgb=float(psnr_from_mse(mse)),
                     ms_ssim=m, encode_s=t1 - t0, decode_s=t2 - t1, stream=data)
