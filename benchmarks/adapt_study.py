#!/usr/bin/env python3
"""Instance-adaptive decoding (issue 32, part 1): adapt a few decoder parameters to one video at
encode time, tokens fixed, and count the coded update's bytes in the rate.

    nice -n 19 python -m benchmarks.adapt_study --report benchmarks/results/adapt_study

For each variant (:data:`VARIANTS`): the shipped default model; a validation clip cut from
``../shared/data/train`` (:data:`VAL_CLIPS`, the recipe study's held-out clips, never eval/)
scaled (AREA) to 288 px high (CIF's detail per pixel) and centre-cropped to 176×144; one real ``.mgv`` stream per rate
point (:func:`neuralcodec.codec.compress`, 17-frame segments, entropy-coded tokens, headers
counted) whose tokens (:func:`neuralcodec.tokens.tokens_from_stream`) stay fixed. Then:

1. **adapt** — Adam on a set of decoder parameters (biases and norm affines, the AdaGN
   conditioning, the last level, LoRA factors of the largest convolutions, …) lowering the
   decoder's loss on the first :data:`SEEN_SEGMENTS` segments: each step decodes one random
   training segment (or a random crop of it) at a random rate point of :data:`RATES` — one
   update serves every nested rate (variant ``bn-r18`` trains at 18 bits alone, to compare);
2. **code** — each tensor's update δ is quantized to integers v = round(δ / Δ) with
   Δ = 2^e, e = round(log2(q·rms(δ))) (a power of two: dequantization is exact in float), and
   range coded (constriction) under a discretised Laplace prior whose table is integers
   computed by integer arithmetic from a 6-bit scale index (:func:`laplace_freqs`), chosen per
   tensor by the encoder; the decode of the bytes is checked to give the integers back;
3. **evaluate** — the base and the adapted decoder (the *dequantized* update applied to a copy
   of the weights, LoRA factors merged) decode the same tokens
   (:func:`neuralcodec.tokens.detokenize`): PSNR-RGB and MS-SSIM per rate point on the seen
   segments and on the later, never-seen ones; encode (adaptation + coding) and decode seconds.

The update is counted with :data:`UPDATE_OVERHEAD` bytes of framing; its rate is reported
amortised over clips of 33, 97 and 300 frames (:data:`AMORTISE`), and summarised as a
Bjøntegaard ΔPSNR / BD-rate of (token + update bytes) against the tokens alone.

Everything runs on one CPU thread. Results are written to ``OUT/results.json`` after each
variant; re-running skips finished variants (and reuses the streams and base decodes).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import io
import json
import math
import platform
import struct
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neuralcodec import codec
from neuralcodec.chunks import frames_to_tensor
from neuralcodec.container import CRC, RECORD_HEAD
from neuralcodec.layers import FrameGroupNorm
from neuralcodec.model import mask_bits
from neuralcodec.tokens import Tokens, detokenize, tokens_from_stream
from neuralcodec.video_io import decode_frames
from neuralcodec.weights import load_model

# the recipe study's validation clips (benchmarks/bench_recipes.py VAL_CLIPS), names copied
VAL_CLIPS = ("sam2_juggle.mp4", "intel_car_detection.mp4", "intel_asl_walk.mkv")
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "train"
WIDTH, HEIGHT = 176, 144
SCALE_TO = 288
SEGMENT = 17  # frames per segment (1 + 4·4)
SEGMENTS = 4  # the clip: 68 frames
SEEN_SEGMENTS = 2  # adaptation sees segments 0..1 (frames 0-33); 2..3 are never seen
RATES = (6, 12, 18, 24)
AMORTISE = (33, 97, 300)
# bytes an update record would cost besides its coded data: record head + CRC, the sha256
# prefix of the model it adapts, a parameter-set id and the segment range (Part 2 decides)
UPDATE_OVERHEAD = RECORD_HEAD.size + CRC.size + 16 + 4


# ---- the update's code -------------------------------------------------------------------------
def laplace_r(j: int) -> int:
    """Decay r (Q16) of Laplace scale index j in 0..47: 1 − r = (8 − j % 4)/8 · 2^−(j // 4)."""
    if not 0 <= j < 48:
        raise ValueError(f"scale index {j} outside 0..47")
    return 65536 - ((65536 * (8 - j % 4)) >> (3 + j // 4))


def laplace_freqs(j: int, vmax: int) -> np.ndarray:
    """Integer frequencies of v = −vmax..vmax (index v + vmax) of the discretised Laplace
    prior with scale index ``j``: f(0) = 2^16, f(k) = max(1, f(k−1)·r >> 16), f(−k) = f(k)."""
    r = laplace_r(j)
    f = [65536]
    for _ in range(vmax):
        f.append(max(1, (f[-1] * r) >> 16))
    half = np.array(f, dtype=np.int64)
    return np.concatenate([half[:0:-1], half])


def _categorical(freqs: np.ndarray):
    import constriction
    return constriction.stream.model.Categorical(freqs / freqs.sum(), perfect=False)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> Tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, pos


@dataclass
class QuantUpdate:
    """A quantized update: per tensor the step exponent e (Δ = 2^e) and integers v (δ ≈ v·Δ)."""

    exps: List[int]
    ints: List[np.ndarray]  # int64, flat

    def dequantized(self) -> List[torch.Tensor]:
        return [torch.from_numpy(v.astype(np.float32) * np.float32(2.0 ** e))
                for e, v in zip(self.exps, self.ints)]


def quantize_update(deltas: Sequence[torch.Tensor], q: float) -> QuantUpdate:
    """Uniform scalar quantization of each tensor with Δ = 2^e: for ``q`` > 0 relative to the
    tensor, e = round(log2(q·rms)) (in −40..0); for ``q`` <= 0 the same Δ = 2^q everywhere."""
    exps, ints = [], []
    for d in deltas:
        d = d.detach().float().flatten()
        rms = float(d.pow(2).mean().sqrt())
        if q <= 0:
            e = int(q)
        else:
            e = -40 if rms == 0 else int(min(0, max(-40, round(math.log2(q * rms)))))
        exps.append(e)
        ints.append(torch.round(d / 2.0 ** e).to(torch.int64).numpy())
    return QuantUpdate(exps, ints)


def step_label(q: Optional[float]) -> str:
    if q is None:
        return "float32"
    return f"{q:g}·rms" if q > 0 else f"2^{int(q)}"


def _best_scale(v: np.ndarray, vmax: int) -> int:
    """The scale index whose prior codes ``v`` in the fewest bits (encoder's choice)."""
    counts = np.bincount(np.abs(v), minlength=vmax + 1)
    best, best_bits = 0, float("inf")
    for j in range(48):
        f = laplace_freqs(j, vmax).astype(np.float64)
        p_half = f[vmax:] / f.sum()
        bits = -(counts * np.log2(p_half)).sum()
        if bits < best_bits:
            best, best_bits = j, bits
    return best


def encode_update(u: QuantUpdate) -> bytes:
    """→ bytes: a side table (per tensor: e + 64 as a byte, the scale index as a byte, vmax as
    a varint), then the range coder's 32-bit words, little-endian. The tensor count and
    sizes are the parameter set's (known to the decoder)."""
    import constriction
    side = bytearray()
    enc = constriction.stream.queue.RangeEncoder()
    for e, v in zip(u.exps, u.ints):
        vmax = int(np.abs(v).max()) if v.size else 0
        j = _best_scale(v, vmax) if vmax else 0
        side += struct.pack("<BB", e + 64, j) + _varint(vmax)
        if vmax:
            enc.encode((v + vmax).astype(np.int32), _categorical(laplace_freqs(j, vmax)))
    words = enc.get_compressed().astype("<u4").tobytes()
    return bytes(side) + words


def decode_update(data: bytes, sizes: Sequence[int]) -> QuantUpdate:
    """Inverse of :func:`encode_update` for tensors of ``sizes`` elements."""
    import constriction
    pos, heads = 0, []
    for _ in sizes:
        if pos + 2 > len(data):
            raise ValueError("truncated update side table")
        e, j = data[pos] - 64, data[pos + 1]
        vmax, pos = _read_varint(data, pos + 2)
        heads.append((e, j, vmax))
    if (len(data) - pos) % 4:
        raise ValueError("update payload is not whole 32-bit words")
    dec = constriction.stream.queue.RangeDecoder(np.frombuffer(data[pos:], dtype="<u4").astype(np.uint32))
    exps, ints = [], []
    for (e, j, vmax), n in zip(heads, sizes):
        exps.append(e)
        if vmax:
            ints.append(dec.decode(_categorical(laplace_freqs(j, vmax)), n).astype(np.int64) - vmax)
        else:
            ints.append(np.zeros(n, dtype=np.int64))
    return QuantUpdate(exps, ints)


# ---- which parameters, and how they change ------------------------------------------------
def param_names(decoder: nn.Module, kind: str) -> List[str]:
    """Names of the decoder parameters a full-tensor update of ``kind`` touches:
    ``bn`` every convolution bias and FrameGroupNorm affine (``bias``, ``norm``: either alone);
    ``adagn`` the AdaGN projections (weight and bias); ``tail`` the final norm and output
    convolution; ``last`` the last level (its AdaGN, residual blocks) and the tail."""
    names: List[str] = []
    last = len(decoder.levels) - 1
    for mname, mod in decoder.named_modules():
        pre = mname + "." if mname else ""
        if kind in ("bn", "norm") and isinstance(mod, FrameGroupNorm):
            names += [pre + "weight", pre + "bias"]
        elif kind in ("bn", "bias") and isinstance(mod, nn.Conv3d) and mod.bias is not None:
            names.append(pre + "bias")
        elif kind == "adagn" and mname.startswith("adanorms.") and isinstance(mod, nn.Conv3d):
            names += [pre + "weight", pre + "bias"]
    if kind == "tail":
        names += [n for n, _ in decoder.named_parameters() if n.startswith(("norm.", "out."))]
    if kind == "last":
        for n, _ in decoder.named_parameters():
            if n.startswith((f"levels.{last}.", f"adanorms.{last}.", "norm.", "out.")):
                names.append(n)
    if not names and kind not in ("none", ""):
        raise ValueError(f"unknown parameter set {kind!r}")
    return names


def largest_convs(decoder: nn.Module, n: int) -> List[str]:
    """Names of the ``n`` largest convolution weights of the decoder."""
    ws = [(p.numel(), name) for name, p in decoder.named_parameters()
          if name.endswith("weight") and p.dim() == 5]
    return [name for _, name in sorted(ws, reverse=True)[:n]]


def seeded_signs(n: int, salt: int) -> np.ndarray:
    """n deterministic ±1 values (an integer hash of index and ``salt``; the decoder makes the
    same ones): h = (i + salt·2^20)·0x9E3779B1 mod 2^32, h ^= h >> 15, h = h·0x85EBCA77 mod
    2^32, h ^= h >> 13; +1 where bit 31 of h is set."""
    h = ((np.arange(n, dtype=np.uint64) + np.uint64(salt << 20)) * np.uint64(0x9E3779B1)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x85EBCA77)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(13)
    return np.where(h >> np.uint64(31), 1.0, -1.0).astype(np.float32)


class Update(nn.Module):
    """Trainable update of a decoder: full-tensor deltas for ``names``, and LoRA for the
    ``lora`` conv weights: ΔW = B·(A0 + δA), B (Cout×r) starting at zero, A0 (r×Cin·k) seeded
    ±1/√(Cin·k) signs the decoder regenerates (:func:`seeded_signs`, salt = the weight's
    position in ``lora``), so only B and δA are coded (both start at zero)."""

    def __init__(self, decoder: nn.Module, names: Sequence[str], lora: Sequence[str], rank: int):
        super().__init__()
        params = dict(decoder.named_parameters())
        self.names, self.lora = list(names), list(lora)
        self.deltas = nn.ParameterList([nn.Parameter(torch.zeros_like(params[n])) for n in names])
        self.a = nn.ParameterList()
        self.b = nn.ParameterList()
        self.a0 = []
        for i, n in enumerate(lora):
            w = params[n]
            fan = w[0].numel()
            self.a0.append(torch.from_numpy(seeded_signs(rank * fan, i)).reshape(rank, fan) / math.sqrt(fan))
            self.a.append(nn.Parameter(torch.zeros(rank, fan)))
            self.b.append(nn.Parameter(torch.zeros(w.shape[0], rank)))
        self.shapes = {n: params[n].shape for n in lora}
        self.skipped = 0  # training steps skipped for a non-finite gradient

    def tensors(self) -> List[torch.Tensor]:
        """The tensors coded in the stream, in order: deltas, then A, B of each LoRA weight."""
        out = list(self.deltas)
        for a, b in zip(self.a, self.b):
            out += [a, b]
        return out

    def weight_deltas(self, tensors: Optional[Sequence[torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """{parameter name: additive change} from ``tensors`` (default: the trainable ones)."""
        ts = list(tensors) if tensors is not None else self.tensors()
        k = len(self.names)
        out = {n: t for n, t in zip(self.names, ts[:k])}
        for i, n in enumerate(self.lora):
            a, b = ts[k + 2 * i], ts[k + 2 * i + 1]
            d = (b.reshape(self.b[i].shape) @ (self.a0[i] + a.reshape(self.a[i].shape))).reshape(self.shapes[n])
            out[n] = out[n] + d if n in out else d
        return out


def apply_update(model: nn.Module, up: Update, tensors: Sequence[torch.Tensor]) -> nn.Module:
    """A copy of ``model`` whose decoder weights are changed by ``tensors`` (the dequantized
    update), same identity (name, sha256) so it decodes the stream's tokens."""
    m = copy.deepcopy(model)
    params = dict(m.decoder.named_parameters())
    with torch.no_grad():
        for n, d in up.weight_deltas(tensors).items():
            params[n].add_(d.reshape(params[n].shape).to(params[n].dtype))
    return m


# ---- data -----------------------------------------------------------------------------------
def read_clip(path: Path, frames: int) -> np.ndarray:
    """The first ``frames`` frames of ``path`` scaled (AREA) to :data:`SCALE_TO` px high (CIF's
    height: the detail per pixel of a CIF clip) and centre-cropped to WIDTH×HEIGHT (a QCIF
    window) → ``T×H×W×3`` uint8 RGB."""
    def size(w, h):
        return max(WIDTH, round(w * SCALE_TO / h / 2) * 2), max(HEIGHT, SCALE_TO)

    out = []
    for f in decode_frames(path, size=size, interpolation="AREA", max_frames=frames):
        y0, x0 = (f.shape[0] - HEIGHT) // 2, (f.shape[1] - WIDTH) // 2
        out.append(np.ascontiguousarray(f[y0:y0 + HEIGHT, x0:x0 + WIDTH]))
    if len(out) < frames:
        raise SystemExit(f"{path}: {len(out)} frames, need {frames}")
    return np.stack(out)


def decoder_input(model, tokens: Tokens, i: int, bits: int) -> torch.Tensor:
    """Segment ``i``'s codes as the decoder reads them at ``bits`` (K channels, the rest 0)."""
    c = tokens.segment_codes(i)
    k = model.cfg.bits
    full = torch.zeros((1, k) + tuple(c.shape[2:]))
    full[:, :c.shape[1]] = c
    return model.quantizer.decoder_codes(mask_bits(full, bits)).float()


# ---- metrics --------------------------------------------------------------------------------
def psnr_frames(ref: np.ndarray, dec: np.ndarray) -> float:
    """Mean over frames of PSNR-RGB (8-bit)."""
    d = (ref.astype(np.float64) - dec.astype(np.float64)) ** 2
    mse = d.reshape(len(ref), -1).mean(1)
    return float(np.mean(10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))))


def msssim_frames(ref: np.ndarray, dec: np.ndarray) -> float:
    """Mean per-frame MS-SSIM on RGB (pytorch-msssim, 5 scales, window 7 for 144-px frames)."""
    from pytorch_msssim import ms_ssim
    win = next(w for w in (11, 9, 7, 5, 3) if min(ref.shape[1:3]) > (w - 1) * 16)
    a = torch.from_numpy(ref).permute(0, 3, 1, 2).float()
    b = torch.from_numpy(dec).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        return float(ms_ssim(a, b, data_range=255.0, size_average=True, win_size=win))


def bd(base: Sequence[Tuple[float, float]], test: Sequence[Tuple[float, float]]) -> Dict[str, Optional[float]]:
    """Bjøntegaard-like ΔPSNR (dB) and BD-rate (%) of ``test`` vs ``base``, points (bpp, PSNR)
    sorted by rate: the mean vertical (horizontal, in log rate) distance between the two
    piecewise-linear curves over the interval where both are defined; None where they do not
    overlap. (Linear, not the cubic fit: this model's curves are nearly flat from 18 to 24 bits,
    where a cubic in PSNR swings.)"""
    lr0, p0 = np.log10([b for b, _ in base]), np.array([p for _, p in base])
    lr1, p1 = np.log10([b for b, _ in test]), np.array([p for _, p in test])
    out: Dict[str, Optional[float]] = {"bd_psnr": None, "bd_rate": None}
    lo, hi = max(lr0.min(), lr1.min()), min(lr0.max(), lr1.max())
    if hi > lo:
        x = np.linspace(lo, hi, 201)
        out["bd_psnr"] = float(np.mean(np.interp(x, lr1, p1) - np.interp(x, lr0, p0)))
    i0, i1 = np.argsort(p0), np.argsort(p1)
    lo, hi = max(p0.min(), p1.min()), min(p0.max(), p1.max())
    if hi > lo:
        y = np.linspace(lo, hi, 201)
        d = np.mean(np.interp(y, p1[i1], lr1[i1]) - np.interp(y, p0[i0], lr0[i0]))
        out["bd_rate"] = float((10 ** d - 1) * 100)
    return out


# ---- the variants ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    name: str
    params: str = "bn"  # full-tensor set: bn, adagn, last, none
    lora: int = 0  # LoRA on this many of the largest conv weights
    rank: int = 2
    steps: Tuple[int, ...] = (160,)  # snapshots evaluated (one entry each: name@steps)
    lr: float = 1e-2
    loss: str = "mse"  # mse | mse+msssim
    crop: int = 0  # latent crop side (0 = whole frames)
    bits: Tuple[int, ...] = RATES  # rates drawn at random per step
    # quantization steps (:func:`quantize_update`; None: the float update, uncoded, for
    # reference); the first is the main one
    q: Tuple[Optional[float], ...] = (1.0, 2.0)
    note: str = ""


VARIANTS = [
    Variant("bn", steps=(40, 80, 160), lr=1e-3, q=(-7, -5, -6, -8, -10, 0.25, 1.0),
            note="biases + norm affines, lr 1e-3; steps and Δ sweep"),
    Variant("bn-lr1e-2", steps=(40, 80, 160), q=(1.0, 2.0, 4.0, -4, -5),
            note="bn, lr 1e-2; Δ sweep"),
    Variant("bn-lr3e-3", steps=(40, 80, 160), lr=3e-3, q=(1.0, 2.0), note="bn, lr 3e-3"),
    Variant("bn-lr3e-2", steps=(40, 80, 160), lr=3e-2, note="bn, lr 3e-2"),
    Variant("bn+adagn", params="bn+adagn", note="bn + AdaGN (the probe's set)"),
    Variant("adagn", params="adagn", note="AdaGN conditioning projections"),
    Variant("lora2", params="none", lora=8, rank=2, note="LoRA rank 2 on the 8 largest convs"),
    Variant("bn+lora2", lora=8, rank=2, note="bn + LoRA rank 2"),
    Variant("last", params="last", note="last level + final norm + output conv"),
    Variant("tail", params="tail", note="final norm + output conv"),
    Variant("bn-crop", crop=8, steps=(160, 320), note="bn, random 64×64-px crops"),
    Variant("bn-msssim", loss="mse+msssim", note="bn, loss MSE + 0.1·(1 − MS-SSIM)"),
    Variant("bn-r18", bits=(18,), note="bn trained at 18 bits only"),
    Variant("last-lr1e-3", params="last", lr=1e-3, q=(1.0, None), note="last, lr 1e-3"),
    Variant("bn+adagn-ref", params="bn+adagn", q=(0.5, None), note="bn + AdaGN: finer Δ, float"),
    Variant("last-lr3e-3", params="last", lr=3e-3, note="last, lr 3e-3"),
    Variant("tail-lr1e-3", params="tail", lr=1e-3, note="tail, lr 1e-3"),
]


def entry_keys(v: Variant, steps: int) -> List[Tuple[str, float]]:
    """(result key, quantization step) of each entry of ``v`` at snapshot ``steps``: the main
    step at every snapshot, the step sweep at the last one."""
    qs = v.q if steps == max(v.steps) else v.q[:1]
    return [(f"{v.name}@{steps}" + ("" if i == 0 else f"/q{step_label(q)}"), q)
            for i, q in enumerate(qs)]


def variant_names(decoder: nn.Module, v: Variant) -> Tuple[List[str], List[str]]:
    names: List[str] = []
    for kind in v.params.split("+"):
        names += [n for n in param_names(decoder, kind) if n not in names]
    return names, largest_convs(decoder, v.lora) if v.lora else []


def loss_fn(v: Variant, rec: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    rec = rec.float()
    loss = F.mse_loss(rec, target)
    if v.loss == "mse+msssim":  # in float32 (outside autocast: its bf16 filters give NaN)
        from pytorch_msssim import ms_ssim
        with torch.autocast("cpu", enabled=False):
            a = ((rec[0].transpose(0, 1) + 1) / 2).clamp(0, 1)
            b = (target[0].transpose(0, 1) + 1) / 2
            loss = loss + 0.1 * (1 - ms_ssim(a, b, data_range=1.0, win_size=7))
    return loss


def adapt(model, v: Variant, inputs: Dict[Tuple[int, int], torch.Tensor],
          targets: List[torch.Tensor], seed: int = 0, log=None):
    """Train an :class:`Update` for ``v``; yields (steps, seconds so far, update) at each
    snapshot of ``v.steps``. ``inputs[(segment, bits)]``: decoder input; ``targets[segment]``:
    ``1×3×T×H×W`` in [-1, 1]."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dec = model.decoder
    names, lora = variant_names(dec, v)
    up = Update(dec, names, lora, v.rank)
    opt = torch.optim.Adam(up.parameters(), lr=v.lr)
    base = {n: p.detach() for n, p in dec.named_parameters()}
    auto = True  # bf16 autocast, as refine does on CPUs with native bf16
    t0 = time.process_time()
    segs = sorted({s for s, _ in inputs})
    for step in range(1, max(v.steps) + 1):
        s = int(rng.choice(segs))
        b = int(rng.choice(v.bits))
        x, y = inputs[(s, b)], targets[s]
        if v.crop:
            h, w = x.shape[3:]
            i0, j0 = int(rng.integers(0, h - v.crop + 1)), int(rng.integers(0, w - v.crop + 1))
            sf = model.cfg.spatial_factor
            x = x[..., i0:i0 + v.crop, j0:j0 + v.crop]
            y = y[..., i0 * sf:(i0 + v.crop) * sf, j0 * sf:(j0 + v.crop) * sf]
        with torch.enable_grad(), torch.autocast("cpu", torch.bfloat16, enabled=auto):
            wd = up.weight_deltas()
            p = {n: base[n] + d.reshape(base[n].shape) for n, d in wd.items()}
            rec = torch.func.functional_call(dec, p, (x,))
            loss = loss_fn(v, rec[:, :, :y.shape[2]], y)
        opt.zero_grad()
        loss.backward()
        if all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in up.parameters()):
            opt.step()
        else:  # a non-finite gradient (MS-SSIM's powers of tiny values): skip the step
            up.skipped += 1
        if log and (step % 20 == 0 or step == 1):
            log(f"  {v.name} step {step} loss {loss.item():.5f} bits {b}")
        if step in v.steps:
            yield step, time.process_time() - t0, up


# ---- the study --------------------------------------------------------------------------------
def evaluate(model, tokens: Dict[int, Tokens], clip: np.ndarray) -> dict:
    """Decode every rate point's tokens with ``model`` → per rate: PSNR / MS-SSIM on seen and
    unseen frames, decode seconds (CPU)."""
    cut = SEEN_SEGMENTS * SEGMENT
    out = {}
    for b, tok in tokens.items():
        t0 = time.process_time()
        rec = detokenize(model, tok)
        sec = time.process_time() - t0
        out[str(b)] = {"decode_s": sec,
                       "psnr_seen": psnr_frames(clip[:cut], rec[:cut]),
                       "psnr_unseen": psnr_frames(clip[cut:], rec[cut:]),
                       "msssim_seen": msssim_frames(clip[:cut], rec[:cut]),
                       "msssim_unseen": msssim_frames(clip[cut:], rec[cut:])}
    return out


def summarise(entry: dict, base: dict, bpp_tokens: Dict[str, float], pixels: int) -> None:
    """Gains per rate point and Bjøntegaard numbers with the update's bytes amortised."""
    ev = entry["eval"]
    entry["gain"] = {b: {k: ev[b][k] - base[b][k] for k in ev[b] if k != "decode_s"} for b in ev}
    entry["bd"] = {}
    for n in AMORTISE:
        extra = 8 * entry["update_bytes"] / (pixels * n)
        entry["bd"][str(n)] = {}
        for part in ("seen", "unseen"):
            b0 = [(bpp_tokens[b], base[b][f"psnr_{part}"]) for b in sorted(ev, key=int)]
            b1 = [(bpp_tokens[b] + extra, ev[b][f"psnr_{part}"]) for b in sorted(ev, key=int)]
            entry["bd"][str(n)][part] = bd(b0, b1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="the train/ folder (never eval/)")
    ap.add_argument("--clip", default=VAL_CLIPS[0])
    ap.add_argument("--out", type=Path, default=Path("runs/adapt_study"))
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/adapt_study.json"))
    ap.add_argument("--only", nargs="*", help="variant names to run (default all)")
    ap.add_argument("--smoke", action="store_true", help="a few steps per variant, 2 rates, no results file")
    ap.add_argument("--report", help="write PREFIX.md and PREFIX.png from the results and exit")
    args = ap.parse_args(argv)
    if args.report:
        return report(args.results, Path(args.report))
    if "eval" in args.data.parts:
        raise SystemExit("validation clips come from train/, never eval/")
    torch.set_num_threads(1)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    args.out.mkdir(parents=True, exist_ok=True)
    res_path = args.out / "smoke.json" if args.smoke else args.results
    res = json.loads(res_path.read_text()) if res_path.exists() else {}
    rates = (6, 24) if args.smoke else RATES

    model = load_model().float().eval()
    clip = read_clip(args.data / args.clip, SEGMENT * SEGMENTS)
    pixels = WIDTH * HEIGHT
    # one real stream per rate point; its tokens stay fixed
    streams, tokens, bpp, enc_s = {}, {}, {}, {}
    for b in rates:
        p = args.out / f"{Path(args.clip).stem}_{b}.mgv"
        if not p.exists():
            t0 = time.process_time()
            data = codec.compress(model, clip, fps=25, bits=b, segment_frames=SEGMENT, audio=False)
            enc_s[b] = time.process_time() - t0
            p.write_bytes(data)
        streams[b] = p.read_bytes()
        tokens[b] = tokens_from_stream(io.BytesIO(streams[b]))
        bpp[str(b)] = 8 * len(streams[b]) / (pixels * len(clip))
    meta = res.setdefault("meta", {})
    meta.update({"clip": args.clip, "size": [WIDTH, HEIGHT], "frames": len(clip),
                 "segment_frames": SEGMENT, "seen_frames": SEEN_SEGMENTS * SEGMENT,
                 "rates": list(rates), "model": model.name, "token_bytes": {str(b): len(streams[b]) for b in rates},
                 "bpp_tokens": bpp, "update_overhead": UPDATE_OVERHEAD, "threads": 1,
                 "machine": "2-core CPU dev machine", "torch": torch.__version__,
                 "python": platform.python_version(),
                 "command": "nice -n 19 python -m benchmarks.adapt_study " + " ".join(argv or sys.argv[1:])})
    if enc_s:
        meta["token_encode_s"] = {str(b): s for b, s in enc_s.items()}
    if "base" not in res:
        log("base decode")
        res["base"] = evaluate(model, tokens, clip)
    res.setdefault("variants", {})

    def save():
        meta["date"] = datetime.date.today().isoformat()
        res_path.parent.mkdir(parents=True, exist_ok=True)
        res_path.write_text(json.dumps(res, indent=1) + "\n")
    save()

    seen = range(SEEN_SEGMENTS)
    targets = [frames_to_tensor(list(clip[s * SEGMENT:(s + 1) * SEGMENT]), torch.device("cpu"))
               for s in seen]
    inputs = {(s, b): decoder_input(model, tokens[b], s, b) for s in seen for b in rates}
    for p in model.parameters():
        p.requires_grad_(False)
    for v in VARIANTS:
        if args.only and v.name not in args.only:
            continue
        if args.smoke:
            v = Variant(**{**asdict(v), "steps": (2,), "q": v.q[:1],
                           "bits": tuple(b for b in v.bits if b in rates) or rates})
        keys = [k for s in v.steps for k, _ in entry_keys(v, s)]
        if all(k in res["variants"] for k in keys):
            continue
        log(f"variant {v.name}")
        for steps, sec, up in adapt(model, v, inputs, targets, log=log):
            for key, q in entry_keys(v, steps):
                if key in res["variants"]:
                    continue
                t0 = time.process_time()
                tensors = [t.detach() for t in up.tensors()]
                if q is None:  # the float update itself: a reference, 4 bytes a number
                    qu, data, deq = QuantUpdate([], []), b"\0" * (4 * sum(t.numel() for t in tensors)), tensors
                else:
                    qu = quantize_update(tensors, q)
                    data = encode_update(qu)
                    back = decode_update(data, [t.numel() for t in tensors])
                    if back.exps != qu.exps or any(not np.array_equal(a, b)
                                                   for a, b in zip(back.ints, qu.ints)):
                        raise RuntimeError(f"{key}: the update's code does not round-trip")
                    deq = [d.reshape(t.shape) for d, t in zip(back.dequantized(), tensors)]
                code_s = time.process_time() - t0
                adapted = apply_update(model, up, deq)
                lora = variant_names(model.decoder, v)[1]
                entry = {"variant": v.name, "note": v.note, "params": v.params, "lora": lora,
                         "rank": v.rank if lora else 0, "tensors": len(tensors),
                         "numbers": int(sum(t.numel() for t in tensors)), "steps": steps,
                         "lr": v.lr, "loss": v.loss, "crop_px": v.crop * model.cfg.spatial_factor,
                         "train_bits": list(v.bits), "q": q,
                         "exps": qu.exps, "nonzero": int(sum((a != 0).sum() for a in qu.ints)),
                         "coded_bytes": len(data), "update_bytes": len(data) + UPDATE_OVERHEAD,
                         "skipped_steps": up.skipped, "adapt_s": sec, "code_s": code_s, "encode_s": sec + code_s,
                         "eval": evaluate(adapted, tokens, clip)}
                summarise(entry, res["base"], bpp, pixels)
                g = entry["gain"]
                log(f"  {key}: {entry['update_bytes']} B, {sec:.0f} s, gain seen/unseen "
                    + " ".join(f"{b}:{g[b]['psnr_seen']:+.2f}/{g[b]['psnr_unseen']:+.2f}" for b in g)
                    + f", BD@97 unseen {entry['bd']['97']['unseen']['bd_psnr']}")
                res["variants"][key] = entry
                save()
    return 0


# ---- the report -------------------------------------------------------------------------------
NOTES = "<!-- notes: kept when the tables are rewritten -->"


def _key(x):
    return -1e9 if x is None else x


def _f(x, fmt="+.2f"):
    return "–" if x is None else format(x, fmt)


def report(results: Path, prefix: Path) -> int:
    res = json.loads(results.read_text())
    meta, base, vs = res["meta"], res["base"], res["variants"]
    for e in vs.values():  # the net gains again, from the raw numbers
        summarise(e, base, meta["bpp_tokens"], meta["size"][0] * meta["size"][1])
    results.write_text(json.dumps(res, indent=1) + "\n")
    rates = [str(b) for b in meta["rates"]]
    lines = ["# Instance-adaptive decoder study (issue 32, part 1)", "",
             (f"Command: `{meta['command']}` (then `python -m benchmarks.adapt_study --report "
              f"{prefix}`); {meta['machine']}, one thread, {meta['date']}, torch {meta['torch']}."), "",
             (f"Clip: `{meta['clip']}` from `shared/data/train` (a recipe-study validation clip), "
              f"first {meta['frames']} frames scaled to {SCALE_TO} px high and centre-cropped to "
              f"{meta['size'][0]}×{meta['size'][1]}, segments of {meta['segment_frames']} frames; "
              f"the update is trained on frames 0–{meta['seen_frames'] - 1} (*seen*) and also "
              f"measured on frames {meta['seen_frames']}–{meta['frames'] - 1} (*unseen*). Model "
              f"{meta['model']}; tokens fixed (one real .mgv stream per rate, bytes counted with "
              f"headers). Update bytes = range-coded integers + side table + "
              f"{meta['update_overhead']} B record framing. One update serves every rate point "
              f"(trained at random rates from {meta['rates']} unless said)."), "",
             "Base (tokens alone): " + ", ".join(
                 f"{b} bits {meta['bpp_tokens'][b]:.4f} bpp / {base[b]['psnr_seen']:.2f} dB seen / "
                 f"{base[b]['psnr_unseen']:.2f} dB unseen" for b in rates) + ".", "",
             "## Gains per rate point (PSNR-RGB dB, seen / unseen; MS-SSIM ×1000 unseen)", "",
             "| variant | params | numbers | update B | steps | encode s | decode s | "
             + " | ".join(f"{b} bits" for b in rates) + " |",
             "|---|---|---:|---:|---:|---:|---:|" + "---|" * len(rates)]
    for k, e in vs.items():
        ps = e["params"] + (f"+LoRA r{e['rank']}×{len(e['lora'])}" if e["lora"] else "")
        dec = np.mean([e["eval"][b]["decode_s"] for b in rates])
        cells = [f"{e['gain'][b]['psnr_seen']:+.2f} / {e['gain'][b]['psnr_unseen']:+.2f} "
                 f"({1000 * e['gain'][b]['msssim_unseen']:+.1f})" for b in rates]
        lines.append(f"| {k} | {ps} | {e['numbers']} | {e['update_bytes']} | {e['steps']} | "
                     f"{e['encode_s']:.0f} | {dec:.1f} | " + " | ".join(cells) + " |")
    bdec = np.mean([base[b]["decode_s"] for b in rates])
    lines += ["", (f"Base decode: {bdec:.1f} s per rate point ({meta['frames']} frames, float32); "
                   "encode s = CPU seconds of adaptation + update coding (one thread); the token "
                   "encode itself is the same with or without adaptation."), "",
              "## Net gain with the update's bytes counted (Bjøntegaard over the rate points)", "",
              ("Bjøntegaard-like ΔPSNR (dB; piecewise-linear in log rate) of tokens + update vs "
               "tokens alone, the update amortised over a clip of N frames of this size; – where "
               "the rates do not overlap. (The JSON also holds a BD-rate; it is not shown: this "
               "model's curve is nearly flat from 18 to 24 bits, which makes it swing.)"), "",
              "| variant | Δ | update B | " + " | ".join(
                  f"N={n} seen | N={n} unseen" for n in AMORTISE) + " | update bpp at N=97 |",
              "|---|---:|---:|" + "---|---|" * len(AMORTISE) + "---:|"]
    pix = meta["size"][0] * meta["size"][1]
    for k, e in vs.items():
        cells = []
        for n in AMORTISE:
            for part in ("seen", "unseen"):
                d = e["bd"][str(n)][part]
                cells.append(f"{_f(d['bd_psnr'])}")
        lines.append(f"| {k} | {step_label(e['q'])} | {e['update_bytes']} | " + " | ".join(cells)
                     + f" | {8 * e['update_bytes'] / (pix * 97):.4f} |")
    coded = [k for k in vs if vs[k]["q"] is not None]  # not the float references
    best = {n: max(coded, key=lambda k: _key(vs[k]["bd"][str(n)]["unseen"]["bd_psnr"])) for n in AMORTISE}
    lines += ["", "Best net gain on unseen frames: " + "; ".join(
        f"N={n}: {k} {_f(vs[k]['bd'][str(n)]['unseen']['bd_psnr'])} dB, "
        f"{vs[k]['encode_s']:.0f} s encode"
        for n, k in best.items()) + "."]
    md = prefix.with_suffix(".md")
    old = md.read_text() if md.exists() else ""
    notes = old[old.index(NOTES):] if NOTES in old else NOTES + "\n"
    md.write_text("\n".join(lines) + "\n\n" + notes)
    _plot(vs, prefix.with_suffix(".png"))
    return 0


def _plot(vs: dict, path: Path) -> None:
    """Net gain (update bytes counted, N = 33 / 97 / 300 frames) vs encode seconds of each
    variant's main entries (no Δ sweep, no float references), seen and unseen frames."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    main = {k: e for k, e in vs.items() if "/q" not in k and e["q"] is not None}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    marks = {"33": "v", "97": "o", "300": "^"}
    lo = -1.5
    for ax, part in zip(axes, ("unseen", "seen")):
        for i, (k, e) in enumerate(main.items()):
            c = plt.cm.tab20(i % 20)
            ys = {n: e["bd"][n][part]["bd_psnr"] for n in marks}
            for n, mk in marks.items():
                if ys[n] is not None:
                    ax.scatter(e["encode_s"], max(lo, ys[n]), color=c, marker=mk,
                               label=k if n == "97" and part == "unseen" else None)
            y = ys["300"]
            if y is not None:
                ax.annotate(k, (e["encode_s"], max(lo, y)), fontsize=6, xytext=(3, 3),
                            textcoords="offset points", color=c)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_ylim(lo - 0.1, None)
        ax.set_xlabel("encode (adaptation + coding) CPU seconds, one thread")
        ax.set_title(f"{part} frames (▼ N=33, ● 97, ▲ 300; floored at {lo} dB)")
    axes[0].set_ylabel("BD-ΔPSNR-RGB, update bytes counted (dB)")
    axes[0].legend(fontsize=6, ncol=2, loc="lower right")
    fig.suptitle("Decoder adaptation on sam2_juggle 176×144 (mgv-default-v6): net gain vs encode time")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
