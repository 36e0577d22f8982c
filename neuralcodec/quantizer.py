"""Lookup-Free Quantization (MAGVIT-v2 §3.1) and its multi-level sibling, bit-plane FSQ.

Each of the K latent channels is quantized independently to one bit:

    q_k = sign(z_k),  with z_k <= 0 → -1 and z_k > 0 → +1.

**Bit order (normative, see bitstream_spec.md):** channel k is bit k of the token index,
least significant first: ``index = Σ_k 2^k · [q_k > 0]``. A dropped bit (rate selection) is
represented by the value 0 in the code tensor and by bit value 0 in the index.

Both quantizers map the encoder's output to *per-bit latents* ``B×K×…`` (:meth:`latents`)
whose signs are the bits, so everything after them (packing, entropy coding, the spec's sign
convention) is the same for both. :class:`PlaneQuantizer` (finite scalar quantization, Mentzer
et al. 2023, sent as bit planes) lets a channel carry 2^P levels instead of one sign, which
binary LFQ can only approximate by learning hash-like bit functions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import bit_weights


def sign_quantize(z: torch.Tensor) -> torch.Tensor:
    """``z`` any shape, float → same shape and dtype, values in {-1, +1} (z <= 0 → -1)."""
    return torch.where(z > 0, torch.ones_like(z), -torch.ones_like(z))


def codes_to_indices(codes: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Codes ``…×K×…`` in {-1, +1} along ``dim`` (K <= 62) → int64 indices with that dim
    removed: ``Σ_k 2^k·[code_k > 0]``."""
    k = codes.shape[dim]
    if k > 62:
        raise ValueError("at most 62 bits per index")
    shape = [1] * codes.dim()
    shape[dim] = k
    weights = bit_weights(k, codes.device).view(shape)
    return ((codes > 0).to(torch.int64) * weights).sum(dim=dim)


def indices_to_codes(indices: torch.Tensor, bits: int, dim: int = 1,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`codes_to_indices`: int indices → codes in {-1, +1} with a new
    dimension of size ``bits`` inserted at ``dim``."""
    idx = indices.to(torch.int64).unsqueeze(dim)
    shape = [1] * idx.dim()
    shape[dim] = bits
    masks = bit_weights(bits, indices.device).view(shape)
    return torch.where((idx & masks) != 0, 1.0, -1.0).to(dtype)


@dataclass
class LFQOutput:
    """Result of :meth:`LFQ.forward`."""

    codes: torch.Tensor  # B×K×T×H×W, {-1, +1} values (straight-through gradient to z)
    entropy_loss: torch.Tensor  # scalar: E[H(q(z))] - γ·H(E[q(z)])
    commit_loss: torch.Tensor  # scalar: mean (z - sg(q))²
    per_sample_entropy: torch.Tensor  # scalar, bits
    codebook_entropy: torch.Tensor  # scalar, bits (sum over sub-groups)
    # scalar, bits per token, differentiable (training only; 0 in eval): Σ_k h(E[p(c_k = +1)]),
    # the cost of coding each bit with its batch-marginal probability — a rate proxy whose
    # minimum makes uninformative bits constant (the codebook entropy rewards the opposite)
    bit_rate: torch.Tensor


class LFQ(nn.Module):
    """Lookup-free quantizer with the entropy penalty of MAGVIT-v2 eq. (5).

    The soft assignment of a latent vector z to code c is ``p(c|z) ∝ exp(-‖z - c‖²/τ)``,
    which factorizes over bits: ``p(c_k = +1 | z_k) = σ(4 z_k / τ)``. The per-sample entropy
    is therefore a sum of binary entropies; the codebook entropy ``H(E[q(z)])`` is estimated,
    as in the paper for 2^18 codes, over sub-groups of ``group_bits`` bits treated as
    independent.
    """

    def __init__(self, bits: int, group_bits: int = 9, temperature: float = 1.0,
                 diversity_gamma: float = 1.0) -> None:
        super().__init__()
        self.bits = bits
        self.group_bits = min(group_bits, bits)
        self.temperature = temperature
        self.diversity_gamma = diversity_gamma

    def latents(self, z: torch.Tensor) -> torch.Tensor:
        """Per-bit latents (the bits are their signs): ``z`` itself, ``B×K×…``."""
        return z

    def targets(self, latents: torch.Tensor) -> torch.Tensor:
        """Per-bit latents ``B×K×…`` → the values the codes approximate, ``B×K×…`` (itself)."""
        return latents

    def unbounded(self, latents: torch.Tensor) -> torch.Tensor:
        """Per-bit latents ``B×K×…`` → an encoder output z with ``latents(z)`` = them (itself)."""
        return latents

    def values(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``B×b×…`` (b <= K; values in {-1, 0, +1}, dropped bits absent or 0) → the
        value of every channel, ``B×K×…`` (the code itself, 0 where dropped)."""
        return _pad_channels(codes, self.bits)

    def decoder_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Stored codes → the codes the decoder reads: the same tensor (one sign per channel)."""
        return codes

    def steps(self, bits: int) -> torch.Tensor:
        """Quantization step of every channel when the first ``bits`` bits are stored: ``K``
        float32, 2 (the distance of -1 and +1) for a stored bit, 1 for a dropped one (whose
        value is 0 whatever the code)."""
        return (torch.arange(self.bits) < bits).float() + 1.0

    def forward(self, z: torch.Tensor) -> LFQOutput:
        """``z``: ``B×K×T×H×W`` float (unbounded)."""
        q = sign_quantize(z)
        codes = z + (q - z).detach()
        commit = F.mse_loss(z, q.detach())
        if not self.training:
            zero = z.new_zeros(())
            return LFQOutput(codes, zero, commit, zero, zero, zero)
        # the entropy terms are computed in float32 even under bf16 autocast (log-prob sums)
        with torch.autocast(z.device.type, enabled=False):
            per_sample, cb, rate = self._entropies(z)
        ent = per_sample - self.diversity_gamma * cb
        return LFQOutput(codes, ent, commit, per_sample.detach(), cb.detach(), rate)

    def _entropies(self, z: torch.Tensor):
        """Per-sample entropy, codebook entropy and marginal bit rate (bits, float32) of ``z``
        (``B×K×T×H×W``)."""
        flat = z.transpose(0, 1).reshape(self.bits, -1).t().float()  # N×K
        logit = 4.0 * flat / self.temperature
        p1 = torch.sigmoid(logit)
        # per-sample entropy (bits): Σ_k h(p_k)
        h = F.binary_cross_entropy_with_logits(logit, p1, reduction="none")
        per_sample = h.sum(1).mean() / math.log(2)
        # marginal bit rate (bits per token): Σ_k h(E[p_k])
        pm = p1.mean(0).clamp(1e-6, 1 - 1e-6)
        rate = -(pm * pm.log() + (1 - pm) * (1 - pm).log()).sum() / math.log(2)
        # codebook entropy over sub-groups of bits
        logp1, logp0 = F.logsigmoid(logit), F.logsigmoid(-logit)
        cb = flat.new_zeros(())
        for start in range(0, self.bits, self.group_bits):
            g = min(self.group_bits, self.bits - start)
            patt = (torch.arange(2 ** g, device=z.device).unsqueeze(1) >> torch.arange(g, device=z.device)) & 1
            patt = patt.to(flat.dtype)  # C×g
            logp = logp1[:, start:start + g] @ patt.t() + logp0[:, start:start + g] @ (1 - patt).t()
            avg = logp.exp().mean(0)  # the product distribution sums to 1 over codes
            cb = cb - (avg * torch.log(avg.clamp_min(1e-12))).sum() / math.log(2)
        return per_sample, cb, rate


class PlaneQuantizer(nn.Module):
    """Finite scalar quantization sent as bit planes.

    Each of the C = K / P encoder channels is bounded, ``v = tanh(z)`` in (-1, 1), and
    quantized to the 2^P cell midpoints ``Σ_j s_j 2^-(j+1)`` (s_j in {-1, +1}) by successive
    signs: ``s_0 = sign(v)``, ``s_j = sign(r_j)`` with ``r_j = v - Σ_{i<j} s_i 2^-(i+1)``.
    Bit ``k = j·C + c`` is plane j of channel c (most significant plane of every channel
    first), so dropping the trailing bits (rate selection, value 0) leaves a coarser
    quantization of the same channels and the decoder sees the middle of the remaining cell.
    Training passes the gradient of every plane straight through to ``v`` (FSQ's
    straight-through rounding, once per plane); no entropy penalty is needed.

    With ``sign_magnitude`` the stored bit of plane j >= 1 is ``s_j·s_0`` (1 = the magnitude
    ``|v|`` lies in the outer half of its cell) instead of ``s_j`` (1 = above the cell's
    middle): the same levels, but a channel's magnitude bits mean the same on both sides of 0,
    so neighbouring and successive tokens share them more often and the context coder
    (spec §7) codes them in fewer bytes. Only the stored bits change: :meth:`decoder_codes`
    turns them back into the offset codes the decoder reads, so the weights are the same.
    """

    def __init__(self, bits: int, planes: int, sign_magnitude: bool = False) -> None:
        super().__init__()
        if planes < 1 or bits % planes:
            raise ValueError("planes must divide bits")
        self.bits = bits
        self.planes = planes
        self.sign_magnitude = sign_magnitude

    def _flip(self, x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
        """``x`` ``B×b×…`` with the channels k >= C (planes after the first) multiplied by
        ``signs[:, k % C]`` (``B×C'×…``, C' <= C channels present; a missing sign reads as 0)."""
        c = self.bits // self.planes
        if x.shape[1] <= c:
            return x
        s = _pad_channels(signs[:, :c], c)
        channel = torch.arange(c, x.shape[1], device=x.device) % c  # the channel of each bit k >= C
        return torch.cat([x[:, :c], x[:, c:] * s[:, channel]], dim=1)

    def decoder_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Stored codes ``B×b×…`` ({-1, 0, +1}; 0 = dropped) → the offset-binary codes the
        decoder reads (the same tensor without ``sign_magnitude``): plane j >= 1 of channel c
        times the channel's sign code (exact in any float type; a dropped bit stays 0, and a
        channel without its sign has no lower planes either)."""
        if not self.sign_magnitude:
            return codes
        return self._flip(codes, codes)

    def latents(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` ``B×C×…`` (unbounded) → per-bit latents ``B×(P·C)×…``, plane-major: the
        residuals ``r_j`` whose signs are the bits (values in (-1, 1); with ``sign_magnitude``
        ``r_j·s_0`` for j >= 1)."""
        r = torch.tanh(z)
        out = []
        for j in range(self.planes):
            out.append(r)
            r = r - sign_quantize(r) * 2.0 ** -(j + 1)
        lat = torch.cat(out, dim=1)
        if self.sign_magnitude:  # planes j >= 1 as magnitude bits: r_j · s_0
            lat = self._flip(lat, sign_quantize(lat[:, :self.bits // self.planes]))
        return lat

    def targets(self, latents: torch.Tensor) -> torch.Tensor:
        """Per-bit latents ``B×K×…`` → the channel values ``v = tanh(z)``, ``B×C×…`` in (-1, 1)
        (plane 0's latents)."""
        return latents[:, :self.bits // self.planes]

    def unbounded(self, latents: torch.Tensor) -> torch.Tensor:
        """Per-bit latents ``B×K×…`` → an encoder output z ``B×C×…`` with ``latents(z)`` = them
        (``atanh`` of plane 0's latents, kept 1e-4 inside (-1, 1) so that z stays finite)."""
        return torch.atanh(self.targets(latents).clamp(-1 + 1e-4, 1 - 1e-4))

    def values(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``B×b×…`` (b <= K; values in {-1, 0, +1}, dropped bits absent or 0) → the
        decoded channel values ``Σ_j s_j 2^-(j+1)``, ``B×C×…`` in (-1, 1)."""
        c = self.bits // self.planes
        full = _pad_channels(self.decoder_codes(codes), self.bits)
        return sum(full[:, j * c:(j + 1) * c] * 2.0 ** -(j + 1) for j in range(self.planes))

    def steps(self, bits: int) -> torch.Tensor:
        """Cell width of every channel when the first ``bits`` bits are stored: ``C`` float32,
        ``2 / 2^n`` for a channel with n stored planes (2 when none is stored)."""
        c = self.bits // self.planes
        n = torch.tensor([sum(1 for j in range(self.planes) if j * c + ch < bits) for ch in range(c)])
        return 2.0 / 2.0 ** n.float()

    def forward(self, z: torch.Tensor) -> LFQOutput:
        """``z``: ``B×C×T×H×W`` float (unbounded) → :class:`LFQOutput` with the K bit
        planes as the decoder's (offset-binary) codes (the entropy fields 0: this quantizer has
        no entropy penalty)."""
        v = torch.tanh(z)
        q = self.decoder_codes(sign_quantize(self.latents(z).detach()))  # offset codes
        vp = v.repeat(1, self.planes, *([1] * (v.dim() - 2)))
        codes = q + (vp - vp.detach())
        zero = z.new_zeros(())
        return LFQOutput(codes, zero, zero, zero, zero, zero)


def _pad_channels(codes: torch.Tensor, k: int) -> torch.Tensor:
    """``B×b×…`` → ``B×k×…`` with channels b..k-1 zero (b <= k)."""
    b = codes.shape[1]
    if b >= k:
        return codes
    pad = codes.new_zeros((codes.shape[0], k - b) + tuple(codes.shape[2:]))
    return torch.cat([codes, pad], dim=1)


def make_quantizer(cfg) -> nn.Module:
    """The quantizer of a :class:`neuralcodec.configs.TokenizerConfig`."""
    if cfg.quantizer == "planes":
        return PlaneQuantizer(cfg.bits, cfg.planes, cfg.sign_magnitude)
    return LFQ(cfg.bits)
