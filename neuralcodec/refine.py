"""Encoder-side latent refinement: choose the codes the decoder decodes best, not the ones the
encoder network predicts.

The encoder is a network trained to be right on average (an *amortized* inference); for a
given video, other codes of the same size often decode closer to it. Learned image codecs
close this amortization gap by optimizing the latents of each input through the frozen
decoder at encode time (Campos et al. 2019, "Content adaptive optimization for neural image
compression"; Yang et al. 2020, "Improving inference for neural image compression").
:func:`refine_latents` does that for one segment: starting from the encoder's output it takes
``steps`` Adam steps on the unbounded channel values z (:meth:`PlaneQuantizer.unbounded`,
:meth:`LFQ.unbounded`) to lower the MSE between the decoded frames and the input frames, with
the codes truncated to the ``bits`` that will be stored and the gradient passed straight
through the quantizer (as in training), plus a rate term (weight ``rate``): each token of a
latent frame t >= 1 is pulled toward the value the codes of frame t − 1 decode to, by its squared
distance in quantization steps capped at ``rate_cap`` — the context coder pays for every token
that changes from frame to frame, and refinement without the term changes many for little
(on the validation clips its codes cost 27–46% more bytes; with the term 13–18% fewer than
that, for 0.02–0.29 dB). The decoder is the one ``mgv decode`` runs
(:func:`refine_model`: the model's default decoder variant where its registry names one,
adapted when the stream carries an update), and it runs as it will when decoding, chunk by
chunk with its causal state carried over (the chunks of :func:`neuralcodec.chunks.latent_chunks`,
which decoding uses too): each chunk is refined given the refined chunks before it, so memory
depends on the frame size, not on the segment's length. Each chunk keeps the best codes its
steps visited, not the last (at few bits a step can land on worse codes: on one clip at 6 bits
the last step's codes decoded 0.07 dB below the encoder's).

Each step decodes the codes that will be stored: the RDO's choice (:mod:`neuralcodec.rdo`, the
same λ, made in frame order on the current values given the codes already chosen), not the
plain signs — refinement that ignores the RDO run after it finds codes the RDO then replaces by
the previous frame's (validation, 6 bits: 1.2 dB of car's refinement gain undone that way).
It only changes which codes the encoder writes: the format is unchanged and any decoder reads
the result (spec §7, "Encoder freedom"). It costs about 3 decoder passes per step (forward and
backward).
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .adapt import adapted_model
from .chunks import (Progress, chunk_frame_range, decoder_step, encode_segment, frames_to_tensor,
                     latent_chunks, model_device)
from .configs import (DEFAULT_REFINE, REFINE_LR, REFINE_MAX_PIXELS, REFINE_MSSSIM, REFINE_RATE,
                      REFINE_RATE_CAP)
from .errors import InputError
from .layers import StreamingModule, streaming
from .losses import distortion
from .model import inference_dtype, mask_bits
from .rdo import select_codes
from .weights import DECODER_AUTO, decoder_variant

__all__ = ["DEFAULT_REFINE", "MAX_REFINE", "REFINE_LR", "REFINE_MAX_PIXELS", "check_refine_size",
           "stored_codes", "straight_codes", "repeat_cost",
           "encode_refined", "refine_latents", "refine_model"]

MAX_REFINE = 1000  # most steps an encode may ask for (a typo guard: 1000 steps take hours)


def _state(model: torch.nn.Module) -> Dict[torch.nn.Module, dict]:
    """The causal stream state of every :class:`StreamingModule` of ``model`` (the attributes
    its ``reset_stream`` resets; they are replaced between chunks, never changed in place)."""
    return {m: {k: v for k, v in vars(m).items() if k in ("buffer", "started")}
            for m in model.modules() if isinstance(m, StreamingModule)}


def _restore(state: Dict[torch.nn.Module, dict]) -> None:
    for m, attrs in state.items():
        for k, v in attrs.items():
            setattr(m, k, v)


def stored_codes(q, z: torch.Tensor, bits: int, lam: float,
            prev: Optional[torch.Tensor]) -> torch.Tensor:
    """Unbounded values ``1×C×n×h×w`` → the codes that will be stored for them,
    ``1×bits×n×h×w`` in {-1, +1}, no gradient: the RDO's choice with ``lam`` given ``prev``,
    the codes chosen for the latent frame before (:func:`~neuralcodec.rdo.select_codes`)."""
    with torch.no_grad():
        return select_codes(q.latents(z.detach()), q, bits, lam, prev)


def straight_codes(model, z: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
    """The decoder's input ``1×K×n×h×w`` (model dtype) for stored codes ``1×b×n×h×w``: their
    values as the decoder reads them (bits >= b 0), with the quantizer's straight-through
    gradient to ``z`` for each of the b bits (also where the RDO repeats a code: the gradient
    says which way the token's code should move, and may end the repeat)."""
    q = model.quantizer
    plain = mask_bits(q(z).codes, stored.shape[1])
    dec = q.decoder_codes(stored).to(plain.dtype)
    dec = torch.nn.functional.pad(dec, (0, 0, 0, 0, 0, 0, 0, plain.shape[1] - dec.shape[1]))
    return (dec + (plain - plain.detach())).to(model.dtype)


def repeat_cost(q, z: torch.Tensor, prev: Optional[torch.Tensor], stored: torch.Tensor,
                 cap: float) -> torch.Tensor:
    """The refinement's rate term for one chunk: per token of latent frames t >= 1 (of the
    segment), its squared distance in quantization steps from the value the codes stored for
    frame t − 1 decode to (the RDO's measure, :mod:`neuralcodec.rdo`), capped at ``cap`` so
    that a token that truly changed feels no pull; mean over the chunk's tokens. ``z``:
    ``1×C×n×h×w`` unbounded values (with gradient); ``prev``: ``1×b×1×h×w`` codes chosen for
    the latent frame before the chunk, None at the segment's start; ``stored``: the chunk's
    codes ``1×b×n×h×w`` (:func:`stored_codes`)."""
    step = q.steps(stored.shape[1]).to(z.device).view(1, -1, 1, 1, 1)
    v = q.targets(q.latents(z))
    vals = q.values(stored).to(v.dtype)
    if prev is not None:
        vals = torch.cat([q.values(prev).to(v.dtype), vals], 2)
    ref, cur = vals[:, :, :-1], (v[:, :, 1:] if prev is None else v)
    if cur.shape[2] == 0:
        return z.new_zeros(())
    return ((cur - ref) / step).square().sum(1).clamp(max=cap).sum() / v[:, 0].numel()


def refine_latents(model, frames: Sequence[np.ndarray], latents: torch.Tensor, bits: int,
                   steps: int, lr: float = REFINE_LR, progress: Progress = None,
                   rate: float = REFINE_RATE, rate_cap: float = REFINE_RATE_CAP,
                   msssim: float = REFINE_MSSSIM, rdo: float = 0.0) -> torch.Tensor:
    """Refine one segment's per-bit latents through the decoder (module docstring).

    ``frames``: the segment's T frames, ``H×W×3`` uint8 RGB (T at most ``1 + f·(t − 1)``;
    converted a chunk at a time); ``latents``: the encoder's per-bit
    latents ``1×K×t×h×w`` float32 (:func:`neuralcodec.chunks.encode_segment`); ``bits``: the
    bits per token that will be stored; ``steps``: Adam steps per chunk (0 → ``latents``
    unchanged; each chunk keeps, of the codes its steps visited — the encoder's first, the
    last step's result too — those of the lowest loss, decoded output clamped as decoding
    clamps it, so no chunk ends worse than it began); ``progress``: called with the number of
    frames of each chunk when it is done;
    ``rate``, ``rate_cap``: the rate term's weight and cap (module docstring; rate 0: none);
    ``msssim``: the weight of the MS-SSIM term of the distortion (:func:`~neuralcodec.losses.distortion`);
    ``rdo``: the λ of the RDO that will choose the stored codes (each step decodes its choice;
    0: the plain signs). ``select_codes(result, model.quantizer, bits, rdo)`` gives the codes
    the kept loss was measured on.
    → refined per-bit latents, same shape, float32 on the latents' device. The model's weights
    are not changed; a float32 model on a CPU with native bfloat16 runs the steps under
    bfloat16 autocast (twice as fast; the gradient is only a search direction)."""
    if steps <= 0:
        return latents
    q = model.quantizer
    tf = model.cfg.temporal_factor
    dev = model_device(model)
    t_all = latents.shape[2]
    height, width = frames[0].shape[:2]
    step = decoder_step(width, height, tf)
    z_all = q.unbounded(latents.float())
    auto = model.dtype == torch.float32 and inference_dtype(dev) == torch.bfloat16
    out = []
    prev = None  # the codes stored for the latent frame before the chunk (RDO, rate term)
    with streaming(model.decoder):
        for t0, n in latent_chunks(t_all, step):
            f0, f1 = chunk_frame_range(t0, n, tf)
            f1 = min(len(frames), f1)
            target = model.pad_spatial(frames_to_tensor(list(frames[f0:f1]), dev))
            before = _state(model.decoder)
            z = z_all[:, :, t0:t0 + n].clone().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=lr)

            def objective() -> torch.Tensor:  # this chunk's loss for the current z
                _restore(before)
                with torch.autocast(dev.type, torch.bfloat16, enabled=auto):
                    stored = stored_codes(q, z, bits, rdo, prev)
                    rec = model.decoder(straight_codes(model, z, stored))
                    # clamped as decoding clamps: judged by what will be decoded
                    loss = distortion(rec[:, :, :f1 - f0].clamp(-1, 1), target, msssim)
                    if rate > 0:
                        loss = loss + rate * repeat_cost(q, z, prev, stored, rate_cap)
                return loss

            best, best_z = float("inf"), None
            for _ in range(steps):
                with torch.enable_grad():
                    loss = objective()
                    z.grad, = torch.autograd.grad(loss, [z])
                if loss.item() < best:  # the codes of every step are candidates, the encoder's too
                    best, best_z = loss.item(), z.detach().clone()
                opt.step()
            with torch.enable_grad():  # the same (autograd) path as the steps' losses
                if objective().item() < best:
                    best_z = z.detach()
            z = best_z
            _restore(before)
            with torch.no_grad():  # carry the state of the codes actually chosen
                stored = stored_codes(q, z, bits, rdo, prev)
                model.decoder(straight_codes(model, z, stored))
            out.append(z)
            prev = stored[:, :, -1:]
            if progress:
                progress(f1 - f0)
    return q.latents(torch.cat(out, dim=2)).float()


def refine_model(model, ad=None, decoder: str = DECODER_AUTO):
    """The model whose decoder refinement optimises the codes for: ``model`` with the decoder
    ``decoder`` chooses (:func:`~neuralcodec.weights.decoder_variant`; default ``auto``, the one
    ``mgv decode`` runs on segments no ADAPT record covers), changed by the
    :class:`~neuralcodec.adapt.Adaptation` ``ad`` when given (as the stream's decode changes
    it), cast to ``model``'s device and floating type, sharing its encoder and quantizer;
    ``model`` itself when that is its own decoder and no ``ad``. Codes refined through another
    decoder than the one that decodes them keep little of their gain (v6, presets of 2026-12-07:
    +0.74 dB through its own decoder, +0.22 dB of it as its fast variant decodes them)."""
    light = decoder_variant(model, decoder)
    if ad is not None:
        light = adapted_model(light if light is not None else model, ad)
    if light is None:
        return model
    p = next(model.parameters())
    light.decoder.to(device=p.device, dtype=p.dtype)
    return light.train(model.training)


def check_refine_size(width: int, height: int, steps: int) -> None:
    """Raise :class:`InputError` when ``steps`` > 0 and a ``width×height`` frame exceeds
    :data:`REFINE_MAX_PIXELS` (the backward pass's memory grows with the frame)."""
    if steps > 0 and width * height > REFINE_MAX_PIXELS:
        raise InputError(f"--refine supports frames up to {REFINE_MAX_PIXELS} pixels (1920x1088; "
                         f"memory), got {width}x{height}: use --refine 0")


def encode_refined(model, it: Iterator[np.ndarray], meta, seg_frames: int, bits: int, steps: int,
                   progress: Progress = None, rdo: float = 0.0) -> Tuple[int, Optional[torch.Tensor]]:
    """:func:`neuralcodec.chunks.encode_segment` followed by :func:`refine_latents` at
    ``bits`` with ``steps`` (0: encode_segment alone) → (frames read, per-bit latents
    ``1×K×t×h×w``) or (0, None) at the end; ``rdo``: the λ that will choose the stored codes
    (:func:`refine_latents`). With refinement the segment's frames are kept
    until it is refined and ``progress`` counts refined frames (the slow part). The callers
    check the frame size once, before the first segment (:func:`check_refine_size`)."""
    if steps <= 0:
        return encode_segment(model, it, meta, seg_frames, progress)
    kept: List[np.ndarray] = []

    def tap() -> Iterator[np.ndarray]:
        for f in it:
            kept.append(f)
            yield f
            if len(kept) == seg_frames:  # pull no frame of the next segment
                return

    n, latents = encode_segment(model, tap(), meta, seg_frames)
    if n == 0:
        return 0, None
    return n, refine_latents(model, kept[:n], latents, bits, steps, progress=progress, rdo=rdo)
