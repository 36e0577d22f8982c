"""Encoder side of decoder adaptation (``mgv encode --adapt N``, the slow presets): fit the
decoder's biases, normalisation affines and AdaGN projections to the video being coded, tokens
fixed, and code the change as an ADAPT record (:mod:`neuralcodec.adapt`, spec §8c) — kept only
when its measured gain pays for its bytes.

Chosen by the study ``benchmarks/adapt_study.py`` (validation clips cut from
``../shared/data/train``, never eval/): that set (34k numbers in the shipped model) gave the
largest gain per byte on the frames it was trained on (+1.7–2.1 dB at 176×144), trained at
Adam lr 1e-2 on whole decoded segments, each tensor's change quantized with a step of about its
rms (Δ = 2^round(log2 rms): ≈ 2.2 bits a number, ≤ 0.1 dB lost).

The encoder keeps the first frames of the segments (:class:`FrameSampler`, bounded memory),
decodes their codes from the stream it has just written (what the decoder will see), and trains
on windows of them: the first :data:`WINDOW_LATENTS` latent frames of a segment (the causal
decoder's output there does not depend on later frames, so the window decodes exactly as in the
stream) and a random spatial crop bounded by :data:`STEP_PIXELS`, so that a step costs the
same at any frame size.
"""
from __future__ import annotations

import copy
import io
import math
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from . import container as ct
from .adapt import MAX_EXP, MAX_VMAX, MIN_EXP, Adaptation, TensorUpdate, tensor_names
from .layers import FrameGroupNorm
from .model import inference_dtype
from .payload import decode_codes
from .weights import model_identity, registry, load_model

ADAPT_LR = 1e-2  # Adam learning rate (the study's choice for biases, norms and AdaGN)
MAX_ADAPT = 10000  # most steps --adapt accepts
WINDOW_LATENTS = 5  # latent frames of a training window (17 frames of the shipped model)
STEP_PIXELS = 17 * 224 * 224  # pixels × frames a training step decodes (crop bound)
SAMPLE_SEGMENTS = 64  # segments whose first frames the encoder keeps for training …
SAMPLE_BYTES = 256 << 20  # … within this many bytes of frames (at least one segment)
# The update is kept when its gain (dB, on the sampled segments) is at least this many dB per
# doubling of the stream's bytes it costs: about the model's own slope at its default rate (1.6 dB
# per doubling at 12 bits, 0.5 at 18: the v6 card), so that the point lands above the plain curve.
DB_PER_DOUBLING = 1.5
HOLD_OUT = 4  # with 8 or more sampled segments, every 4th only measures the gain
# The updates the encoder weighs (label, quantization step in rms of each tensor's change, which
# tensors): it sends the one whose gain beats DB_PER_DOUBLING by the most, if any does.
CANDIDATES = (
    ("all", 1.0, lambda name: True),
    ("all/coarse", 2.0, lambda name: True),
    ("bias+norm", 1.0, lambda name: ".adanorms." not in name or name.endswith(".bias")),
)


def adapt_names(model: torch.nn.Module) -> List[str]:
    """The decoder tensors the encoder adapts: every convolution bias, every group-norm affine and
    the AdaGN projections (weights and biases), as ``decoder.…`` state-dict names."""
    names = []
    for mname, mod in model.decoder.named_modules():
        pre = f"decoder.{mname}." if mname else "decoder."
        if isinstance(mod, FrameGroupNorm):
            names += [pre + "weight", pre + "bias"]
        elif isinstance(mod, torch.nn.Conv3d):
            if mname.startswith("adanorms."):
                names.append(pre + "weight")
            if mod.bias is not None:
                names.append(pre + "bias")
    return sorted(set(names))


class FrameSampler:
    """Wraps a frame iterator and keeps the first frames (a training window,
    :data:`WINDOW_LATENTS` latent frames) of up to :data:`SAMPLE_SEGMENTS` segments spread over
    a stream of ``frames`` frames (the first segments when the count is unknown), within
    :data:`SAMPLE_BYTES`."""

    def __init__(self, seg_frames: int, frames: Optional[int], width: int, height: int,
                 temporal_factor: int) -> None:
        self.window = min(seg_frames, 1 + temporal_factor * (WINDOW_LATENTS - 1))
        per = self.window * width * height * 3
        n = max(1, min(SAMPLE_SEGMENTS, SAMPLE_BYTES // per))
        total = -(-frames // seg_frames) if frames else n
        self.seg_frames = seg_frames
        want = sorted(set(int(i) for i in np.linspace(0, total - 1, min(n, total)).round()))
        self.kept = {i: [] for i in want}

    def wrap(self, it: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for k, f in enumerate(it):
            seg, pos = divmod(k, self.seg_frames)
            if pos < self.window and seg in self.kept:
                self.kept[seg].append(f)
            yield f

    def samples(self) -> List[Tuple[int, List[np.ndarray]]]:
        return [(i, fr) for i, fr in self.kept.items() if fr]


def _float_model(model: torch.nn.Module) -> torch.nn.Module:
    """A float32 copy of ``model`` from its weights file when it is registered (W of spec §8c),
    else from the model as it is."""
    name, prefix = model_identity(model)
    e = registry().get(name)
    if e is not None and bytes.fromhex(e.sha256)[:16] == prefix:
        return load_model(name).float().eval()
    return copy.deepcopy(model).float().eval()


def quantize(delta: torch.Tensor, q: float = 1.0) -> Tuple[int, np.ndarray]:
    """A tensor's change → (e, integers v) with Δ = 2^e, e = round(log2(q·rms)) in
    MIN_EXP..MAX_EXP and v = round(δ / Δ) clipped to ±MAX_VMAX."""
    d = delta.detach().float().reshape(-1)
    rms = float(d.pow(2).mean().sqrt())
    e = MIN_EXP if rms == 0 else int(min(MAX_EXP, max(MIN_EXP, round(math.log2(q * rms)))))
    v = torch.round(d / 2.0 ** e).clamp_(-MAX_VMAX, MAX_VMAX).to(torch.int32).numpy()
    return e, v


def _segment_codes(stream: bytes, want: Sequence[int], k: int) -> dict:
    """{segment: (stored bits, codes 1×K×t×h×w float32 of its first WINDOW_LATENTS latent
    frames: the stored codes in the first b channels, 0 in the others)}."""
    out = {}
    reader = ct.Reader(io.BytesIO(stream))
    for seg in reader.segments():
        if seg.index in want:
            b = seg.stored_bits(reader.header)
            c = decode_codes(seg, b, "cpu", torch.float32)
            c = c[:, :, :WINDOW_LATENTS]
            full = torch.zeros((1, k) + tuple(c.shape[2:]))
            full[:, :b] = c
            out[seg.index] = (b, full)
    return out


def _window(rng: np.random.Generator, h: int, w: int, s: int, frames: int,
            center: bool = False) -> Tuple[int, int, int, int]:
    """A token window (y0, x0, rows, cols) of ``h×w`` tokens whose pixels × ``frames`` stay
    within :data:`STEP_PIXELS`."""
    side = max(1, int(math.sqrt(STEP_PIXELS / max(1, frames)) // s))
    ch, cw = min(h, side), min(w, max(side, side * side // max(1, min(h, side))))
    cw = min(cw, w)
    if center:
        return (h - ch) // 2, (w - cw) // 2, ch, cw
    return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw


def _target(frames: List[np.ndarray], y0: int, x0: int, ch: int, cw: int, s: int) -> torch.Tensor:
    """The pixels of a token window, ``1×3×T×(ch·s)×(cw·s)`` in [-1, 1] (edge-padded frames)."""
    x = np.stack(frames)[:, y0 * s:(y0 + ch) * s, x0 * s:(x0 + cw) * s]
    ph, pw = ch * s - x.shape[1], cw * s - x.shape[2]
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return torch.from_numpy(x).permute(3, 0, 1, 2)[None].float() / 127.5 - 1


def _mse(model, codes: torch.Tensor, target: torch.Tensor, auto: bool, grad: bool) -> torch.Tensor:
    """MSE (in [-1, 1] units) of the decoder's output for ``codes`` (the stored bits, the rest
    0) against ``target``; training steps (``grad``) under bfloat16 autocast where the CPU
    computes it natively, measurements in float32 (the inference fast path)."""
    with torch.set_grad_enabled(grad), torch.autocast("cpu", torch.bfloat16, enabled=auto and grad):
        dec = model.decoder(model.quantizer.decoder_codes(codes))
        return F.mse_loss(dec[:, :, :target.shape[2]].float(), target)


def fit_adaptation(model: torch.nn.Module, stream: bytes,
                   samples: List[Tuple[int, List[np.ndarray]]], steps: int,
                   progress: Optional[Callable[[int], None]] = None, seed: int = 0
                   ) -> Tuple[Optional[Adaptation], dict]:
    """Adapt ``model``'s decoder to the sampled segments of ``stream`` (the ``.mgv`` bytes just
    encoded; ``samples``: (segment index, its frames ``H×W×3`` uint8)) with ``steps`` Adam steps
    → (the ADAPT record's adaptation for every segment, or None when it does not pay, and a
    summary: gain in dB on the sampled windows, update bytes, the decision)."""
    header = ct.Reader(io.BytesIO(stream)).header
    fm = _float_model(model)
    for p in fm.parameters():
        p.requires_grad_(False)
    names = adapt_names(fm)
    params = dict(fm.named_parameters())
    train = [params[n] for n in names]
    base = [p.detach().clone() for p in train]
    for p in train:
        p.requires_grad_(True)
    s, k = fm.cfg.spatial_factor, fm.cfg.bits
    codes = _segment_codes(stream, [i for i, _ in samples], k)
    data = [(codes[i], fr) for i, fr in samples if i in codes]
    auto = inference_dtype("cpu") == torch.bfloat16
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(train, lr=ADAPT_LR)

    def window(j: int, center: bool):
        (_, c), fr = data[j]
        y0, x0, ch, cw = _window(rng, c.shape[3], c.shape[4], s, len(fr), center)
        frames = fr[:1 + fm.cfg.temporal_factor * (c.shape[2] - 1)]
        return c[:, :, :, y0:y0 + ch, x0:x0 + cw], _target(frames, y0, x0, ch, cw, s)

    # every HOLD_OUT-th sampled segment only measures (when there are enough): the gain the
    # encoder judges the update by is then that on segments it did not train on
    held = [j for j in range(len(data)) if len(data) >= 2 * HOLD_OUT and j % HOLD_OUT == HOLD_OUT - 1]
    fit = [j for j in range(len(data)) if j not in held]
    evals = [window(j, True) for j in (held or fit)]

    def loss_on(windows) -> float:
        return float(np.mean([_mse(fm, c, t, auto, False).item() for c, t in windows]))

    before = loss_on(evals)
    fm.train()
    for _ in range(steps):
        c, t = window(fit[int(rng.integers(len(fit)))], False)
        opt.zero_grad(set_to_none=True)
        loss = _mse(fm, c, t, auto, True)
        loss.backward()
        if all(torch.isfinite(p.grad).all() for p in train if p.grad is not None):
            opt.step()
        if progress:
            progress(1)
    fm.eval()
    order = tensor_names(fm)
    trained = [p.detach().clone() for p in train]
    summary = {"steps": steps, "segments_sampled": len(data), "segments_held_out": len(held),
               "mse_before": before, "kept": False}
    best = None
    with torch.no_grad():
        for label, q, keep in CANDIDATES:
            tensors = []
            for n, p, p0, p1 in zip(names, train, base, trained):
                e, v = quantize(p1 - p0, q)
                if keep(n) and np.any(v):
                    tensors.append(TensorUpdate(order.index(n), e, int(np.abs(v).max()), v))
                    p.copy_(p0 + torch.from_numpy(v.astype(np.float32) * np.float32(2.0 ** e))
                            .reshape(p.shape))
                else:
                    p.copy_(p0)
            if not tensors:
                continue
            ad = Adaptation(header.model_sha256, 0, header.segment_count, tuple(tensors))
            size = len(ad.to_payload()) + ct.RECORD_HEAD.size + ct.CRC.size
            after = loss_on(evals)
            gain = 10 * math.log10(before / after) if after > 0 else 0.0
            need = DB_PER_DOUBLING * math.log2(1 + size / len(stream))
            row = {"candidate": label, "gain_db": gain, "update_bytes": size, "needed_db": need,
                   "numbers": ad.numbers}
            summary.setdefault("candidates", []).append(row)
            if best is None or gain - need > best[1]["gain_db"] - best[1]["needed_db"]:
                best = (ad, row)
    if best is None:
        return None, {**summary, "why": "no change"}
    kept = best[1]["gain_db"] >= best[1]["needed_db"]
    return (best[0] if kept else None), {**summary, **best[1], "kept": kept}
