"""Encoder side of decoder adaptation (``mgv encode --adapt N``, the slow presets): fit the
decoder's biases, normalisation affines and AdaGN projections to the video being coded, tokens
fixed, and code the change as an ADAPT record (:mod:`neuralcodec.adapt`, spec §8c) — kept only
when its measured gain pays for its bytes at the video's own rate–distortion slope
(:meth:`Fitting.own_slope`: the point then lands above the plain stream's curve).

Chosen by the study ``benchmarks/adapt_study.py`` (validation clips cut from
``../shared/data/train``, never eval/): that set (34k numbers in the shipped model) gave the
largest gain per byte on the frames it was trained on (+1.7–2.1 dB at 176×144), trained at
Adam lr 1e-2 on whole decoded segments, each tensor's change quantized with a step of about its
rms (Δ = 2^round(log2 rms): ≈ 2.2 bits a number, ≤ 0.1 dB lost). The windows all along each
segment, the decoder adapted (the one ``mgv decode`` runs by default: for v6 its ``fast``
variant, 2.8× cheaper per step than v6's own decoder) and the cosine decay of the learning rate
were chosen on a 300-frame validation clip (``lab/studies/adapt_windows.py``), and the loss,
MSE + :data:`ADAPT_MSSSIM` · (1 − MS-SSIM) (:func:`~neuralcodec.losses.distortion`), on the same
clip (``lab/notes/refine_rate.md``: with refinement after it, +0.33 dB and +0.015 MS-SSIM over an
MSE-only update; since the MS-SSIM runs channels-last a step costs ~15% more than MSE alone).

The encoder keeps windows of :data:`WINDOW_LATENTS` latent frames all along the video
(:mod:`neuralcodec.sampling`), decodes their codes from the stream it has just written and trains
on random crops bounded by :data:`STEP_PIXELS` (a step costs the same at any frame size), each
window drawn in proportion to its frames; the gain is measured on whole frames of held-out
windows, decoded as the stream's decode does (group norms see whole frames). A window inside a
segment first decodes the :data:`CONTEXT_LATENTS` latent frames before it without a gradient
(the causal decoder's state, as the stream's decode fills it).
"""
from __future__ import annotations

import copy
import io
import math
from fractions import Fraction
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import container as ct
from .configs import DECODER_AUTO, DECODER_FULL, DEFAULT_RDO
from .adapt import MAX_EXP, MAX_VMAX, MIN_EXP, Adaptation, TensorUpdate, tensor_names
from .chunks import decoder_step, encode_segment, frames_to_tensor
from .layers import FrameGroupNorm, streaming
from .losses import distortion
from .model import inference_dtype
from .payload import decode_codes, encode_payload
from .rdo import select_codes
from .sampling import WINDOW_LATENTS, segment_groups, window_frames
from .video_io import VideoMeta
from .weights import decoder_variant, load_model, model_identity, registry

ADAPT_LR = 1e-2  # Adam learning rate (the study's choice for biases, norms and AdaGN)
ADAPT_MSSSIM = 0.1  # weight of the MS-SSIM term of the training loss (losses.distortion; 0 = MSE only)
LR_FLOOR = 0.1  # with a decay (Fitting's total), the learning rate ends at this fraction
MAX_ADAPT = 10000  # most steps --adapt accepts
CONTEXT_LATENTS = 2  # latent frames decoded without gradient before a window inside a segment
STEP_PIXELS = 17 * 224 * 224  # pixels × frames a training step decodes (crop bound)
# An update is kept when its gain (dB, held-out windows) is at least the video's own slope
# (Fitting.own_slope) times the doublings of its segments' bytes it costs; where that slope cannot
# be measured, this many dB per doubling (v6's own slope is 1.6 at 12 bits, 0.5 at 18: its card).
DB_PER_DOUBLING = 1.5
HOLD_OUT = 4  # with 8 or more sampled windows, every 4th only measures the gain
# The updates the encoder weighs (label, quantization step in rms of each tensor's change, which
# tensors): it sends the one whose gain beats what it needs (Fitting.own_slope) by the most, if any.
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


def decayed_lr(lr0: float, step: int, total: int) -> float:
    """The learning rate at ``step`` of ``total``: cosine decay from ``lr0`` to LR_FLOOR·lr0."""
    return lr0 * (LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total))))


def float_model(model: torch.nn.Module, decoder: str = DECODER_AUTO) -> torch.nn.Module:
    """A float32 copy of ``model`` (from its weights file when it is registered: W of spec §8c)
    whose decoder is the one ``decoder`` chooses (:func:`~neuralcodec.weights.decoder_variant`)."""
    name, prefix = model_identity(model)
    e = registry().get(name)
    if e is not None and bytes.fromhex(e.sha256)[:16] == prefix:
        fm = load_model(name).float().eval()
    else:
        fm = copy.deepcopy(model).float().eval()
    variant = decoder_variant(fm, decoder)
    return fm if variant is None else variant.float().eval()


def quantize(delta: torch.Tensor, q: float = 1.0) -> Tuple[int, np.ndarray]:
    """A tensor's change → (e, integers v) with Δ = 2^e, e = round(log2(q·rms)) in
    MIN_EXP..MAX_EXP and v = round(δ / Δ) clipped to ±MAX_VMAX."""
    d = delta.detach().float().reshape(-1)
    rms = float(d.pow(2).mean().sqrt())
    e = MIN_EXP if rms == 0 else int(min(MAX_EXP, max(MIN_EXP, round(math.log2(q * rms)))))
    v = torch.round(d / 2.0 ** e).clamp_(-MAX_VMAX, MAX_VMAX).to(torch.int32).numpy()
    return e, v


def _segment_codes(stream: bytes, ends: dict, k: int) -> dict:
    """{segment: its codes ``1×k×t×h×w`` int8, the stored bits in {-1, +1} and the rest 0 (the
    decoder's input), latent frames up to ``ends[segment]``} for the segments of ``ends``."""
    out = {}
    reader = ct.Reader(io.BytesIO(stream))
    for seg in reader.segments():
        if seg.index in ends:
            b = seg.stored_bits(reader.header)
            c = decode_codes(seg, b, "cpu", torch.float32)[:, :, :ends[seg.index]]
            out[seg.index] = torch.zeros((1, k) + c.shape[2:], dtype=torch.int8)
            out[seg.index][:, :b] = c
    return out


def _window(rng: np.random.Generator, h: int, w: int, s: int, frames: int) -> Tuple[int, int, int, int]:
    """A random token window (y0, x0, rows, cols) of ``h×w`` tokens whose pixels × ``frames``
    stay within :data:`STEP_PIXELS`."""
    side = max(1, int(math.sqrt(STEP_PIXELS / max(1, frames)) // s))
    ch, cw = min(h, side), min(w, max(side, side * side // max(1, min(h, side))))
    cw = min(cw, w)
    return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw


def _target(frames: List[np.ndarray], y0: int, x0: int, ch: int, cw: int, s: int) -> torch.Tensor:
    """The pixels of a token window, ``1×3×T×(ch·s)×(cw·s)`` in [-1, 1] (edge-padded frames)."""
    x = np.stack(frames)[:, y0 * s:(y0 + ch) * s, x0 * s:(x0 + cw) * s]
    ph, pw = ch * s - x.shape[1], cw * s - x.shape[2]
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return frames_to_tensor(list(x), "cpu")


def _loss(model, codes: torch.Tensor, context: int, target: torch.Tensor, auto: bool,
          msssim: float) -> torch.Tensor:
    """A training step's loss (:func:`~neuralcodec.losses.distortion` with weight ``msssim``:
    MSE in [-1, 1] units, plus the MS-SSIM term) against ``target`` of the decoder's output for
    ``codes`` (``1×K×t×h×w``: the stored bits, the rest 0) after its first ``context`` latent
    frames, which only fill the causal state (no gradient, output dropped; float32, the
    inference path whose state the step reads); the step under bfloat16 autocast where the CPU
    computes it natively (``auto``)."""
    dec, q = model.decoder, model.quantizer.decoder_codes
    with streaming(dec):
        if context:
            with torch.no_grad():
                dec(q(codes[:, :, :context]))
        with torch.autocast("cpu", torch.bfloat16, enabled=auto):
            out = dec(q(codes[:, :, context:]))
    t = min(out.shape[2], target.shape[2])  # the window may end with its segment
    return distortion(out[:, :, :t], target[:, :, :t], msssim)


Groups = Sequence[Tuple[Sequence[str], float]]  # (decoder tensor names, Adam learning rate)


class Fitting:
    """One adaptation of ``model``'s decoder (a float32 copy of it) to the sampled windows of
    ``stream`` (the ``.mgv`` bytes just encoded; ``samples``: :meth:`FrameSampler.samples`):
    :meth:`train` takes Adam steps, :meth:`decide` quantizes the change and weighs it against
    its bytes. ``groups``: the tensors trained and their learning rates (default: every
    :func:`adapt_names` tensor at :data:`ADAPT_LR`). ``decoder``: which decoder network to adapt
    (:func:`~neuralcodec.weights.decoder_variant`'s choice; default ``auto``, the one ``mgv
    decode`` runs on plain segments: a registered default variant is changed by a record of
    method 2, the model's own decoder by one of method 0). ``total``: the steps the learning
    rate decays over (cosine, to :data:`LR_FLOOR` of its start); None keeps it constant.
    ``msssim``: the weight of the loss's MS-SSIM term (:func:`~neuralcodec.losses.distortion`).
    ``segments``: (first, count), the segments the update is for (its windows only, weighed
    against those segments' bytes); None: every segment, against the whole stream. ``rdo``:
    the λ the stream's codes were chosen with (:meth:`slope_above` encodes with it)."""

    def __init__(self, model: torch.nn.Module, stream: bytes, samples, seed: int = 0,
                 groups: Optional[Groups] = None, decoder: str = DECODER_AUTO,
                 total: Optional[int] = None, msssim: float = ADAPT_MSSSIM,
                 segments: Optional[Tuple[int, int]] = None, rdo: float = DEFAULT_RDO) -> None:
        self.stream, self.msssim, self.rdo = stream, msssim, rdo
        reader = ct.Reader(io.BytesIO(stream))
        self.header = reader.header
        self.range = segments or (0, self.header.segment_count)
        first, count = self.range
        samples = [((seg, j), fr) for (seg, j), fr in samples if first <= seg < first + count]
        segs = [sg for sg in reader.segments() if first <= sg.index < first + count]
        # the bytes the update's rate is weighed against: the stream's, or its segments' records
        self.share = len(stream) if segments is None else sum(ct.record_size(len(sg.data)) for sg in segs)
        fm = self.fm = float_model(model, decoder)
        for p in fm.parameters():
            p.requires_grad_(False)
        groups = groups or [(adapt_names(fm), ADAPT_LR)]
        params = dict(fm.named_parameters())
        self.names = [n for names, _ in groups for n in names]
        self.train_params = [params[n] for n in self.names]
        self.base = [p.detach().clone() for p in self.train_params]
        for p in self.train_params:
            p.requires_grad_(True)
        self.opt = torch.optim.Adam([{"params": [params[n] for n in names], "lr": lr, "lr0": lr}
                                     for names, lr in groups])
        self.total = total
        ends: dict = {}
        for (seg, j), _ in samples:
            ends[seg] = max(ends.get(seg, 0), j + WINDOW_LATENTS)
        self.codes = _segment_codes(stream, ends, fm.cfg.bits)
        self.data = [((seg, j), fr) for (seg, j), fr in samples  # windows the stream holds
                     if seg in self.codes and j < self.codes[seg].shape[2]]
        self.auto = inference_dtype("cpu") == torch.bfloat16
        self.rng = np.random.default_rng(seed)
        n = len(self.data)
        # every HOLD_OUT-th sampled window only measures (when there are enough): the gain the
        # encoder judges the update by is then that on frames it did not train on
        self.held = [j for j in range(n) if n >= 2 * HOLD_OUT and j % HOLD_OUT == HOLD_OUT - 1]
        self.fit = [j for j in range(n) if j not in self.held]
        self.evals = self.held or self.fit
        self.before = self.loss_on(self.evals)
        self.slope = self.own_slope(segs)
        self.steps = 0

    def own_slope(self, segs: Sequence[ct.Segment]) -> float:
        """This video's rate–distortion slope at the stream's rate (dB per doubling of bytes):
        what an update must beat for its point to land above the plain curve. Above the rate
        (:meth:`slope_above`) where the model has more bits, else below it: held-out windows'
        PSNR and the segments' bytes with the last quarter of the bits dropped (as rate control
        drops them), a bound on a concave curve; :data:`DB_PER_DOUBLING` where neither is
        measurable."""
        above = self.slope_above()
        if above is not None:
            return above
        hdr = self.header
        low = hdr.bits - max(1, hdr.bits // 4)
        full = sum(ct.record_size(len(sg.data)) for sg in segs)
        less = sum(ct.record_size(len(encode_payload(decode_codes(sg, b)[:, :low], hdr.entropy)[1]))
                   for sg in segs for b in [sg.stored_bits(hdr)])
        worse = self.loss_on(self.evals, low) if low >= 1 else 0.0
        if low < 1 or less >= full or worse <= self.before:
            return DB_PER_DOUBLING
        return 10 * math.log10(worse / self.before) / math.log2(full / less)

    def slope_above(self) -> Optional[float]:
        """dB per doubling of bytes from the stream's bits to one bit plane more (at most K: the
        next point of a 6/12/18/24 ladder for v6), on the held-out windows encoded afresh (the
        stream lacks the codes of more bits): each alone, codes by the stream's RDO, entropy coded
        and decoded by the stream's decoder. None at K bits or where more bits gain nothing."""
        hdr, fm = self.header, self.fm
        up = min(fm.cfg.bits, hdr.bits + fm.cfg.bits // fm.cfg.planes)  # one plane more
        if up <= hdr.bits:
            return None
        meta = VideoMeta(hdr.width, hdr.height, Fraction(1), None, "rgb24")
        size, mse = {hdr.bits: 0, up: 0}, {hdr.bits: 0.0, up: 0.0}  # Σ over the windows
        with torch.no_grad():
            for i in self.evals:
                fr = self.data[i][1]
                lat = encode_segment(fm, iter(fr), meta, len(fr))[1].float()
                for b in size:
                    codes = select_codes(lat, fm.quantizer, b, self.rdo)
                    size[b] += len(encode_payload(codes, hdr.entropy)[1])
                    full = torch.cat([codes, torch.zeros_like(lat[:, b:])], 1)
                    mse[b] += self.decoded_mse(fr, full, 0)
        if size[up] <= size[hdr.bits] or mse[up] >= mse[hdr.bits]:
            return None
        return 10 * math.log10(mse[hdr.bits] / mse[up]) / math.log2(size[up] / size[hdr.bits])

    def latents(self, idx: int):
        """Sampled window ``idx`` → (its frames, its first latent frame j, the codes
        ``1×K×t×h×w`` int8 of its context latent frames and its own, the number of context ones)."""
        (seg, j), fr = self.data[idx]
        j0 = max(0, j - CONTEXT_LATENTS)
        return fr, j, self.codes[seg][:, :, j0:j + WINDOW_LATENTS], j - j0

    def window(self, idx: int):
        """Sampled window ``idx`` → (codes ``1×K×t×h×w`` float32 with its context latent frames
        first, the number of those, target pixels), randomly cropped."""
        fr, j, lat, ctx = self.latents(idx)
        s = self.fm.cfg.spatial_factor
        # the crop is bounded as for a whole window, also for a segment's short last one (which
        # decodes its context too: a crop by its own few frames would cost many steps' time)
        y0, x0, ch, cw = _window(self.rng, lat.shape[3], lat.shape[4], s, self.nominal(j))
        return lat[:, :, :, y0:y0 + ch, x0:x0 + cw].float(), ctx, _target(fr, y0, x0, ch, cw, s)

    def nominal(self, j: int) -> int:
        """Frames of a whole window starting at latent frame ``j`` (17 or 20 for v6)."""
        first, end = window_frames(j, self.fm.cfg.temporal_factor)
        return end - first

    def pick(self) -> int:
        """A random training window, each drawn in proportion to its frames (a segment's short
        last window as often as its frames say; clips without one draw as uniformly)."""
        while True:
            idx = self.fit[int(self.rng.integers(len(self.fit)))]
            (_, j), fr = self.data[idx]
            if len(fr) >= self.nominal(j) or self.rng.random() < len(fr) / self.nominal(j):
                return idx

    def measure(self, idx: int, bits: Optional[int] = None) -> float:
        """MSE (in [-1, 1] units) of sampled window ``idx`` on whole frames (its codes' first
        ``bits`` bits only when given), as the stream's decode makes them: float32, its context first, in the decoder's chunks
        (:func:`~neuralcodec.chunks.decoder_step`: bounded memory at any frame size). Crops
        would not do: the decoder's group norms take their statistics over the whole frame."""
        fr, _, lat, ctx = self.latents(idx)
        if bits is not None:
            lat = torch.cat([lat[:, :bits], torch.zeros_like(lat[:, bits:])], 1)  # dropped: 0
        return self.decoded_mse(fr, lat, ctx)

    def decoded_mse(self, fr: List[np.ndarray], lat: torch.Tensor, ctx: int) -> float:
        """MSE of frames ``fr`` decoded from codes ``lat`` ``1×K×t×h×w`` (stored bits ±1, the
        rest 0) after ``ctx`` context latent frames, as :meth:`measure` says."""
        h, w = fr[0].shape[:2]
        step = decoder_step(w, h, self.fm.cfg.temporal_factor)
        cuts = sorted(set(range(0, ctx, step)) | set(range(ctx, lat.shape[2], step)) | {lat.shape[2]})
        dec, q = self.fm.decoder, self.fm.quantizer.decoder_codes
        sse, count, f = 0.0, 0, 0
        with torch.no_grad(), streaming(dec):
            for a, e in zip(cuts, cuts[1:]):
                out = dec(q(lat[:, :, a:e].float()))
                m = min(out.shape[2], len(fr) - f)
                if a < ctx or m <= 0:
                    continue
                x = frames_to_tensor(fr[f:f + m], "cpu")[0]
                sse += float((out[0, :, :m, :h, :w].float().clamp(-1, 1) - x).pow(2).sum())
                count, f = count + x.numel(), f + m
        return sse / max(1, count)

    def loss_on(self, windows: Sequence[int], bits: Optional[int] = None) -> float:
        """Mean of :meth:`measure` over the sampled windows ``windows``."""
        return float(np.mean([self.measure(i, bits) for i in windows]))

    def train(self, steps: int, progress: Optional[Callable[[int], None]] = None) -> None:
        """``steps`` Adam steps, each on a random crop of a random training window (:meth:`pick`)."""
        self.fm.train()
        for _ in range(steps):
            if self.total:
                for g in self.opt.param_groups:
                    g["lr"] = decayed_lr(g["lr0"], self.steps, self.total)
            c, n, t = self.window(self.pick())
            self.opt.zero_grad(set_to_none=True)
            _loss(self.fm, c, n, t, self.auto, self.msssim).backward()
            if all(torch.isfinite(p.grad).all() for p in self.train_params if p.grad is not None):
                self.opt.step()
            self.steps += 1
            if progress:
                progress(1)
        self.fm.eval()

    def decide(self) -> Tuple[Optional[Adaptation], dict]:
        """→ (the ADAPT record's adaptation for every segment, or None when it does not pay, and
        a summary: gain in dB on the held-out windows, update bytes, the decision). The trained
        values are kept: more :meth:`train` steps may follow."""
        sha = self.fm.decoder_sha256
        order = [n for n in tensor_names(self.fm) if sha is None or n.startswith("decoder.")]
        trained = [p.detach().clone() for p in self.train_params]
        summary = {"steps": self.steps, "decoder": self.fm.variant or DECODER_FULL,
                   "segments": list(self.range),
                   "windows_sampled": len(self.data),
                   "windows_held_out": len(self.held), "mse_before": self.before,
                   "slope_db": self.slope, "kept": False}
        best = None
        with torch.no_grad():
            for label, q, keep in CANDIDATES:
                tensors = []
                for n, p, p0, p1 in zip(self.names, self.train_params, self.base, trained):
                    e, v = quantize(p1 - p0, q)
                    if keep(n) and np.any(v):
                        tensors.append(TensorUpdate(order.index(n), e, int(np.abs(v).max()), v))
                        p.copy_(p0 + torch.from_numpy(v.astype(np.float32) * np.float32(2.0 ** e))
                                .reshape(p.shape))
                    else:
                        p.copy_(p0)
                if not tensors:
                    continue
                tensors.sort(key=lambda t: t.index)
                ad = Adaptation(self.header.model_sha256, *self.range,
                                tuple(tensors), None if sha is None else bytes.fromhex(sha)[:16])
                size = ct.record_size(len(ad.to_payload()))
                after = self.loss_on(self.evals)
                gain = 10 * math.log10(self.before / after) if after > 0 else 0.0
                need = self.slope * math.log2(1 + size / max(1, self.share))
                row = {"candidate": label, "gain_db": gain, "update_bytes": size, "needed_db": need,
                       "numbers": ad.numbers}
                summary.setdefault("candidates", []).append(row)
                if best is None or gain - need > best[1]["gain_db"] - best[1]["needed_db"]:
                    best = (ad, row)
            for p, p1 in zip(self.train_params, trained):
                p.copy_(p1)
        if best is None:
            return None, {**summary, "why": "no change"}
        kept = best[1]["gain_db"] >= best[1]["needed_db"]
        return (best[0] if kept else None), {**summary, **best[1], "kept": kept}


def fit_adaptation(model: torch.nn.Module, stream: bytes, samples, steps: int,
                   progress: Optional[Callable[[int], None]] = None, seed: int = 0,
                   decoder: str = DECODER_AUTO, msssim: float = ADAPT_MSSSIM,
                   segments: Optional[Tuple[int, int]] = None,
                   rdo: float = DEFAULT_RDO) -> Tuple[Optional[Adaptation], dict]:
    """Adapt ``model``'s decoder to the sampled windows of ``stream`` (the ``.mgv`` bytes just
    encoded; ``samples``: :meth:`FrameSampler.samples`) with ``steps`` Adam steps → (the ADAPT
    record's adaptation for every segment, or None when it does not pay, and a summary: gain in
    dB on the held-out windows, update bytes, the decision; ``decoder``, ``msssim``,
    ``segments``, ``rdo``: as :class:`Fitting`).
    The learning rate decays over the ``steps`` (cosine, :data:`LR_FLOOR`)."""
    fit = Fitting(model, stream, samples, seed, decoder=decoder, total=steps, msssim=msssim,
                  segments=segments, rdo=rdo)
    fit.train(steps, progress)
    return fit.decide()


def fit_adaptations(model: torch.nn.Module, stream: bytes, samples, steps: int,
                    progress: Optional[Callable[[int], None]] = None,
                    per: Optional[int] = None, rdo: float = DEFAULT_RDO) -> Tuple[List[Adaptation], dict]:
    """:func:`fit_adaptation` for each group of :func:`segment_groups` (``per`` segments at
    most; ``steps`` steps each, the update weighed against its segments' bytes; ``rdo``: the
    stream's λ) → (the updates that pay, in segment order;
    a summary: that of the one group, or, for several, their totals and ``groups``, the
    summary of each)."""
    header = ct.Reader(io.BytesIO(stream)).header
    ranges = segment_groups(header.segment_count, per)
    if len(ranges) == 1:
        ad, row = fit_adaptation(model, stream, samples, steps, progress, rdo=rdo)
        return [ad] if ad is not None else [], row
    got = []
    for first, count in ranges:
        mine = [s for s in samples if first <= s[0][0] < first + count]
        if mine:
            got.append(fit_adaptation(model, stream, mine, steps, progress, segments=(first, count),
                                      rdo=rdo))
        else:  # the sampler kept no window there (large frames: few windows in its memory)
            got.append((None, {"steps": 0, "segments": [first, count], "kept": False,
                               "why": "no frames of these segments kept"}))
            if progress:
                progress(steps)
    ads = [ad for ad, _ in got if ad is not None]
    rows = [row for _, row in got]
    sent = [row for row in rows if row["kept"]]
    decoder = next((row["decoder"] for row in rows if "decoder" in row), DECODER_AUTO)
    for row in rows:
        row.setdefault("decoder", decoder)
    return ads, {"steps": steps, "decoder": decoder, "kept": bool(sent),
                 "update_bytes": sum(row.get("update_bytes", 0) for row in sent),
                 "groups": rows}
