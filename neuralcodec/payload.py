"""Segment payloads: LFQ codes ↔ the coded bytes of a SEGMENT record (spec §6, §7), and the
per-segment rate control that picks how many bits a payload keeps.

One representation of a segment's bits on the codec's path: **codes**, a tensor
``1×b×t×h×w`` on the model's device, float with ``> 0`` meaning bit 1 (the encoder's codes in
{-1, +1}, or its latents z themselves: the sign convention of spec §5). Raw payloads (mode 0)
are packed and unpacked there by :mod:`neuralcodec.kernels` (the Triton kernels on CUDA, or
wherever ``backend="triton"`` is asked for; the PyTorch reference otherwise). Only the context
coder (mode 1, :mod:`neuralcodec.entropy`), a CPU range coder, sees the same bits as a
``b×t×h×w`` uint8 {0, 1} array (:func:`bits_of`), as do readers that want the stored bits
themselves (:func:`decode_payload`).
"""
from __future__ import annotations

from typing import Callable, Dict, Iterator, Optional, Tuple

import numpy as np
import torch

from . import container as ct
from . import entropy as ent
from .errors import InputError, PayloadError
from .kernels import pack_bits, unpack_bits

RATE_TOLERANCE = 0.10  # a target rate missed by more than this fraction is reported
SEGMENT_OVERHEAD = (ct.RECORD_HEAD.size + ct.CRC.size + ct.SEGMENT_HEAD.size
                    + ct.INDEX_ENTRY.size)  # bytes a segment costs besides its data (52)
STREAM_TAIL = ct.RECORD_HEAD.size + 4 + ct.CRC.size + ct.END_RECORD_SIZE  # INDEX head + END


def bits_of(codes: torch.Tensor) -> np.ndarray:
    """Codes ``1×b×t×h×w`` (any device; ``> 0`` = bit 1) → bits ``b×t×h×w`` uint8 {0, 1}."""
    return (codes[0] > 0).to(torch.uint8).cpu().numpy()


def codes_of(bits: np.ndarray, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Bits ``b×…`` uint8 {0, 1} → codes ``1×b×…`` in {-1, +1} of ``dtype`` on ``device``."""
    x = torch.from_numpy(np.ascontiguousarray(bits)).to(device)
    return (x.to(dtype) * 2 - 1).unsqueeze(0)


def encode_payload(codes: torch.Tensor, entropy: int,
                   backend: Optional[str] = None) -> Tuple[int, bytes]:
    """Codes ``1×b×t×h×w`` → (entropy mode used, payload). The raw payload is packed on the
    codes' device (``backend``: :func:`neuralcodec.kernels.select_backend`); with
    ``context`` the raw mode is used wherever coding does not make the payload smaller."""
    raw = pack_bits(codes, backend).cpu().numpy().tobytes()
    if entropy == ct.ENTROPY_CONTEXT:
        coded = ent.encode_bits(bits_of(codes))
        if len(coded) < len(raw):
            return ct.ENTROPY_CONTEXT, coded
    return ct.ENTROPY_NONE, raw


def _packed(data: bytes, device: torch.device | str) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)


def decode_codes(seg: ct.Segment, bits: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, backend: Optional[str] = None) -> torch.Tensor:
    """Segment payload → codes ``1×b×t×h×w`` in {-1, +1} of ``dtype`` on ``device`` (b =
    ``bits``; raw payloads unpacked there) → :class:`PayloadError`."""
    shape = (bits, seg.latent_t, seg.latent_h, seg.latent_w)
    if seg.entropy == ct.ENTROPY_CONTEXT:
        out = ent.decode_bits(seg.data, shape)
        if out.shape != shape:
            raise PayloadError(f"segment {seg.index}: decoded shape {out.shape} != {shape}")
        return codes_of(out, device, dtype)
    return unpack_bits(_packed(seg.data, device), (1,) + shape, dtype, backend)


def decode_payload(seg: ct.Segment, bits: int) -> np.ndarray:
    """Segment payload → the stored bits ``b×t×h×w`` uint8 {0, 1} → :class:`PayloadError`."""
    if seg.entropy == ct.ENTROPY_CONTEXT:
        shape = (bits, seg.latent_t, seg.latent_h, seg.latent_w)
        out = ent.decode_bits(seg.data, shape)
        if out.shape != shape:
            raise PayloadError(f"segment {seg.index}: decoded shape {out.shape} != {shape}")
        return out
    return bits_of(decode_codes(seg, bits))


def check_payload(seg: ct.Segment, bits: int) -> None:
    """Validate a payload without keeping its bits (a context payload is decoded once, one
    latent frame at a time) → :class:`PayloadError`."""
    if seg.entropy == ct.ENTROPY_CONTEXT:
        for _ in ent.iter_decode_bits(seg.data, (bits, seg.latent_t, seg.latent_h, seg.latent_w)):
            pass


def payload_frames(seg: ct.Segment, bits: int, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32,
                   backend: Optional[str] = None) -> Iterator[torch.Tensor]:
    """A segment's codes one latent frame at a time (``1×b×1×h×w``, as :func:`decode_codes`):
    memory of one frame whatever the segment's length. Mode 1 raises :class:`PayloadError`
    only after its last frame (run :func:`check_payload` first)."""
    t, h, w = seg.latent_t, seg.latent_h, seg.latent_w
    if seg.entropy == ct.ENTROPY_CONTEXT:
        for f in ent.iter_decode_bits(seg.data, (bits, t, h, w)):
            yield codes_of(f[:, None], device, dtype)
        return
    n = bits * h * w
    for f in range(t):
        lo = f * n
        chunk = seg.data[lo >> 3:(lo + n + 7) >> 3]  # the frame's bits, from bit lo & 7 on
        flat = unpack_bits(_packed(chunk, device), (1, 1, 1, 1, 8 * len(chunk)), dtype, backend)
        codes = flat.view(-1)[lo & 7:(lo & 7) + n].view(1, 1, h, w, bits)
        yield codes.permute(0, 4, 1, 2, 3).contiguous()


def rate_payload(codes_for: Callable[[int], torch.Tensor], k: int, entropy: int, budget: float,
                 backend: Optional[str] = None) -> Tuple[int, int, bytes]:
    """The most bits per token b <= ``k`` whose coded payload fits ``budget`` bytes → (b,
    entropy mode, payload); ``codes_for(b)`` gives a segment's codes ``1×b×t×h×w`` at b bits
    (the nested code decodes them alone). b = 1 when nothing fits. Sizes grow with b, so b is
    found by bisection: about log2(k) codings of the payload, no model run."""
    coded: Dict[int, Tuple[int, bytes]] = {}

    def size(b: int) -> int:
        if b not in coded:
            coded[b] = encode_payload(codes_for(b), entropy, backend)
        return len(coded[b][1])

    if size(k) <= budget:
        lo = k
    elif k == 1 or size(1) > budget:
        lo = 1
    else:
        lo, hi = 1, k  # size(lo) fits, size(hi) does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if size(mid) <= budget:
                lo = mid
            else:
                hi = mid
    return (lo,) + coded[lo]


def parse_rate(spec: str) -> float:
    """"50k" / "1.5M" / "64000" (bits per second; k = 1000) → float → :class:`InputError`."""
    s = spec.strip()
    mult = {"k": 1e3, "m": 1e6, "g": 1e9}.get(s[-1:].lower(), 1.0)
    try:
        v = float(s[:-1] if mult != 1.0 else s) * mult
    except ValueError:
        raise InputError(f"bitrate {spec!r}: expected a number with an optional k or M suffix") from None
    if not 0 < v < float("inf"):
        raise InputError(f"bitrate {spec!r} must be positive")
    return v
