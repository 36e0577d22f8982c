"""Encoder-side rate–distortion optimisation: choices the format leaves to the encoder.

The context coder (spec §7) codes one flag per token of an inter frame and spends bits only on
the tokens whose flag says "changed from the previous latent frame". Plain quantization flips
tokens whose latents sit near a cell boundary from frame to frame although the picture did not
change, and every flip costs a flag plus the token's bits. :func:`select_codes` makes the
decision a real encoder makes (x265's RDO, DCVC's skip mode): a token of latent frame t >= 1
repeats the code chosen at t − 1 when that raises its quantization error by at most ``lam``

    Σ_c ((v_c − value_c(code_{t−1})) / Δ_c)² − Σ_c ((v_c − value_c(code_t)) / Δ_c)² <= lam

with ``v`` the quantizer's continuous channel values, ``value`` what the decoder reads from
the first ``bits`` bits and ``Δ_c`` the channel's quantization step at that many bits
(:meth:`PlaneQuantizer.targets`, :meth:`~PlaneQuantizer.values`, :meth:`~PlaneQuantizer.steps`;
for LFQ the latents, the signs and 2). Measuring the error in steps makes one λ fit every
rate: a repeat may move a channel by about sqrt(λ) cells, whether a cell is a whole bit plane
wide (few bits) or a quarter of that (all 18). Decisions run in frame order over the codes
actually chosen, restart with every segment (its first latent frame is intra) and never
change the format: any reader decodes the result. ``lam = 0`` only repeats tokens that are
unchanged anyway, i.e. gives the plain codes.

Measured on the validation clips held apart from ``../shared/data/train`` with mgv-default-v3
(33 frames; ``python -m lab.studies.rdo_sweep``, table in ``lab/notes/rdo.md``): the
default λ = 2 stores 42–46 % fewer bits at 6–18 bits per token for 0.02–0.19 dB PSNR-RGB, and
its points lie on the convex hull of all (bits, λ) points at 6, 12 and 18 bits; λ = 4 saves
47–52 % for 0.04–0.5 dB.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .configs import DEFAULT_RDO as DEFAULT_LAMBDA
from .quantizer import sign_quantize


def select_codes(latents: torch.Tensor, quantizer: nn.Module, bits: int,
                 lam: float = DEFAULT_LAMBDA, prev: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-bit latents of one segment ``1×K×t×h×w`` (float, :meth:`Tokenizer.encode_latents`)
    → the codes to store, ``1×bits×t×h×w`` in {-1, +1} (same dtype and device): the signs of
    the first ``bits`` latents, except that a token of latent frame t >= 1 repeats the code of
    frame t − 1 when that adds at most ``lam`` to its squared error in quantization steps
    (module docstring).
    ``quantizer``: the model's (``model.quantizer``); ``prev``: the codes chosen for the latent
    frame before ``latents``' first one, ``1×bits×1×h×w``, when ``latents`` continue a segment
    (its first frame may then repeat them too: the decisions of a segment taken a part at a
    time are those of the whole); None: ``latents`` start a segment."""
    codes = sign_quantize(latents[:, :bits])
    if lam <= 0 or (codes.shape[2] < 2 and prev is None):
        return codes
    scale = 1.0 / quantizer.steps(bits).to(latents.device).view(1, -1, 1, 1, 1)
    target = quantizer.targets(latents).float() * scale  # 1×C×t×h×w, in steps
    vals = quantizer.values(codes).float() * scale
    err_new = (target - vals).square().sum(1)  # 1×t×h×w
    out = codes.clone()
    last = None if prev is None else (prev[:, :, 0].to(codes.dtype),
                                      (quantizer.values(prev).float() * scale)[:, :, 0])
    for t in range(codes.shape[2]):
        if last is not None:
            err_prev = (target[:, :, t] - last[1]).square().sum(1)  # 1×h×w
            repeat = (err_prev - err_new[:, t] <= lam).unsqueeze(1)
            out[:, :, t] = torch.where(repeat, last[0], codes[:, :, t])
            vals[:, :, t] = torch.where(repeat, last[1], vals[:, :, t])
        last = out[:, :, t], vals[:, :, t]
    return out
