"""Training losses of the tokenizer (reconstruction, LFQ entropy schedule, commitment)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms."""

    # weight of the mean squared error (pixels in [-1, 1])
    mse: float = 1.0
    # weight of the L1 error
    l1: float = 0.1
    # final weight of the LFQ entropy penalty E[H(q(z))] - γ·H(E[q(z)])
    entropy: float = 0.01
    # the entropy weight starts this many times higher ...
    entropy_start_mult: float = 3.0
    # ... and decays linearly to its final value over this many steps (paper: 2k)
    entropy_decay_steps: int = 2000
    # weight of the commitment loss (z - sg(q))²
    commit: float = 0.25


def entropy_weight(w: LossWeights, step: int) -> float:
    """The paper's schedule: ``mult·w`` at step 0, linear down to ``w`` at ``decay_steps``."""
    frac = min(max(step, 0) / max(w.entropy_decay_steps, 1), 1.0)
    return w.entropy * (w.entropy_start_mult + (1.0 - w.entropy_start_mult) * frac)


def reconstruction_loss(w: LossWeights, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Both ``B×3×T×H×W`` in [-1, 1] → scalar."""
    return w.mse * F.mse_loss(recon, target) + w.l1 * F.l1_loss(recon, target)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two tensors in [-1, 1] (peak-to-peak 2)."""
    mse = F.mse_loss(a.clamp(-1, 1).float(), b.float()).item()
    return 10 * torch.log10(torch.tensor(4.0 / max(mse, 1e-12))).item()
