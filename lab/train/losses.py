"""Training losses of the tokenizer: reconstruction (L2 + L1), the LFQ entropy penalty with the
paper's schedule, commitment; the weights of the perceptual (:mod:`neuralcodec.lpips`) and adversarial
(:mod:`.discriminator`) terms, which the loop adds when their weight is > 0."""
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
    # weight of the rate term: LFQ's marginal bit rate Σ_k h(E[p_k]) in bits per token (0 = off;
    # pushes bits that carry no information to a constant, which the entropy coder gets for free)
    rate: float = 0.0
    # weight of the LPIPS perceptual loss (0 = off; needs python -m lab.convert_lpips once)
    perceptual: float = 0.0
    # LPIPS backbone: "vgg16" or "alexnet"
    perceptual_net: str = "vgg16"
    # frames per clip that LPIPS compares (evenly spaced; bounds its cost on long clips)
    perceptual_frames: int = 3
    # weight of the adversarial (generator hinge) loss (0 = off: no discriminator is built)
    gan: float = 0.0
    # step at which the discriminator and the adversarial loss start
    gan_start: int = 0
    # weight of the LeCAM regularizer of the discriminator
    lecam: float = 0.001


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


def frame_subset(x: torch.Tensor, n: int) -> torch.Tensor:
    """``B×C×T×H×W`` → ``B×C×min(n,T)×H×W``: n evenly spaced frames, always frame 0."""
    t = x.shape[2]
    if n <= 0 or n >= t:
        return x
    idx = torch.linspace(0, t - 1, n, device=x.device).round().long()
    return x.index_select(2, idx)
