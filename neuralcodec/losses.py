"""The distortion the encoder minimises where it optimises (code refinement, decoder adaptation):
MSE, plus an optional MS-SSIM term so that the PSNR it buys does not cost structure.

One source for the encoder's objective (:mod:`neuralcodec.refine`, :mod:`neuralcodec.finetune`)
and for the MS-SSIM window the metrics use (:mod:`neuralcodec.evaluate`)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["distortion", "msssim_window", "ms_ssim_frames"]


def msssim_window(height: int, width: int) -> Optional[int]:
    """The largest odd Gaussian window ≤ 11 that 5-scale MS-SSIM allows for this size, or None."""
    for win in (11, 9, 7, 5, 3):
        if min(height, width) > (win - 1) * 2 ** 4:
            return win
    return None


def ms_ssim_frames(a: torch.Tensor, b: torch.Tensor, data_range: float, win: int,
                   mean: bool = True) -> torch.Tensor:
    """MS-SSIM (pytorch-msssim: 5 scales, Gaussian window ``win``, σ 1.5) of frames ``a``, ``b``
    ``N×3×H×W`` in [0, ``data_range``] → the mean over the N frames (``mean``) or ``N``. The
    inputs go in channels-last: oneDNN's depthwise 1-D Gaussian filters run several times faster
    on them than on contiguous NCHW (forward and backward, 3.6× in one run of
    ``lab/studies/bench_msssim.py``; the same values and gradients)."""
    from pytorch_msssim import ms_ssim
    cl = torch.channels_last
    return ms_ssim(a.contiguous(memory_format=cl), b.contiguous(memory_format=cl),
                   data_range=data_range, size_average=mean, win_size=win)


def distortion(rec: torch.Tensor, target: torch.Tensor, msssim: float = 0.0) -> torch.Tensor:
    """``rec``, ``target``: ``1×3×T×H×W`` in [-1, 1] (``rec`` in any float type) → the scalar
    ``MSE + msssim · (1 − MS-SSIM)``: MSE in [-1, 1] units, MS-SSIM per frame on [0, 1] (``rec``
    clamped), averaged over the T frames, in float32 outside any autocast (bfloat16 filters give
    NaN). The term is left out when ``msssim`` is 0 or the frames are too small for 5 scales."""
    rec = rec.float()
    loss = F.mse_loss(rec, target)
    win = msssim_window(rec.shape[3], rec.shape[4]) if msssim > 0 else None
    if win is None:
        return loss
    with torch.autocast(rec.device.type, enabled=False):
        a = ((rec[0].transpose(0, 1) + 1) / 2).clamp(0, 1)
        b = ((target[0].transpose(0, 1).float() + 1) / 2)
        return loss + msssim * (1 - ms_ssim_frames(a, b, 1.0, win))
