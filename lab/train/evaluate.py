"""Rate–distortion evaluation of a tokenizer on a folder of videos.

For every rate point b (leading bits kept, the rest read as 0 by the decoder) it reports
bits per pixel of the raw (not entropy-coded) payload, PSNR and, when ``pytorch-msssim`` is
installed, MS-SSIM; at the full rate also the codebook usage:

* ``bit_usage``: fraction of the K bits whose mean over all tokens is neither 0 nor 1
  (a bit that is constant carries nothing);
* ``token_entropy``: entropy (bits) of the empirical distribution of token indices;
* ``bit_entropy``: Σ_k h(mean of bit k), an upper bound of the former.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from neuralcodec.model import Tokenizer
from neuralcodec.quantizer import codes_to_indices
from .data import VIDEO_EXTS, decode_video_rgb


@dataclass
class EvalClip:
    """One evaluation clip: ``1×3×T×H×W`` float in [-1, 1] and its name."""

    name: str
    video: torch.Tensor


def load_eval_clips(folder: Path, max_frames: int = 17, short_side: int = 288) -> List[EvalClip]:
    """The first ``max_frames`` frames of every video in ``folder`` (area-downscaled to a
    short side <= ``short_side``) → clips. Missing folder → empty list."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    clips = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in VIDEO_EXTS:
            arr = decode_video_rgb(p, short_side, max_frames=max_frames)
            x = torch.from_numpy(arr).permute(3, 0, 1, 2).unsqueeze(0).float() / 127.5 - 1.0
            clips.append(EvalClip(p.stem, x))
    return clips


def _ms_ssim(a: torch.Tensor, b: torch.Tensor) -> Optional[float]:
    """Mean MS-SSIM over the frames of ``1×3×T×H×W`` tensors in [-1, 1]; None when
    pytorch-msssim is missing or the frames are too small for its 5 scales."""
    try:
        from pytorch_msssim import ms_ssim
    except ImportError:
        return None
    if min(a.shape[-2:]) <= 160:
        return None
    fa = (a[0].transpose(0, 1).float() + 1) / 2
    fb = (b[0].transpose(0, 1).float().clamp(-1, 1) + 1) / 2
    return float(ms_ssim(fa, fb, data_range=1.0, size_average=True))


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


@torch.no_grad()
def evaluate(model: Tokenizer, clips: Sequence[EvalClip], rates: Sequence[int]) -> List[Dict]:
    """``model`` (eval mode is set here) on ``clips`` → one dict per rate b in ``rates``:
    ``{"bits", "bpp", "psnr", "ms_ssim"}`` (the full rate K is always included), plus ``bit_usage``, ``token_entropy``,
    ``bit_entropy`` on the full-rate row. PSNR is over all pixels of all clips (peak 255)."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    k = model.cfg.bits
    rates = sorted({min(int(b), k) for b in rates if int(b) > 0} | {k}, reverse=True)
    sse = {b: 0.0 for b in rates}
    ssim = {b: [] for b in rates}
    npix, nbits = 0, {b: 0 for b in rates}
    ones = torch.zeros(k, dtype=torch.float64)
    ntok = 0
    hist = {}
    for clip in clips:
        x = clip.video.to(dev)
        _, _, t, h, w = x.shape
        codes = model.encode(x)
        flat = codes.transpose(0, 1).reshape(k, -1)
        ones += (flat > 0).double().sum(1).cpu()
        ntok += flat.shape[1]
        idx, cnt = np.unique(codes_to_indices(codes).flatten().cpu().numpy(), return_counts=True)
        for i, c in zip(idx.tolist(), cnt.tolist()):
            hist[i] = hist.get(i, 0) + c
        npix += t * h * w
        for b in rates:
            y = model.decode(codes, bits=b)[:, :, :t, :h, :w]
            sse[b] += F.mse_loss(y.float(), x.float(), reduction="sum").item() / 3
            nbits[b] += b * codes[0, 0].numel() * codes.shape[0]
            m = _ms_ssim(y, x)
            if m is not None:
                ssim[b].append(m)
    model.train(was)
    rows = []
    for b in rates:
        mse = sse[b] / max(npix, 1) / 4.0  # [-1,1] → [0,1] scale
        row = {"bits": b, "bpp": nbits[b] / max(npix, 1),
               "psnr": 10 * math.log10(1.0 / max(mse, 1e-12)),
               "ms_ssim": float(np.mean(ssim[b])) if ssim[b] else None}
        if b == k and ntok:
            mean = (ones / ntok).numpy()
            row["bit_usage"] = float(((mean > 0) & (mean < 1)).mean())
            counts = np.array(list(hist.values()), dtype=np.float64)
            row["token_entropy"] = _entropy(counts / counts.sum())
            row["bit_entropy"] = float(sum(_entropy(np.array([m, 1 - m])) for m in mean))
        rows.append(row)
    return rows
