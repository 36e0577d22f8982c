"""Context-adaptive entropy coding of LFQ bits (the ``context`` payload mode).

One call codes one segment's bits, ``K×t×h×w`` uint8 in {0, 1} (bit k of the token at latent
frame t, row y, column x; 1 means code +1), with a binary range coder (``constriction``) whose
probabilities come from adaptive integer counts in discrete contexts. Everything that feeds the
coder is integer arithmetic, so the bytes are the same on every machine; the normative text is
the "context" payload section of ``bitstream_spec.md``.

Coding order and contexts (a *step* = one call of the range coder on a whole array)::

    for t in 0..t-1:                          # latent frames
        for phase in (0, 1):                  # checkerboard: (y + x) even, then odd
            t = 0:  bits of all phase tokens       (token-major: position, then k)
            t >= 1: one flag per phase token (1 = token differs from frame t-1);
                    unchanged tokens are copied, then the bits of the changed tokens

    intra0 (t = 0, phase 0): ctx = k
    intra1 (t = 0, phase 1): ctx = (k, ones - zeros among the coded 4-neighbours, plane k)
    flag0:  ctx = (Hq, how many of the 4 neighbours have Hq > 0)
    flag1:  ctx = (Hq, how many coded (phase-0) 4-neighbours changed)
    inter0: ctx = (k, P, A, Hq)
    inter1: ctx = (k, P, A, S)
      P  = the same bit in frame t-1
      A  = how many of its 4 edge-replicated neighbours in frame t-1 equal P      (0..4)
      Hq = bits of this token changed from t-2 to t-1, quantized 0 | 1 | 2-3 | >=4 (0 at t = 1)
      S  = how many coded 4-neighbours in frame t changed bit k, capped at 2

Counts start at (1, 1) in half units (a KT prior), grow by 2 per coded bit and are updated
after every step from that step's symbols, identically in encoder and decoder; in the warm-up
frames (t <= 1) each step is cut into doubling chunks of 16, 16, 32, 64, … tokens with an
update after each. A context's probability of a 1 is the 16-bit fixed-point value
``(n1 << 16) // (n0 + n1)`` clipped to [``P_MIN``, 65536 - ``P_MIN``], handed to constriction's
``Bernoulli(perfect=False)`` as the exact float64 ``p16 / 65536``. After the data, 16 check
bits (``SENTINEL``) at probability 1/2 catch nearly all corruptions.

Each call is independent (a segment restarts all adaptation). Decode is vectorized per step
(four steps per latent frame after the warm-up); there is no Python loop per bit.
"""
from __future__ import annotations

from typing import Iterator, Tuple

import constriction
import numpy as np

from .configs import MAX_BITS
from .errors import PayloadError

#: Fixed-point precision of the probabilities handed to the range coder.
P_BITS = 16
#: Smallest probability of either symbol, in units of 2**-P_BITS.
P_MIN = 16
#: Largest number of bits per token.
MAX_K = MAX_BITS
#: Cap on the bits of one segment (K·t·h·w): refuses absurd shapes before allocating.
MAX_SEGMENT_BITS = 1 << 30
#: Cap on the bits of one latent frame (K·h·w).
MAX_FRAME_BITS = 1 << 27
#: Bits appended after the data at probability 1/2 and checked by the decoder (corruption check).
SENTINEL = np.array([(0xA5C3 >> i) & 1 for i in range(16)], dtype=np.int32)

#: The coder's symbol model: a probability of a 1 per symbol (exact multiples of 2**-16 here).
BERNOULLI = constriction.stream.model.Bernoulli(perfect=False)
_MODEL = BERNOULLI
_HALF = np.full(len(SENTINEL), 0.5)

#: Motion-history quantizer: bits of a token changed from t-2 to t-1 → 0 | 1 | 2-3 | >=4.
_HIST_EDGES = np.array([1, 2, 4])
_N_HQ = 4
# context-set sizes (the bit-plane sets are multiplied by K)
_SIZES = {
    "intra0": 1,                     # k
    "intra1": 9,                     # k, ones - zeros + 4
    "flag0": _N_HQ * 5,              # own history, changed-history neighbours (0..4)
    "flag1": _N_HQ * 5,              # own history, changed coded neighbours (0..4)
    "inter0": 2 * 5 * _N_HQ,         # k, P, A, own history
    "inter1": 2 * 5 * 3,             # k, P, A, S
}
_PER_K = {"intra0", "intra1", "inter0", "inter1"}
#: First chunk (tokens) of the doubling chunk schedule of the warm-up frames.
WARMUP_CHUNK = 16


def _validate_shape(shape) -> Tuple[int, int, int, int]:
    try:
        k, t, h, w = (int(s) for s in shape)
    except (TypeError, ValueError) as e:
        raise PayloadError(f"bad bit-array shape {shape!r}") from e
    if not 1 <= k <= MAX_K or min(t, h, w) < 1:
        raise PayloadError(f"bad bit-array shape {shape!r}: need K in 1..{MAX_K}, t, h, w >= 1")
    if k * h * w > MAX_FRAME_BITS or k * t * h * w > MAX_SEGMENT_BITS:
        raise PayloadError(f"bit-array shape {shape!r} exceeds the segment cap")
    return k, t, h, w


def _probs(counts: np.ndarray) -> np.ndarray:
    """counts ``N×2`` int64 (n0, n1) → float64 probabilities of a 1, exact multiples of 2**-16."""
    p16 = (counts[:, 1] << P_BITS) // (counts[:, 0] + counts[:, 1])
    np.clip(p16, P_MIN, (1 << P_BITS) - P_MIN, out=p16)
    return p16.astype(np.float64) * (1.0 / (1 << P_BITS))


def probabilities(counts: np.ndarray) -> np.ndarray:
    """Spec §7 "Probabilities": counts ``N×2`` (n0, n1) in half units → the probability of a 1 of
    each context, p16 / 2**16 with p16 = (n1·2**16) // (n0 + n1) clipped to [16, 65520]."""
    return _probs(counts)


def chunk_ranges(n: int) -> Iterator[Tuple[int, int]]:
    """Spec §7's warm-up chunks of a step of ``n`` symbols (or tokens): [0, 16), [16, 32),
    [32, 64), …, each ending at min(n, 2·(end of the previous one)); counts are updated after each."""
    lo = 0
    while lo < n:
        hi = min(n, max(WARMUP_CHUNK, 2 * lo))
        yield lo, hi
        lo = hi


def _update(counts: np.ndarray, ctx: np.ndarray, sym: np.ndarray) -> None:
    """Add 2 per coded symbol to its context's count (in place)."""
    counts += 2 * np.bincount(ctx * 2 + sym, minlength=counts.size).reshape(counts.shape)


def _nbr4_sum(a: np.ndarray) -> np.ndarray:
    """Sum of the 4 neighbours over the last two axes, zero outside (``…×h×w`` int)."""
    out = np.zeros_like(a)
    out[..., 1:, :] += a[..., :-1, :]
    out[..., :-1, :] += a[..., 1:, :]
    out[..., :, 1:] += a[..., :, :-1]
    out[..., :, :-1] += a[..., :, 1:]
    return out


def _nbr4_equal(a: np.ndarray) -> np.ndarray:
    """How many of the 4 edge-replicated neighbours equal the centre (``…×h×w`` → 0..4)."""
    p = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    h, w = a.shape[-2:]
    return ((p[..., 0:h, 1:w + 1] == a).astype(np.int32) + (p[..., 2:h + 2, 1:w + 1] == a)
            + (p[..., 1:h + 1, 0:w] == a) + (p[..., 1:h + 1, 2:w + 2] == a))


class _Model:
    """Context model shared by encoder and decoder. ``code(probs, sym)`` is the caller's
    coder: the encoder passes the known symbols and gets them back, the decoder passes None
    and gets the decoded symbols (int32)."""

    def __init__(self, k: int, h: int, w: int, code, encoding: bool) -> None:
        self.k, self.h, self.w = k, h, w
        self.code, self.encoding = code, encoding
        yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        par = ((yy + xx) & 1).ravel()
        self.pos = (np.flatnonzero(par == 0), np.flatnonzero(par == 1))
        self.valid1 = _nbr4_sum(np.ones((h, w), np.int32)).ravel()[self.pos[1]]
        self.kk = np.arange(k, dtype=np.int64)[:, None]
        self.counts = {name: np.ones((n * (k if name in _PER_K else 1), 2), np.int64)
                       for name, n in _SIZES.items()}

    # ---- one step: contexts → probabilities → coded symbols → count update ----------------
    def _chunks(self, n: int):
        """Token ranges of one step: the whole step, or in the warm-up frames (t <= 1) doubling
        chunks [0, 16), [16, 32), [32, 64), … so that fresh counts adapt within the step."""
        if not self.warmup:
            yield 0, n
            return
        yield from chunk_ranges(n)

    def _bits(self, kind: str, ctx: np.ndarray, positions: np.ndarray, cur: np.ndarray) -> None:
        """Code the bits ``cur[:, positions]`` under contexts ``ctx`` (K×n); symbol order is
        token-major (position, then k)."""
        counts = self.counts[kind]
        ctx = np.ascontiguousarray(np.asarray(ctx, dtype=np.int64).T)      # n×K
        for lo, hi in self._chunks(positions.size):
            c = ctx[lo:hi].ravel()
            pos = positions[lo:hi]
            probs = _probs(counts)[c]
            if self.encoding:
                sym = self.code(probs, cur[:, pos].T.astype(np.int32).ravel())
            else:
                sym = self.code(probs, None)
                cur[:, pos] = sym.reshape(pos.size, self.k).T
            _update(counts, c, sym)

    def _flags(self, kind: str, ctx: np.ndarray, positions: np.ndarray, cur: np.ndarray,
               prev: np.ndarray) -> np.ndarray:
        """Code one flag per token at ``positions`` (1 = differs from frame t-1); the decoder
        copies the unchanged tokens from ``prev``. Returns the flags (int32)."""
        counts = self.counts[kind]
        ctx = np.asarray(ctx, dtype=np.int64)
        out = np.empty(positions.size, np.int32)
        for lo, hi in self._chunks(positions.size):
            c = ctx[lo:hi]
            pos = positions[lo:hi]
            probs = _probs(counts)[c]
            if self.encoding:
                flag = (cur[:, pos] != prev[:, pos]).any(axis=0).astype(np.int32)
                self.code(probs, flag)
            else:
                flag = self.code(probs, None)
                same = pos[flag == 0]
                cur[:, same] = prev[:, same]
            _update(counts, c, flag)
            out[lo:hi] = flag
        return out

    # ---- one latent frame --------------------------------------------------------------------
    def frame(self, t: int, cur: np.ndarray, prev: np.ndarray | None, hist: np.ndarray | None) -> None:
        """Code one latent frame ``cur`` (``K×(h·w)`` uint8, read by the encoder, filled by the
        decoder). ``prev``: frame t-1 or None (intra); ``hist``: per token, the number of
        bits changed from t-2 to t-1 (``h·w``), None at t <= 1."""
        k, h, w, kk = self.k, self.h, self.w, self.kk
        p0, p1 = self.pos
        self.warmup = t <= 1
        if prev is None:
            self._bits("intra0", np.broadcast_to(kk, (k, p0.size)), p0, cur)
            ones = np.zeros((k, h * w), np.int32)
            ones[:, p0] = cur[:, p0]
            s = _nbr4_sum(ones.reshape(k, h, w)).reshape(k, h * w)[:, p1]
            self._bits("intra1", kk * 9 + (2 * s - self.valid1 + 4), p1, cur)
            return
        a = _nbr4_equal(prev.reshape(k, h, w)).reshape(k, h * w)
        base = (kk * 2 + prev) * 5 + a                             # K×(h·w), int64
        if hist is None:
            hq = np.zeros(h * w, np.int64)
        else:
            hq = np.searchsorted(_HIST_EDGES, hist, side="right")
        hn = _nbr4_sum((hq > 0).astype(np.int32).reshape(h, w)).ravel()
        flag = self._flags("flag0", hq[p0] * 5 + hn[p0], p0, cur, prev)
        sel0 = p0[flag == 1]
        if sel0.size:
            self._bits("inter0", base[:, sel0] * _N_HQ + hq[sel0], sel0, cur)
        ch = np.zeros((k, h * w), np.int32)
        ch[:, p0] = cur[:, p0] != prev[:, p0]
        nch = _nbr4_sum(ch.any(axis=0).astype(np.int32).reshape(h, w)).ravel()
        flag = self._flags("flag1", hq[p1] * 5 + nch[p1], p1, cur, prev)
        sel1 = p1[flag == 1]
        if sel1.size:
            s = np.minimum(_nbr4_sum(ch.reshape(k, h, w)).reshape(k, h * w)[:, sel1], 2)
            self._bits("inter1", base[:, sel1] * 3 + s, sel1, cur)


def encode_bits(bits: np.ndarray) -> bytes:
    """Entropy-code one segment's LFQ bits.

    ``bits``: uint8 (or bool/int) array ``K×t×h×w`` with values in {0, 1}; K in 1..32.
    Returns the ``context`` payload: the range coder's 32-bit words, little-endian.
    Raises ``ValueError`` for a bad array (a programming error of the caller, not a stream error).
    """
    bits = np.asarray(bits)
    if bits.ndim != 4:
        raise ValueError(f"bits must be K×t×h×w, got shape {bits.shape}")
    try:
        k, t, h, w = _validate_shape(bits.shape)
    except PayloadError as e:
        raise ValueError(str(e)) from None
    if bits.min() < 0 or bits.max() > 1:
        raise ValueError("bits must be 0 or 1")
    frames = np.ascontiguousarray(bits.astype(np.uint8).reshape(k, t, h * w).transpose(1, 0, 2))
    enc = constriction.stream.queue.RangeEncoder()

    def code(probs, sym):
        enc.encode(sym, _MODEL, probs)
        return sym

    _run(frames, _Model(k, h, w, code, encoding=True))
    enc.encode(SENTINEL, _MODEL, _HALF)
    return enc.get_compressed().astype("<u4").tobytes()


#: Symbols per payload word a valid stream can never exceed on the least number of symbols a
#: segment codes (each symbol costs at least log2(2**24 / cut(16)) ≈ 0.000352 bits, i.e. at
#: most ~90,900 symbols per 32-bit word; spec §7 "Payload length").
SYMBOLS_PER_WORD_BOUND = 1 << 17


def min_payload_bytes(shape) -> int:
    """Smallest valid context payload for ``shape`` (spec §7): 4·floor(n_min / 2**17) with
    n_min = K·h·w + (t − 1)·h·w + 16 symbols (intra frame, one flag per later token, check)."""
    k, t, h, w = _validate_shape(shape)
    n_min = k * h * w + (t - 1) * h * w + len(SENTINEL)
    return 4 * (n_min // SYMBOLS_PER_WORD_BOUND)


def _check_payload(data, shape) -> Tuple[int, int, int, int]:
    k, t, h, w = _validate_shape(shape)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PayloadError("payload must be bytes")
    if len(data) == 0 or len(data) % 4:
        raise PayloadError(f"context payload length {len(data)} is not a positive multiple of 4")
    if len(data) < min_payload_bytes(shape):
        raise PayloadError(f"context payload of {len(data)} bytes is too short for {k}×{t}×{h}×{w}"
                           f" bits (at least {min_payload_bytes(shape)})")
    return k, t, h, w


def iter_decode_bits(data: bytes, shape) -> Iterator[np.ndarray]:
    """Like :func:`decode_bits`, one latent frame at a time: yields ``K×h×w`` uint8 arrays
    (memory of two frames, whatever ``t``). The end check runs after the last frame, so a
    caller that must not use bits of a corrupted payload consumes the generator once to
    validate it (:class:`PayloadError` at the end) before using the frames of a second pass."""
    k, t, h, w = _check_payload(data, shape)
    words = np.frombuffer(bytes(data), dtype="<u4").astype(np.uint32)
    try:
        dec = constriction.stream.queue.RangeDecoder(words)
    except Exception as e:
        raise PayloadError(f"context payload does not decode: {e}") from e

    def code(probs, sym):
        return np.asarray(dec.decode(_MODEL, probs), dtype=np.int32)

    model = _Model(k, h, w, code, encoding=False)
    prev = hist = None
    for ti in range(t):
        cur = np.zeros((k, h * w), np.uint8)
        try:
            model.frame(ti, cur, prev, hist)
        except Exception as e:
            raise PayloadError(f"context payload does not decode: {e}") from e
        if prev is not None:
            hist = (cur != prev).sum(axis=0)
        yield cur.reshape(k, h, w)
        prev = cur
    try:
        tail = np.asarray(dec.decode(_MODEL, _HALF), dtype=np.int32)
    except Exception as e:
        raise PayloadError(f"context payload does not decode: {e}") from e
    if not np.array_equal(tail, SENTINEL):
        raise PayloadError("context payload corrupted (end check failed)")


def decode_bits(data: bytes, shape) -> np.ndarray:
    """Inverse of :func:`encode_bits`: payload bytes and shape ``(K, t, h, w)`` → uint8 array
    ``K×t×h×w`` in {0, 1}. Raises :class:`PayloadError` for a bad shape or a payload that is
    truncated, corrupted or inconsistent."""
    k, t, h, w = _check_payload(data, shape)
    words = np.frombuffer(bytes(data), dtype="<u4").astype(np.uint32)
    frames = np.zeros((t, k, h * w), np.uint8)
    try:
        dec = constriction.stream.queue.RangeDecoder(words)

        def code(probs, sym):
            return np.asarray(dec.decode(_MODEL, probs), dtype=np.int32)

        _run(frames, _Model(k, h, w, code, encoding=False))
        tail = np.asarray(dec.decode(_MODEL, _HALF), dtype=np.int32)
    except Exception as e:  # constriction reports invalid data with its own exception types
        raise PayloadError(f"context payload does not decode: {e}") from e
    if not np.array_equal(tail, SENTINEL):
        raise PayloadError("context payload corrupted (end check failed)")
    return np.ascontiguousarray(frames.transpose(1, 0, 2)).reshape(k, t, h, w)


def _run(frames: np.ndarray, model: _Model) -> None:
    """Drive the context model over ``frames`` (``t×K×(h·w)`` uint8, read or filled)."""
    hist = None
    for ti in range(frames.shape[0]):
        prev = frames[ti - 1] if ti else None
        model.frame(ti, frames[ti], prev, hist)
        if prev is not None:
            hist = (frames[ti] != prev).sum(axis=0)
