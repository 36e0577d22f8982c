"""Fused LFQ hot path: sign-quantize + bit-pack, unpack, and token indices.

Between the encoder and the bitstream every latent value is touched once; these functions make
that pass a single memory-bound kernel on a GPU (Triton) and keep a vectorized PyTorch
reference beside each kernel (same module, same results bit for bit).

**Raw packed payload layout** (normative, ``bitstream_spec.md``): for latents ``z`` of shape
``B×K×T×H×W`` the bit stream visits tokens in order ``(b, t, y, x)`` (row-major, x fastest)
and, within a token, channels ``k = 0..K-1``. Global bit index::

    i = ((((b·T + t)·H + y)·W + x)·K + k)

Bit ``i`` is bit position ``i & 7`` (LSB first) of byte ``i >> 3``; the last byte is
zero-padded; the payload has ``ceil(B·T·H·W·K / 8)`` bytes. Bit value 1 means ``z > 0``
(code +1); bit value 0 means ``z <= 0`` (code -1). A NaN compares false and packs as bit 0.

Backends: ``"torch"`` (reference, any device) and ``"triton"`` (CUDA tensors, or any tensor
when ``TRITON_INTERPRET=1`` is set and the caller asks for ``"triton"`` explicitly, which is
how CI tests the kernels on a CPU). :func:`select_backend` makes the choice visible; an error
inside the Triton path propagates, it never falls back silently.

Kernels
-------
* pack: each program writes ``BLOCK`` output bytes; for each byte it gathers its 8 bits
  (token ``i // K`` and channel ``i % K``, with ``K`` a compile-time constant so both are a
  multiply-shift), decomposes the first token of the byte into ``(b, t, y, x)`` once per byte
  and reaches the following tokens by carries, loads through the input strides (any layout,
  e.g. permuted or sliced views), compares ``> 0`` and ORs the bits into one ``uint8``.
* unpack: each program writes a block of ``BLOCK`` spatio-temporal positions of one batch item
  for all ``K`` channels (the output is contiguous ``B×K×T×H×W``), so the position → token
  mapping needs no division: ``token = b·T·H·W + s``.
* token indices: each program handles ``BLOCK`` tokens and loops over the ``K`` channels.

Offsets are int32 when every index fits and int64 otherwise (a compile-time flag).
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Tuple

import torch

from .configs import MAX_BITS  # channels per token the kernels take (int32 token indices)

try:  # Triton is optional: the reference path needs only PyTorch.
    import triton
    import triton.language as tl
    _HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None
    _HAS_TRITON = False

__all__ = ["pack_bits", "unpack_bits", "token_indices", "packed_size", "triton_available",
           "select_backend", "pack_bits_reference", "unpack_bits_reference",
           "token_indices_reference", "BACKENDS"]

BACKENDS = ("torch", "triton")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_INT32_LIMIT = 2 ** 31 - 1

# Tile sizes (module constants so tests can shrink them to cross block boundaries cheaply).
_PACK_BLOCK = 512  # output bytes per program (4096 input elements)
_UNPACK_BLOCK = 1024  # spatio-temporal positions per program (× K output elements)
_INDEX_BLOCK = 512  # tokens per program
_NUM_WARPS = 4


# --------------------------------------------------------------------------- dispatch

def _interpret_mode() -> bool:
    """True when ``TRITON_INTERPRET`` is set to a true value (kernels run on the host)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def triton_available(device: torch.device | str) -> bool:
    """Whether the Triton kernels can run on tensors of ``device``: Triton imports and either
    the device is CUDA (and CUDA is usable) or ``TRITON_INTERPRET=1`` is set (interpreter,
    any device)."""
    if not _HAS_TRITON:
        return False
    device = torch.device(device)
    if _interpret_mode():
        return True
    return device.type == "cuda" and torch.cuda.is_available()


def select_backend(t: torch.Tensor, backend: str | None = None) -> str:
    """The backend that :func:`pack_bits` & co. will use for tensor ``t``.

    ``backend=None`` picks ``"triton"`` when ``t`` is on CUDA and Triton imports, else
    ``"torch"``. ``"torch"`` is always honoured. ``"triton"`` is honoured when
    :func:`triton_available` says so for ``t.device`` (CUDA, or ``TRITON_INTERPRET=1``) and
    raises :class:`RuntimeError` otherwise, never degrading silently. Unknown names raise
    :class:`ValueError`.
    """
    if backend is None:
        if t.is_cuda and _HAS_TRITON and not _interpret_mode():
            return "triton"
        return "torch"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == "triton" and not triton_available(t.device):
        why = "triton is not installed" if not _HAS_TRITON else (
            f"tensor is on {t.device} (needs CUDA, or TRITON_INTERPRET=1 for the interpreter)")
        raise RuntimeError(f"backend 'triton' requested but unavailable: {why}")
    return backend


# --------------------------------------------------------------------------- validation

def packed_size(shape: Tuple[int, int, int, int, int]) -> int:
    """Bytes of the raw payload for codes of ``shape`` ``(B, K, T, H, W)``:
    ``ceil(B·K·T·H·W / 8)``."""
    n = 1
    for s in shape:
        n *= int(s)
    return (n + 7) // 8


def _check_shape(shape) -> Tuple[int, int, int, int, int]:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError as exc:
        raise ValueError(f"shape must be 5 integers (B, K, T, H, W), got {shape!r}") from exc
    if len(shape) != 5:
        raise ValueError(f"shape must be (B, K, T, H, W), got {shape!r}")
    if any(s < 0 for s in shape):
        raise ValueError(f"negative size in shape {shape}")
    if not 1 <= shape[1] <= MAX_BITS:
        raise ValueError(f"K (bits per token) must be in 1..{MAX_BITS}, got {shape[1]}")
    return shape  # type: ignore[return-value]


def _check_latents(z: torch.Tensor) -> None:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(z).__name__}")
    if z.dim() != 5:
        raise ValueError(f"latents must be B×K×T×H×W (5-D), got shape {tuple(z.shape)}")
    if z.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"latents must be float32/float16/bfloat16(/float64), got {z.dtype}")
    _check_shape(z.shape)


def _check_packed(packed: torch.Tensor, shape) -> Tuple[int, int, int, int, int]:
    if not isinstance(packed, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(packed).__name__}")
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(f"packed payload must be a 1-D uint8 tensor, got {packed.dtype} "
                         f"with shape {tuple(packed.shape)}")
    shape = _check_shape(shape)
    need = packed_size(shape)
    if packed.numel() != need:
        raise ValueError(f"packed payload has {packed.numel()} bytes, shape {shape} needs {need}")
    return shape


def _check_out_dtype(dtype: torch.dtype) -> None:
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(f"codes dtype must be float32/float16/bfloat16(/float64), got {dtype}")


# --------------------------------------------------------------------------- references

def pack_bits_reference(z: torch.Tensor) -> torch.Tensor:
    """Reference packer (vectorized PyTorch). ``z``: ``B×K×T×H×W`` float, any strides →
    1-D ``uint8`` payload on ``z.device`` (layout in the module docstring)."""
    bits = (z > 0).permute(0, 2, 3, 4, 1).reshape(-1)  # token-major, channel fastest
    pad = (-bits.numel()) % 8
    if pad:
        bits = torch.cat([bits, bits.new_zeros(pad)])
    shifts = torch.arange(8, device=z.device, dtype=torch.uint8)
    return (bits.view(-1, 8).to(torch.uint8) << shifts).sum(1, dtype=torch.uint8)


def unpack_bits_reference(packed: torch.Tensor, shape: Tuple[int, int, int, int, int],
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Reference unpacker (vectorized PyTorch). 1-D ``uint8`` payload → contiguous codes
    ``B×K×T×H×W`` in {-1, +1} of ``dtype`` on ``packed.device``. Padding bits are ignored."""
    b, k, t, h, w = shape
    n = b * k * t * h * w
    shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
    bits = ((packed.unsqueeze(1) >> shifts) & 1).reshape(-1)[:n]
    bits = bits.view(b, t, h, w, k).permute(0, 4, 1, 2, 3)
    one = torch.ones((), dtype=dtype, device=packed.device)
    return torch.where(bits.bool(), one, -one).contiguous()


def bit_weights(k: int, device=None) -> torch.Tensor:
    """The token bit order, written once (spec §5, ``bit_order`` 0): channel / bit k of a token
    weighs 2^k in its index, least significant first → int64 tensor ``[1, 2, 4, …, 2^(k-1)]``
    (``k`` <= 63). Every index ↔ bits conversion of the package (quantizer, token files, the
    reference below) multiplies by it; the Triton kernels shift by the same k in registers."""
    return 2 ** torch.arange(k, device=device, dtype=torch.int64)


def token_indices_reference(z: torch.Tensor) -> torch.Tensor:
    """Reference token indices (vectorized PyTorch). ``z``: ``B×K×T×H×W`` float →
    int32 ``B×T×H×W``, ``Σ_k 2^k·[z_k > 0]`` (for K = 32 the same 32 bits, two's complement)."""
    k = z.shape[1]
    weights = bit_weights(k, z.device).view(1, k, 1, 1, 1)
    idx = ((z > 0).to(torch.int64) * weights).sum(1)
    idx = torch.where(idx >= 2 ** 31, idx - 2 ** 32, idx)  # reinterpret bit 31 as the sign
    return idx.to(torch.int32)


# --------------------------------------------------------------------------- Triton kernels

if _HAS_TRITON:

    def _pack_kernel(z_ptr, out_ptr, n_bits, n_bytes, T, H, W,
                     s_b, s_k, s_t, s_h, s_w,
                     K: tl.constexpr, CARRIES: tl.constexpr, IDX64: tl.constexpr,
                     BF16: tl.constexpr, BLOCK: tl.constexpr):
        """Each program writes BLOCK payload bytes; each lane owns whole bytes (1-D tile), so
        the per-byte index math is done once per byte and the 8 bits are OR-ed in registers."""
        pid = tl.program_id(0)
        if IDX64:
            pid = pid.to(tl.int64)
        j = pid * BLOCK + tl.arange(0, BLOCK)  # byte index
        p0 = j * 8  # first bit of the byte
        t0 = p0 // K  # its token (K constexpr: multiply-shift)
        r0 = (p0 - t0 * K).to(tl.int32)  # its channel
        # token -> (b, t, y, x), once per byte
        x0 = t0 % W
        q = t0 // W
        y0 = q % H
        q = q // H
        f0 = q % T
        b0 = q // T
        base0 = b0 * s_b + f0 * s_t + y0 * s_h + x0 * s_w
        if CARRIES == 1:  # K >= 7: a byte spans at most tokens t0 and t0 + 1
            cy = (x0 + 1 >= W).to(x0.dtype)
            x1 = x0 + 1 - cy * W
            y1 = y0 + cy
            ct = (y1 >= H).to(x0.dtype)
            y1 -= ct * H
            f1 = f0 + ct
            cb = (f1 >= T).to(x0.dtype)
            f1 -= cb * T
            b1 = b0 + cb
            base1 = b1 * s_b + f1 * s_t + y1 * s_h + x1 * s_w
        acc = tl.zeros((BLOCK,), dtype=tl.int32)
        for bit in tl.static_range(8):
            rb = r0 + bit
            if CARRIES == 1:
                nxt = rb >= K
                off = tl.where(nxt, base1, base0) + tl.where(nxt, rb - K, rb) * s_k
            else:  # K < 7: up to CARRIES token steps, wrapped one carry pass at a time
                c = rb // K
                x = x0 + c
                y = y0 + c * 0
                f = f0 + c * 0
                b = b0 + c * 0
                for _ in tl.static_range(CARRIES):
                    cy = (x >= W).to(x.dtype)
                    x -= cy * W
                    y += cy
                    ct = (y >= H).to(x.dtype)
                    y -= ct * H
                    f += ct
                    cb = (f >= T).to(x.dtype)
                    f -= cb * T
                    b += cb
                off = b * s_b + (rb - c * K) * s_k + f * s_t + y * s_h + x * s_w
            v = tl.load(z_ptr + off, mask=p0 + bit < n_bits, other=0.0)
            if BF16:  # compare in fp32 (exact): the interpreter holds bf16 as raw uint16 bits
                v = v.to(tl.float32)
            acc = acc | ((v > 0).to(tl.int32) << bit)
        tl.store(out_ptr + j, acc.to(tl.uint8), mask=j < n_bytes)

    def _unpack_kernel(in_ptr, out_ptr, S, n_sblocks,
                       K: tl.constexpr, IDX64: tl.constexpr, BLOCK: tl.constexpr):
        """Each program writes BLOCK positions × K channels of one batch item (output
        contiguous B×K×S with S = T·H·W)."""
        pid = tl.program_id(0)
        if IDX64:
            pid = pid.to(tl.int64)
        b = pid // n_sblocks
        s = (pid - b * n_sblocks) * BLOCK + tl.arange(0, BLOCK)
        mask = s < S
        token = b * S + s
        for k in tl.static_range(K):
            i = token * K + k
            byte = tl.load(in_ptr + (i >> 3), mask=mask, other=0).to(tl.int32)
            bit = (byte >> (i & 7).to(tl.int32)) & 1
            val = (bit * 2 - 1).to(tl.float32).to(out_ptr.dtype.element_ty)
            tl.store(out_ptr + ((b * K + k) * S + s), val, mask=mask)

    def _index_kernel(z_ptr, out_ptr, n_tokens, T, H, W,
                      s_b, s_k, s_t, s_h, s_w,
                      K: tl.constexpr, IDX64: tl.constexpr, BF16: tl.constexpr,
                      BLOCK: tl.constexpr):
        """Each program writes BLOCK int32 token indices (output contiguous B×T×H×W)."""
        pid = tl.program_id(0)
        if IDX64:
            pid = pid.to(tl.int64)
        tok = pid * BLOCK + tl.arange(0, BLOCK)
        mask = tok < n_tokens
        x = tok % W
        q = tok // W
        y = q % H
        q = q // H
        f = q % T
        b = q // T
        base = b * s_b + f * s_t + y * s_h + x * s_w
        acc = tl.zeros((BLOCK,), dtype=tl.int32)
        for k in tl.static_range(K):
            v = tl.load(z_ptr + (base + k * s_k), mask=mask, other=0.0)
            if BF16:
                v = v.to(tl.float32)
            acc = acc | ((v > 0).to(tl.int32) << k)  # k = 31 lands in the sign bit
        tl.store(out_ptr + tok, acc, mask=mask)


@functools.lru_cache(maxsize=None)
def _jitted(name: str, interpret: bool) -> Callable:
    """``triton.jit`` of kernel ``name``, built for the current ``TRITON_INTERPRET`` setting
    (Triton decides interpreter vs compiler when the decorator runs, so build lazily)."""
    del interpret  # part of the cache key only
    return triton.jit(globals()[name])


def _kernel(name: str) -> Callable:
    return _jitted(name, _interpret_mode())


def _max_offset(t: torch.Tensor) -> int:
    return sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()) if s > 0)


def _pack_triton(z: torch.Tensor) -> torch.Tensor:
    bsz, k, t, h, w = z.shape
    n_bits = z.numel()
    n_bytes = (n_bits + 7) // 8
    out = torch.empty(n_bytes, dtype=torch.uint8, device=z.device)
    if n_bytes == 0:
        return out
    idx64 = max(n_bits + 8 * _PACK_BLOCK, _max_offset(z) + 1) > _INT32_LIMIT
    carries = (k + 6) // k  # most tokens a byte can step into past its first one (1 for K >= 7)
    grid = (triton.cdiv(n_bytes, _PACK_BLOCK),)
    _kernel("_pack_kernel")[grid](
        z, out, n_bits, n_bytes, t, h, w, *z.stride(),
        K=k, CARRIES=carries, IDX64=idx64, BF16=z.dtype == torch.bfloat16,
        BLOCK=_PACK_BLOCK, num_warps=_NUM_WARPS)
    return out


def _unpack_triton(packed: torch.Tensor, shape, dtype: torch.dtype) -> torch.Tensor:
    bsz, k, t, h, w = shape
    out = torch.empty(shape, dtype=dtype, device=packed.device)
    s = t * h * w
    if out.numel() == 0:
        return out
    n_sblocks = triton.cdiv(s, _UNPACK_BLOCK)
    idx64 = out.numel() + k * _UNPACK_BLOCK > _INT32_LIMIT
    grid = (bsz * n_sblocks,)
    _kernel("_unpack_kernel")[grid](packed, out, s, n_sblocks,
                                    K=k, IDX64=idx64, BLOCK=_UNPACK_BLOCK, num_warps=_NUM_WARPS)
    return out


def _index_triton(z: torch.Tensor) -> torch.Tensor:
    bsz, k, t, h, w = z.shape
    out = torch.empty((bsz, t, h, w), dtype=torch.int32, device=z.device)
    n_tokens = out.numel()
    if n_tokens == 0:
        return out
    idx64 = max(n_tokens + _INDEX_BLOCK, _max_offset(z) + 1) > _INT32_LIMIT
    grid = (triton.cdiv(n_tokens, _INDEX_BLOCK),)
    _kernel("_index_kernel")[grid](z, out, n_tokens, t, h, w, *z.stride(),
                                   K=k, IDX64=idx64, BF16=z.dtype == torch.bfloat16,
                                   BLOCK=_INDEX_BLOCK, num_warps=_NUM_WARPS)
    return out


# --------------------------------------------------------------------------- public API

def pack_bits(z: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """Sign-quantize and bit-pack latents in one pass.

    ``z``: ``B×K×T×H×W`` float32/float16/bfloat16 (float64 accepted), any strides (e.g. a
    permuted or sliced view), ``1 <= K <= 32``. Returns the raw payload: a 1-D ``uint8``
    tensor of ``ceil(B·K·T·H·W / 8)`` bytes on ``z.device`` (layout in the module docstring;
    ``z > 0`` → bit 1, ``z <= 0`` and NaN → bit 0). ``backend``: see :func:`select_backend`.
    """
    _check_latents(z)
    if select_backend(z, backend) == "triton":
        return _pack_triton(z)
    return pack_bits_reference(z)


def unpack_bits(packed: torch.Tensor, shape: Tuple[int, int, int, int, int],
                dtype: torch.dtype = torch.float32, backend: str | None = None) -> torch.Tensor:
    """Unpack a raw payload into codes for the decoder.

    ``packed``: 1-D ``uint8`` of exactly ``ceil(B·K·T·H·W / 8)`` bytes (else
    :class:`ValueError`); ``shape``: ``(B, K, T, H, W)`` with ``1 <= K <= 32``. Returns
    contiguous codes ``B×K×T×H×W`` in {-1, +1} of ``dtype`` on ``packed.device`` (bit 1 → +1,
    bit 0 → -1; the zero padding of the last byte is not checked).
    """
    shape = _check_packed(packed, shape)
    _check_out_dtype(dtype)
    if select_backend(packed, backend) == "triton":
        return _unpack_triton(packed, shape, dtype)
    return unpack_bits_reference(packed, shape, dtype)


def token_indices(z: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """Token indices for language-model use.

    ``z``: ``B×K×T×H×W`` float (as :func:`pack_bits`), any strides, ``1 <= K <= 32`` →
    contiguous int32 ``B×T×H×W`` holding ``Σ_k 2^k·[z_k > 0]`` (channel 0 least significant,
    as :func:`neuralcodec.quantizer.codes_to_indices`). For ``K == 32`` the int32 holds the
    same 32 bits in two's complement (bit 31 is the sign bit): ``idx & 0xFFFFFFFF`` in int64
    recovers the unsigned index.
    """
    _check_latents(z)
    if select_backend(z, backend) == "triton":
        return _index_triton(z)
    return token_indices_reference(z)
