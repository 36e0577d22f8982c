"""Encoder side of ``mgv encode --joint N`` (the veryslow preset): fit the decoder update and
the codes *together*, in passes over the video.

``--adapt`` fits the update to the encoder's codes (random crops of sampled windows, codes fixed)
and ``--refine`` then moves the codes through the adapted decoder: two searches that each decode
the video forward and backward. Here one search does both, as overfitted codecs fit their
latents and their decoder together (Cool-chic, C3): each pass walks every segment of a group
chunk by chunk, as the stream's decode does (:func:`~neuralcodec.chunks.latent_chunks`, the
causal state carried), and each chunk's step moves its codes (refinement's Adam on the unbounded
values, straight through the RDO's choice, with its rate term: :mod:`neuralcodec.refine`) and the
update (the tensors of :func:`~neuralcodec.finetune.adapt_names` at
:data:`JOINT_LR`, cosine decay over all the steps) with the same gradient,
on whole frames of every frame the group holds — what the decoder will decode, nothing held out.
The update is then quantized (Δ ≈ each tensor's rms, :func:`~neuralcodec.finetune.quantize`) and
``refine`` steps per chunk adjust the codes to the quantized decoder
(:func:`~neuralcodec.refine.refine_latents`, which keeps the best codes it visits).

The update is sent when the group's point (its tokens' bytes and the record's, and the MSE of its
frames decoded through the adapted decoder) lies above the plain encoder's curve there: its gain
over the plain codes is at least the plain curve's slope (dB per doubling of bytes, measured
from the stream's bits to one bit plane more, or from a plane fewer at the model's K bits) times
the doublings of bytes it costs. Otherwise the group's codes are refined through the plain
decoder (``refine`` steps; the plain codes when 0), as ``--refine`` alone would.

Chosen on validation cuts of ``../shared/data/train`` (``lab/studies/joint_fit.py``,
``lab/studies/joint_tune.py``, ``lab/notes/joint_fit.md``).
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import container as ct
from .adapt import Adaptation, TensorUpdate, tensor_names
from .chunks import Progress, chunk_frame_range, decoder_step, encode_segment, frames_to_tensor, latent_chunks
from .configs import DECODER_FULL, REFINE_LR, REFINE_RATE, REFINE_RATE_CAP
from .errors import InputError
from .finetune import ADAPT_MSSSIM, adapt_names, decayed_lr, float_model, quantize
from .layers import streaming
from .losses import distortion
from .model import inference_dtype
from .payload import encode_payload
from .rdo import select_codes
from .refine import refine_latents, refine_model, repeat_cost, stored_codes, straight_codes
from .sampling import segment_groups
from .video_io import VideoMeta

__all__ = ["MAX_JOINT", "JOINT_LR", "joint_steps", "fit_group", "fit_joint"]

MAX_JOINT = 1000  # most passes --joint accepts
JOINT_LR = 5e-3  # Adam learning rate of the update in the joint fit (cosine decay to LR_FLOOR of it)
Frames = Callable[[int, int], List[np.ndarray]]  # (first frame, count) → frames of the video


def _chunks(latent_t: int, width: int, height: int, tf: int) -> List[Tuple[int, int, int, int]]:
    """A segment's decoder chunks as (first latent frame, latent frames, first frame, end
    frame), its frames counted from the segment's start."""
    out = []
    for t0, n in latent_chunks(latent_t, decoder_step(width, height, tf)):
        out.append((t0, n, *chunk_frame_range(t0, n, tf)))
    return out


def joint_steps(header: ct.Header, frames: int, passes: int, tf: int) -> int:
    """The chunk steps ``passes`` passes over a video of ``frames`` frames take (progress)."""
    seg, steps = header.segment_frames, 0
    for first in range(0, frames, seg):
        n = min(seg, frames - first)
        steps += len(_chunks(header.latent_frames(n), header.width, header.height, tf))
    return passes * steps


def _mse(net, frames: Frames, segs, latents: Sequence[torch.Tensor], bits: int, rdo: float,
         size: Tuple[int, int]) -> float:
    """MSE (in [-1, 1] units) of the segments' frames (``size``: width, height) decoded by
    ``net`` from the codes the stream stores for ``latents`` (the RDO's choice at ``bits``),
    chunk by chunk, as the stream's decode runs."""
    q, dec = net.quantizer, net.decoder
    sse, count = 0.0, 0
    with torch.no_grad():
        for (first, n), lat in zip(segs, latents):
            codes = select_codes(lat, q, bits, rdo)
            full = torch.cat([codes, torch.zeros_like(lat[:, bits:])], 1)
            with streaming(dec):
                for t0, m, f0, f1 in _chunks(lat.shape[2], *size, net.cfg.temporal_factor):
                    f1 = min(n, f1)
                    out = dec(q.decoder_codes(full[:, :, t0:t0 + m]).to(net.dtype))
                    x = frames_to_tensor(frames(first + f0, f1 - f0), "cpu")[0]
                    hh, ww = x.shape[2:]
                    sse += float((out[0, :, :f1 - f0, :hh, :ww].float().clamp(-1, 1) - x).pow(2).sum())
                    count += x.numel()
    return sse / max(1, count)


def _bytes(q, latents: Sequence[torch.Tensor], bits: int, rdo: float, entropy: int) -> int:
    """Payload bytes of the codes the stream stores for ``latents`` at ``bits``."""
    return sum(len(encode_payload(select_codes(lat, q, bits, rdo), entropy)[1]) for lat in latents)


def _slope(net, frames: Frames, segs, latents, header: ct.Header, rdo: float,
           known: Optional[Tuple[int, float]] = None) -> float:
    """The plain encoder's slope at the stream's rate (dB per doubling of bytes, ≥ 0): from
    its bits to one bit plane more, or, at the model's K bits, from a plane fewer. ``known``:
    the (payload bytes, MSE) of the codes at the stream's bits when already measured."""
    cfg, bits = net.cfg, header.bits
    up = min(cfg.bits, bits + cfg.bits // cfg.planes)
    lo, hi = (bits, up) if up > bits else (bits - cfg.bits // cfg.planes, bits)
    if lo < 1:
        return 0.0
    size, mse = ({bits: known[0]}, {bits: known[1]}) if known is not None else ({}, {})
    for b in (lo, hi):
        if b not in size:
            size[b] = _bytes(net.quantizer, latents, b, rdo, header.entropy)
            mse[b] = _mse(net, frames, segs, latents, b, rdo, (header.width, header.height))
    if size[hi] <= size[lo] or mse[hi] >= mse[lo]:
        return 0.0
    return 10 * math.log10(mse[lo] / mse[hi]) / math.log2(size[hi] / size[lo])


def fit_group(model: torch.nn.Module, frames: Frames, segs: Sequence[Tuple[int, int]],
              latents: Sequence[torch.Tensor], header: ct.Header, first_segment: int,
              passes: int, refine: int, rdo: float,
              progress: Optional[Callable[[int], None]] = None
              ) -> Tuple[Optional[Adaptation], List[torch.Tensor], dict]:
    """Fit one update and the codes of a group of consecutive segments together (module
    docstring). ``frames(first, count)``: frames of the video, ``H×W×3`` uint8; ``segs``: the
    group's segments as (first frame, frames); ``latents``: their encoder latents ``1×K×t×h×w``
    float32 (:func:`~neuralcodec.chunks.encode_segment`); ``first_segment``: the index of the
    first; ``passes``: passes over the group; ``refine``: refinement steps per chunk after them;
    ``rdo``: the stream's λ; ``progress(1)`` per chunk step → (the update when it pays, else
    None; the latents to store per segment; a summary: gain, bytes, slope, the decision)."""
    bits, tf = header.bits, model.cfg.temporal_factor
    plain = refine_model(model)
    fm = float_model(model)
    q, dec = fm.quantizer, fm.decoder
    for p in fm.parameters():
        p.requires_grad_(False)
    names = adapt_names(fm)
    params = dict(fm.named_parameters())
    train = [params[n] for n in names]
    base = [p.detach().clone() for p in train]
    for p in train:
        p.requires_grad_(True)
    popt = torch.optim.Adam(train, lr=JOINT_LR)
    auto = inference_dtype("cpu") == torch.bfloat16
    w, h = header.width, header.height
    work = []  # per segment: (first frame, frames, [(chunk, z, its Adam)])
    for (f, n), lat in zip(segs, latents):
        zs = []
        for c in _chunks(lat.shape[2], w, h, tf):
            z = q.unbounded(lat[:, :, c[0]:c[0] + c[1]].float()).clone().requires_grad_(True)
            zs.append((c, z, torch.optim.Adam([z], lr=REFINE_LR)))
        work.append((f, n, zs))
    total, k = max(1, passes * sum(len(zs) for _, _, zs in work)), 0
    fm.train()
    for _ in range(passes):
        for f, n, zs in work:
            prev = None
            with streaming(dec):
                for (t0, m, f0, f1), z, zopt in zs:
                    f1 = min(n, f1)
                    target = fm.pad_spatial(frames_to_tensor(frames(f + f0, f1 - f0), "cpu"))
                    for g in popt.param_groups:
                        g["lr"] = decayed_lr(JOINT_LR, k, total)
                    with torch.autocast("cpu", torch.bfloat16, enabled=auto):
                        stored = stored_codes(q, z, bits, rdo, prev)
                        rec = dec(straight_codes(fm, z, stored))
                        loss = distortion(rec[:, :, :f1 - f0].clamp(-1, 1), target, ADAPT_MSSSIM)
                        if REFINE_RATE > 0:
                            loss = loss + REFINE_RATE * repeat_cost(q, z, prev, stored, REFINE_RATE_CAP)
                    zopt.zero_grad(set_to_none=True)
                    popt.zero_grad(set_to_none=True)
                    loss.backward()
                    if torch.isfinite(loss):
                        zopt.step()
                        popt.step()
                    prev = stored[:, :, -1:]
                    k += 1
                    if progress:
                        progress(1)
    fm.eval()
    sha = fm.decoder_sha256
    order = [nm for nm in tensor_names(fm) if sha is None or nm.startswith("decoder.")]
    joint = [torch.cat([q.latents(z.detach()) for _, z, _ in zs], 2).float() for _, _, zs in work]
    summary = {"passes": passes, "steps": k, "decoder": fm.variant or DECODER_FULL,
               "segments": [first_segment, len(segs)], "kept": False}
    tensors = []
    with torch.no_grad():
        for nm, p, p0 in zip(names, train, base):
            e, v = quantize(p - p0, 1.0)
            if np.any(v):
                tensors.append(TensorUpdate(order.index(nm), e, int(np.abs(v).max()), v))
    ad = None
    if not tensors:
        summary["why"] = "no change"
    else:
        tensors.sort(key=lambda t: t.index)
        ad = Adaptation(header.model_sha256, first_segment, len(segs), tuple(tensors),
                        None if sha is None else bytes.fromhex(sha)[:16])
        net = refine_model(model, ad)
        joint = [refine_latents(net, frames(f, n), lat, bits, refine, rdo=rdo)
                 for (f, n), lat in zip(segs, joint)]
        before = _mse(plain, frames, segs, latents, bits, rdo, (w, h))
        after = _mse(net, frames, segs, joint, bits, rdo, (w, h))
        size0 = _bytes(q, latents, bits, rdo, header.entropy)
        slope = _slope(plain, frames, segs, latents, header, rdo, (size0, before))
        record = ct.record_size(len(ad.to_payload()))
        size1 = _bytes(q, joint, bits, rdo, header.entropy) + record
        gain = 10 * math.log10(before / after) if after > 0 else 0.0
        need = slope * math.log2(size1 / size0) if size0 else 0.0
        summary.update({"gain_db": gain, "needed_db": need, "slope_db": slope,
                        "update_bytes": record, "tokens_bytes": [size0, size1 - record],
                        "kept": gain >= need, "candidate": "all"})
    if not summary["kept"]:
        ad = None
        joint = [refine_latents(plain, frames(f, n), lat, bits, refine, rdo=rdo)
                 for (f, n), lat in zip(segs, latents)]
    return ad, joint, summary


def fit_joint(model: torch.nn.Module, it: Iterator[np.ndarray], frames: Frames, meta: VideoMeta,
              header: ct.Header, opts, progress: Progress = None,
              step_progress: Optional[Callable[[int], None]] = None
              ) -> Tuple[List[Adaptation], List[torch.Tensor], dict]:
    """``mgv encode --joint N``'s fit: encode the frames of ``it`` (kept where ``frames`` reads
    them back: a :class:`~neuralcodec.video_io.FrameSpool`), then :func:`fit_group` for each
    group of :func:`~neuralcodec.sampling.segment_groups` with ``opts.joint`` passes and
    ``opts.refine`` steps → (the updates that pay, in segment order; the latents to store per
    segment; a summary: that of the one group, or, for several, their totals and ``groups``).
    ``progress``: frames encoded; ``step_progress(1)``: per chunk step of the passes."""
    segs: List[Tuple[int, int]] = []
    latents: List[torch.Tensor] = []
    total = 0
    while True:
        n, lat = encode_segment(model, it, meta, header.segment_frames, progress)
        if n == 0:
            break
        if total + n > ct.MAX_FRAMES:
            raise InputError(f"input has more than {ct.MAX_FRAMES} frames")
        segs.append((total, n))
        latents.append(lat.float())
        total += n
        if n < header.segment_frames:
            break
    if total == 0:
        raise InputError("the input has no frames")
    ads, store, rows = [], [], []
    for first, count in segment_groups(len(segs)):
        ad, lats, row = fit_group(model, frames, segs[first:first + count],
                                  latents[first:first + count], header, first, opts.joint,
                                  opts.refine, opts.rdo, step_progress)
        ads += [ad] if ad is not None else []
        store += lats
        rows.append(row)
    if len(rows) == 1:
        return ads, store, rows[0]
    sent = [r for r in rows if r["kept"]]
    return ads, store, {"passes": opts.joint, "steps": sum(r["steps"] for r in rows),
                        "decoder": rows[0]["decoder"], "kept": bool(sent),
                        "update_bytes": sum(r["update_bytes"] for r in sent), "groups": rows}
