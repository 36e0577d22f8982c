"""Adversarial training machinery, kept out of the tokenizer: a 3D PatchGAN discriminator,
hinge losses and LeCAM regularization (Tseng et al. 2021, as used by MAGVIT-v2 / Open-MAGVIT2).

::

    video B×3×T×H×W in [-1, 1]
      │ conv (3×4×4, stride 1×2×2) → LeakyReLU
      │ [conv (3×4×4, stride 1×2×2) → GroupNorm → LeakyReLU] × (layers - 1)
      │ conv (3×4×4, stride 1) → GroupNorm → LeakyReLU
      ▼ conv (3×4×4, stride 1) → logits B×1×T×h×w (one per space-time patch)

Temporal kernels are 3 with zero padding 1 and stride 1, so the same network judges images
(T = 1) and clips of any length.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Size of the 3D PatchGAN."""

    # channels of the first layer (doubled per layer, capped at 8×)
    channels: int = 64
    # number of stride-2 layers (receptive field grows with it)
    layers: int = 3
    # GroupNorm groups (channels must be divisible)
    groups: int = 8


class PatchDiscriminator3D(nn.Module):
    """``B×3×T×H×W`` in [-1, 1] → patch logits ``B×1×T×h×w`` (unbounded)."""

    def __init__(self, cfg: DiscriminatorConfig = DiscriminatorConfig()) -> None:
        super().__init__()
        if cfg.layers < 1 or cfg.channels % cfg.groups:
            raise ValueError("need layers >= 1 and channels divisible by groups")
        k, p = (3, 4, 4), (1, 1, 1)
        c = cfg.channels
        mods = [nn.Conv3d(3, c, k, (1, 2, 2), p), nn.LeakyReLU(0.2)]
        for i in range(1, cfg.layers + 1):
            c_out = cfg.channels * min(2 ** i, 8)
            stride = (1, 2, 2) if i < cfg.layers else (1, 1, 1)
            mods += [nn.Conv3d(c, c_out, k, stride, p, bias=False),
                     nn.GroupNorm(cfg.groups, c_out), nn.LeakyReLU(0.2)]
            c = c_out
        mods.append(nn.Conv3d(c, 1, k, 1, p))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LeCAM(nn.Module):
    """LeCAM regularizer: EMAs of the mean real / fake logits (buffers, checkpointed) and
    ``R = E[relu(D(x) - α_F)²] + E[relu(α_R - D(G(z)))²]``."""

    def __init__(self, decay: float = 0.999) -> None:
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        r, f = real.float().mean(), fake.float().mean()
        if not bool(self.started):
            self.ema_real.copy_(r)
            self.ema_fake.copy_(f)
            self.started.fill_(True)
        else:
            self.ema_real.lerp_(r, 1 - self.decay)
            self.ema_fake.lerp_(f, 1 - self.decay)

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """Logits of real and fake → scalar penalty (>= 0)."""
        return (F.relu(real.float() - self.ema_fake).pow(2).mean()
                + F.relu(self.ema_real - fake.float()).pow(2).mean())


def d_hinge_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: ``mean(relu(1 - D(x))) + mean(relu(1 + D(G(z))))``."""
    return F.relu(1.0 - real.float()).mean() + F.relu(1.0 + fake.float()).mean()


def g_adv_loss(fake: torch.Tensor) -> torch.Tensor:
    """Generator (tokenizer) adversarial loss: ``-mean(D(G(z)))``."""
    return -fake.float().mean()
