"""A codec with no learning, as a floor for the tokenizer: each token's mean colour (s×s pixels,
averaged over the frames the token covers: frame 0 alone, then groups of f), in YCbCr with
uniform steps, DPCM-coded against the previous latent frame (first latent frame: left
neighbour), rate = zeroth-order entropy of the residuals per clip; decoded by bicubic
upsampling. Measured on the validation clips cut from ``train/`` (never ``eval/``)::

    python -m lab.studies.thumbnail_baseline --data runs/recipes/split/val

Session 8: 22.00 dB @ 0.0115 bpp (steps 2/32, 2/16) where mgv-default-v2 gave 21.07 @ 0.0118.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lab.train.evaluate import load_eval_clips

# RGB → YCbCr (BT.601, full range) on values in [-1, 1]
RGB_TO_YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def entropy_bits(x: torch.Tensor) -> float:
    """Zeroth-order entropy of the integers in ``x`` × their count (bits)."""
    _, c = np.unique(x.numpy().astype(np.int64), return_counts=True)
    p = c / c.sum()
    return float(-(p * np.log2(p)).sum() * x.numel())


def code_clip(video: torch.Tensor, qy: float, qc: float, s: int = 8, f: int = 4):
    """``video`` 1×3×T×H×W in [-1, 1] → (squared error sum, values, bits)."""
    fr = video[0].permute(1, 0, 2, 3)  # T×3×H×W
    t, _, h, w = fr.shape
    small = F.avg_pool2d(fr, s)
    groups = [small[:1]] + [small[i:i + f].mean(0, keepdim=True) for i in range(1, t, f)]
    ycc = torch.einsum("ij,tjhw->tihw", RGB_TO_YCC, torch.cat(groups))
    steps = torch.tensor([qy, qc, qc]).view(1, 3, 1, 1)
    q = torch.round(ycc / steps)
    res = q.clone()
    res[1:] = q[1:] - q[:-1]
    res[0, :, :, 1:] = q[0, :, :, 1:] - q[0, :, :, :-1]
    bits = sum(entropy_bits(res[:, k]) for k in range(3))
    rgb = torch.einsum("ij,tjhw->tihw", torch.linalg.inv(RGB_TO_YCC), q * steps)
    full = torch.cat([rgb[:1]] + [rgb[k:k + 1].expand(f, -1, -1, -1) for k in range(1, rgb.shape[0])])[:t]
    up = F.interpolate(full, size=(h, w), mode="bicubic", align_corners=False).clamp(-1, 1)
    return float(((up - fr) ** 2).sum()), up.numel(), bits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("runs/recipes/split/val"))
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--short-side", type=int, default=256)
    a = ap.parse_args()
    clips = load_eval_clips(a.data, a.frames, a.short_side)
    for qy, qc in [(2 / 16, 2 / 8), (2 / 32, 2 / 16), (2 / 64, 2 / 32)]:
        se = n = bits = px = 0
        for c in clips:
            e, k, b = code_clip(c.video, qy, qc)
            se, n, bits = se + e, n + k, bits + b
            px += c.video.shape[2] * c.video.shape[3] * c.video.shape[4]
        print(f"steps Y {qy:.4f} CbCr {qc:.4f}: {10 * math.log10(4 / (se / n)):.2f} dB PSNR-RGB @ {bits / px:.4f} bpp")


if __name__ == "__main__":
    main()
