"""Decoder adaptation carried in the stream: the ADAPT record (spec §8c, versions 1.3 and 1.4).

An encoder may fit some of the decoder's tensors to the video it codes (tokens unchanged) and
send the change: per tensor, integers v and a step 2^e, so that the decoder of the segments the
record covers uses ``W' = W + v·2^e`` (float32) instead of the weights file's W. The integers are
coded with the binary range coder of spec §7 (integer probabilities, the same bytes on every
machine). This module is the record's payload (:class:`Adaptation`: parse, check, write) and
applying it to a model (:func:`adapted_model`); :mod:`neuralcodec.finetune` is the encoder side
that finds an update.

Payload (little-endian; spec §8c is normative)::

    u8 method (0: additive, 2: additive to a decoder variant), u8 reserved 0, u16 tensors n,
    16 B model_sha256, u32 first_segment, u32 segments,
    [method 2: 16 B decoder_sha256, the variant's weights file]
    n × (u16 tensor index, i8 exponent e, u8 vmax, u32 count),   # index into record_names(…)
    coded integers: §7 coder words (passes per tensor, then 16 check bits)
"""
from __future__ import annotations

import copy
import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import constriction
import numpy as np
import torch

from . import container as ct
from .entropy import BERNOULLI, P_BITS, P_MIN, SENTINEL, chunk_ranges
from .errors import PayloadError, RecordError, StreamError
from .model import for_inference
from .resources import check_decoder_memory
from .configs import DECODER_AUTO
from .weights import ModelSource, decoder_variant, resolve_model

__all__ = ["METHOD_ADDITIVE", "METHOD_VARIANT", "VARIANT_SHA", "head_size", "record_names", "MAX_TENSORS", "MAX_NUMBERS", "MAX_SYMBOL_WORK", "MIN_EXP",
           "MAX_EXP", "MAX_VMAX", "CONTEXTS", "ADAPT_HEAD", "ADAPT_ENTRY", "TensorUpdate",
           "Adaptation", "tensor_names", "adaptable_names", "check_against", "adapted_model",
           "leading_records", "read_adaptations", "decodes", "SegmentDecoders", "stream_decoders", "file_weights",
           "encode_ints", "decode_ints"]

METHOD_ADDITIVE = 0  # 1.3: a change of the model's own decoder
METHOD_VARIANT = 2  # 1.4: a change of a decoder variant's file (1 stays unassigned); others skipped
MAX_TENSORS = 1024  # tensors one record may change
MAX_NUMBERS = 1 << 20  # Σ count: numbers one record may change
MAX_SYMBOL_WORK = 1 << 23  # Σ count·(vmax + 1): bounds the symbols a record can make a reader decode
MIN_EXP, MAX_EXP = -64, 0  # step Δ = 2^e
MAX_VMAX = 255  # |v| ≤ vmax ≤ 255: v·2^e is exact in float32
CONTEXTS = 16  # adaptive contexts per tensor: the zero flag (0), "|v| > l" (min(l, 15))
P_ONE_MAX = (1 << P_BITS) - P_MIN  # §7's clip of p16: [P_MIN, P_ONE_MAX]
ADAPT_HEAD = struct.Struct("<BBH16sII")  # method, reserved, tensors, model_sha256, first, segments
ADAPT_ENTRY = struct.Struct("<HbBI")  # tensor index, exponent, vmax, count
VARIANT_SHA = struct.Struct("<16s")  # method 2: decoder_sha256, after ADAPT_HEAD


def head_size(method: int) -> int:
    """Bytes of an ADAPT payload before its entries (spec §8c's H): 28, or 44 for method 2."""
    return ADAPT_HEAD.size + (VARIANT_SHA.size if method == METHOD_VARIANT else 0)


@dataclass(frozen=True)
class TensorUpdate:
    """The change of one model tensor: ``values`` · 2^``exp`` added to it (flat, in its order)."""

    index: int  # position of the tensor in tensor_names(model) (sorted names of the weights file)
    exp: int  # step exponent e, MIN_EXP..MAX_EXP: Δ = 2^e
    vmax: int  # bound on |values| (the writer's is their maximum), 0..MAX_VMAX
    values: np.ndarray  # int32, flat, one per element of the tensor, in -vmax..vmax

    def delta(self) -> torch.Tensor:
        """The change as float32 (exact: |v| ≤ 255, 2^e a power of two)."""
        return torch.from_numpy(self.values.astype(np.float32) * np.float32(2.0 ** self.exp))


@dataclass(frozen=True)
class Adaptation:
    """One ADAPT record: a change of the decoder for segments ``first_segment`` ..
    ``first_segment + segments - 1`` of a stream made with the model ``model_sha256``: of the
    model's own decoder, or (``decoder_sha256``, method 2) of one of its decoder variants."""

    model_sha256: bytes  # first 16 bytes of the weights file's SHA-256 (the header's)
    first_segment: int  # first segment it applies to
    segments: int  # how many consecutive segments
    tensors: Tuple[TensorUpdate, ...]  # by increasing tensor index
    decoder_sha256: Optional[bytes] = None  # first 16 bytes of the SHA-256 of the decoder
    #   variant's file it changes (method 2); None: the model's own decoder (method 0)

    def covers(self, i: int) -> bool:
        return self.first_segment <= i < self.first_segment + self.segments

    @property
    def numbers(self) -> int:
        return sum(t.values.size for t in self.tensors)

    def to_payload(self) -> bytes:
        """The record's payload (spec §8c) → RecordError when a field is out of range."""
        ts = self.tensors
        _check_fields(len(ts), self.first_segment, self.segments,
                      [(t.index, t.exp, t.vmax, t.values.size) for t in ts])
        for t in ts:
            if t.values.size and int(np.abs(t.values).max()) > t.vmax:
                raise RecordError(f"ADAPT tensor {t.index}: a value exceeds vmax {t.vmax}")
        method = METHOD_ADDITIVE if self.decoder_sha256 is None else METHOD_VARIANT
        head = ADAPT_HEAD.pack(method, 0, len(ts), self.model_sha256, self.first_segment,
                               self.segments)
        if self.decoder_sha256 is not None:
            head += VARIANT_SHA.pack(self.decoder_sha256)
        entries = b"".join(ADAPT_ENTRY.pack(t.index, t.exp, t.vmax, t.values.size) for t in ts)
        return head + entries + encode_ints([(t.values, t.vmax) for t in ts])

    @classmethod
    def parse(cls, payload: bytes, header: ct.Header) -> Optional["Adaptation"]:
        """An ADAPT payload checked against the stream's ``header`` → the adaptation, or None for
        a method this reader does not know (skipped, spec §8c) → RecordError / PayloadError."""
        if len(payload) < 1:
            raise RecordError("empty ADAPT payload")
        if payload[0] not in (METHOD_ADDITIVE, METHOD_VARIANT):
            return None
        head = head_size(payload[0])
        if len(payload) < head:
            raise RecordError(f"ADAPT payload of {len(payload)} bytes is too short")
        _, res, n, sha, first, segs = ADAPT_HEAD.unpack_from(payload)
        variant = VARIANT_SHA.unpack_from(payload, ADAPT_HEAD.size)[0] if head > ADAPT_HEAD.size else None
        if res:
            raise RecordError("ADAPT reserved byte is not 0")
        if not 1 <= n <= MAX_TENSORS:
            raise RecordError(f"ADAPT record changes {n} tensors, outside 1..{MAX_TENSORS}")
        data_at = head + n * ADAPT_ENTRY.size
        if len(payload) < data_at:
            raise RecordError(f"ADAPT payload of {len(payload)} bytes cannot hold {n} tensor entries")
        if sha != header.model_sha256:
            raise RecordError(f"ADAPT record adapts model {sha.hex()}…, the stream's is "
                              f"{header.model_sha256.hex()}…")
        if first >= header.segment_count or not 1 <= segs <= header.segment_count - first:
            raise RecordError(f"ADAPT record covers segments {first}+{segs}, the stream has "
                              f"{header.segment_count}")
        entries = [ADAPT_ENTRY.unpack_from(payload, head + j * ADAPT_ENTRY.size) for j in range(n)]
        _check_fields(n, first, segs, entries)
        ints = decode_ints(payload[data_at:], [(count, vmax) for _, _, vmax, count in entries])
        return cls(sha, first, segs, tuple(TensorUpdate(i, e, vm, v)
                                           for (i, e, vm, _), v in zip(entries, ints)), variant)


def _check_fields(n: int, first: int, segments: int, entries) -> None:
    """The rules of spec §8c that need no model: counts, order, ranges and the caps."""
    if not 1 <= n <= MAX_TENSORS or len(entries) != n:
        raise RecordError(f"ADAPT record changes {n} tensors, outside 1..{MAX_TENSORS}")
    if not 0 <= first < ct.MAX_SEGMENTS or not 1 <= segments <= ct.MAX_SEGMENTS:
        raise RecordError(f"ADAPT segment range {first}+{segments} out of range")
    prev, numbers, work = -1, 0, 0
    for index, exp, vmax, count in entries:
        if not prev < index <= 0xFFFF:
            raise RecordError(f"ADAPT tensor indices not strictly increasing at {index}")
        if not MIN_EXP <= exp <= MAX_EXP:
            raise RecordError(f"ADAPT tensor {index}: exponent {exp} outside {MIN_EXP}..{MAX_EXP}")
        if not 0 <= vmax <= MAX_VMAX:
            raise RecordError(f"ADAPT tensor {index}: vmax {vmax} outside 0..{MAX_VMAX}")
        if count < 1:
            raise RecordError(f"ADAPT tensor {index}: count 0")
        prev = index
        numbers += count
        work += count * (vmax + 1)
    if numbers > MAX_NUMBERS:
        raise RecordError(f"ADAPT record changes {numbers} numbers, over the cap {MAX_NUMBERS}")
    if work > MAX_SYMBOL_WORK:
        raise RecordError(f"ADAPT record's Σ count·(vmax + 1) = {work} is over the cap "
                          f"{MAX_SYMBOL_WORK}")


# ---- the integers' code (spec §8c, "Coded integers") ------------------------------------------
def _p_one(c: List[int]) -> float:
    """§7's probability of a 1 from a context's counts [n0, n1]: p16 / 2^16 with
    p16 = (n1·2^16) // (n0 + n1) clipped to [P_MIN, P_ONE_MAX] (as ``entropy.probabilities``)."""
    return min(P_ONE_MAX, max(P_MIN, (c[1] << P_BITS) // (c[0] + c[1]))) * (1.0 / (1 << P_BITS))


def _code_pass(code, counts: List[List[int]], ctx: int, syms: Optional[np.ndarray], n: int) -> np.ndarray:
    """One pass of n symbols under context ``ctx`` of ``counts`` ([n0, n1] per context), in §7's
    warm-up chunks (counts updated after each chunk) → the symbols (given, when encoding;
    decoded otherwise). Plain integers for the counts and no per-pass arrays beyond the
    chunks': a record may code 2^18 passes of one symbol (1024 tensors at vmax 255), where the
    per-pass overhead is the whole cost."""
    c = counts[ctx]
    parts = []
    for lo, hi in chunk_ranges(n):
        s = code(np.full(hi - lo, _p_one(c)), None if syms is None else syms[lo:hi])
        ones = int(np.count_nonzero(s))
        c[1] += 2 * ones
        c[0] += 2 * (hi - lo - ones)
        parts.append(s)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def _run_tensor(code, n: int, vmax: int, v: Optional[np.ndarray]) -> np.ndarray:
    """Code (``v`` given) or decode (``v`` None) one tensor's n integers → the integers."""
    if vmax == 0:
        return np.zeros(n, np.int32)
    counts = [[1, 1] for _ in range(CONTEXTS)]
    a = None if v is None else np.abs(v).astype(np.int32)
    nz = _code_pass(code, counts, 0, None if a is None else (a > 0).astype(np.int32), n)
    nzi = np.flatnonzero(nz)
    neg = code(np.full(nzi.size, 0.5), None if v is None else (v[nzi] < 0).astype(np.int32)) \
        if nzi.size else np.zeros(0, np.int32)
    level = nz.copy()  # min(|v|, l) after pass l - 1
    sel = nzi  # the values with level == l (|v| >= l), in index order
    for lv in range(1, vmax):
        if not sel.size:
            break
        g = _code_pass(code, counts, min(lv, CONTEXTS - 1),
                       None if a is None else (a[sel] > lv).astype(np.int32), sel.size)
        sel = sel[g == 1]
        level[sel] = lv + 1
    out = level.astype(np.int32)
    out[nzi[np.asarray(neg) == 1]] *= -1
    return out


def encode_ints(tensors: Sequence[Tuple[np.ndarray, int]]) -> bytes:
    """(values, vmax) per tensor → the coded integers: §7's coder words, little-endian."""
    enc = constriction.stream.queue.RangeEncoder()

    def code(probs, sym):
        enc.encode(np.asarray(sym, np.int32), BERNOULLI, probs)
        return np.asarray(sym, np.int32)

    for v, vmax in tensors:
        _run_tensor(code, v.size, vmax, np.asarray(v, np.int64).ravel())
    enc.encode(SENTINEL, BERNOULLI, np.full(len(SENTINEL), 0.5))
    return enc.get_compressed().astype("<u4").tobytes()


def decode_ints(data: bytes, tensors: Sequence[Tuple[int, int]]) -> List[np.ndarray]:
    """Inverse of :func:`encode_ints` for tensors of (count, vmax) → int32 arrays →
    PayloadError for data that is not whole words or does not decode (the check bits)."""
    if not data or len(data) % 4:
        raise PayloadError(f"ADAPT coded data of {len(data)} bytes is not a positive multiple of 4")
    try:
        dec = constriction.stream.queue.RangeDecoder(np.frombuffer(bytes(data), "<u4").astype(np.uint32))

        def code(probs, sym):
            return np.asarray(dec.decode(BERNOULLI, probs), dtype=np.int32)

        out = [_run_tensor(code, n, vmax, None) for n, vmax in tensors]
        tail = np.asarray(dec.decode(BERNOULLI, np.full(len(SENTINEL), 0.5)), dtype=np.int32)
    except PayloadError:
        raise
    except Exception as e:  # constriction reports invalid data with its own exception types
        raise PayloadError(f"ADAPT data does not decode: {e}") from e
    if not np.array_equal(tail, SENTINEL):
        raise PayloadError("ADAPT data corrupted (end check failed)")
    return out


# ---- the model side ---------------------------------------------------------------------------
def tensor_names(model: torch.nn.Module) -> List[str]:
    """The model's tensor names in ascending (byte) order: the names of its weights file, which
    an ADAPT record's tensor indices count."""
    return sorted(model.state_dict())


def adaptable_names(model: torch.nn.Module) -> List[str]:
    """The names an ADAPT record may change: the decoder's floating tensors (spec §8c)."""
    sd = model.state_dict()
    return [n for n in tensor_names(model) if n.startswith("decoder.") and sd[n].is_floating_point()]


def record_names(model: torch.nn.Module, ad: "Adaptation") -> List[str]:
    """The tensor names ``ad``'s indices count (spec §8c): those of the model's weights file
    (method 0), or of its decoder variant's file (method 2: the decoder's tensors, here with
    the model's ``decoder.`` prefix; the same order)."""
    names = tensor_names(model)
    return names if ad.decoder_sha256 is None else [n for n in names if n.startswith("decoder.")]


def decodes(model: torch.nn.Module, ad: "Adaptation") -> bool:
    """Whether ``model`` holds the decoder ``ad`` changes: the model's own (method 0) or the
    variant whose weights file's SHA-256 starts with ``ad.decoder_sha256`` (method 2)."""
    sha = getattr(model, "decoder_sha256", None)
    if ad.decoder_sha256 is None:
        return sha is None
    return sha is not None and bytes.fromhex(sha)[:16] == ad.decoder_sha256


def check_against(ad: Adaptation, model: torch.nn.Module) -> None:
    """RecordError when ``ad`` names a tensor the model does not have, one it may not change,
    or a count other than the tensor's size (``model``: the network :func:`decodes` names)."""
    names, sd = record_names(model, ad), model.state_dict()
    allowed = set(adaptable_names(model))
    for t in ad.tensors:
        if t.index >= len(names) or names[t.index] not in allowed:
            raise RecordError(f"ADAPT tensor index {t.index} is not a decoder tensor of the model")
        if sd[names[t.index]].numel() != t.values.size:
            raise RecordError(f"ADAPT tensor {names[t.index]}: {t.values.size} numbers for "
                              f"{sd[names[t.index]].numel()} elements")


def adapted_model(model: torch.nn.Module, ad: Adaptation,
                  base: Optional[Dict[str, torch.Tensor]] = None) -> torch.nn.Module:
    """A copy of ``model`` whose tensors are ``W + v·2^e`` computed in float32 from ``base``
    (the weights file's tensors; default the model's own) and cast to the model's dtype →
    RecordError when the record does not fit the model (:func:`check_against`)."""
    check_against(ad, model)
    names = record_names(model, ad)
    out = copy.deepcopy(model)
    params = dict(out.named_parameters())
    sd = out.state_dict()
    with torch.no_grad():
        for t in ad.tensors:
            name = names[t.index]
            target = params.get(name, sd[name])
            w = (base[name] if base is not None else target).detach().float().cpu()
            new = (w.reshape(-1) + t.delta()).reshape(target.shape)
            target.copy_(new.to(device=target.device, dtype=target.dtype))
    return out


def leading_records(reader: ct.Reader) -> List[ct.Record]:
    """The ADAPT records of a stream, read strictly from its first record up to its first SEGMENT
    (or END), where spec §8c places them; nothing after is read."""
    out: List[ct.Record] = []
    for rec in reader.records():
        if rec.type in (ct.REC_SEGMENT, ct.REC_END):
            break
        if rec.type == ct.REC_ADAPT:
            out.append(rec)
    return out


def read_adaptations(records: Sequence[ct.Record], header: ct.Header,
                     model: Optional[torch.nn.Module] = None) -> List[Adaptation]:
    """The ADAPT records of a stream (those before its first SEGMENT) → their adaptations, in
    order, checked against ``header`` (and against ``model`` those it :func:`decodes`);
    overlapping ranges are a RecordError. Records of unknown methods are left out."""
    out: List[Adaptation] = []
    for rec in records:
        ad = Adaptation.parse(rec.payload, header)
        if ad is None:
            continue
        if model is not None and decodes(model, ad):
            check_against(ad, model)
        for other in out:
            if (ad.first_segment < other.first_segment + other.segments
                    and other.first_segment < ad.first_segment + ad.segments):
                raise RecordError(f"ADAPT records overlap at segments {ad.first_segment}+{ad.segments}")
        out.append(ad)
    return out


Network = Tuple[torch.nn.Module, Dict[str, torch.Tensor]]  # a decoder and its file weights (W)


class SegmentDecoders:
    """The decoder of each segment of a stream: ``plain``, or one of ``networks`` changed by the
    ADAPT record that covers the segment and names it (:func:`decodes`; built when its first
    segment is decoded; one adapted copy alive at a time). A record that names none of
    ``networks`` is not used. ``records`` fills while the stream is read (ADAPT records precede
    SEGMENT 0, so it is complete when segment 0 comes). A record that does not parse or fit
    its network raises its StreamError when ``on_error`` is None; otherwise ``on_error(reason)``
    is called once and no record is used (spec §8c)."""

    def __init__(self, plain: torch.nn.Module, header: ct.Header, records: List[ct.Record],
                 networks: Sequence[Network] = (), on_error=None) -> None:
        self.plain, self.header, self.records = plain, header, records
        self.networks, self.on_error = list(networks), on_error
        self.adaptations: Optional[List[Tuple[Adaptation, Network]]] = None
        self._current: Optional[Tuple[Adaptation, torch.nn.Module]] = None

    def _read(self) -> List[Tuple[Adaptation, Network]]:
        if self.adaptations is None:
            try:
                used = []
                for ad in read_adaptations(self.records, self.header):
                    net = next((n for n in self.networks if decodes(n[0], ad)), None)
                    if net is not None:
                        check_against(ad, net[0])
                        used.append((ad, net))
                self.adaptations = used
            except StreamError as e:
                if self.on_error is None:
                    raise
                self.on_error(f"ADAPT record not used ({str(e).splitlines()[0]}): segments "
                              f"decoded with the base decoder")
                self.adaptations = []
        return self.adaptations

    def __call__(self, i: int) -> torch.nn.Module:
        """The decoder of segment ``i``."""
        found = next(((ad, net) for ad, net in self._read() if ad.covers(i)), None)
        if found is None:
            return self.plain
        ad, (model, base) = found
        if self._current is None or self._current[0] is not ad:
            self._current = None  # free the previous copy first
            self._current = (ad, adapted_model(model, ad, base))
        return self._current[1]


def stream_decoders(header: ct.Header, model: ModelSource, records: List[ct.Record],
                    precision: str = "auto", decoder: Union[str, torch.nn.Module] = DECODER_AUTO,
                    on_error=None) -> Tuple[torch.nn.Module, SegmentDecoders]:
    """What decodes the segments of ``header``'s stream or tokens → (the model the header names,
    its :class:`SegmentDecoders`). ``model``: as :func:`~neuralcodec.weights.resolve_model`; a
    model it loads (None or a loader) is cast for inference (``precision``) after W of spec §8c
    is copied, a model object is used as it is. The decoder peak memory is checked here.

    ``decoder``: ``"auto"`` — the registry's default decoder variant of the model (if any)
    decodes the segments no ADAPT record covers; a segment a record covers decodes with the
    network the record changes (the model's own decoder, or a variant: method 2), adapted;
    ``"full"`` — the model's own decoder everywhere (adapted where a method-0 record says); a
    variant name (or a model from :meth:`Tokenizer.with_decoder`) — that decoder for every
    segment (adapted where a method-2 record names its file)."""
    m = resolve_model(header, model).eval()
    light = decoder_variant(m, decoder) if isinstance(decoder, str) else decoder
    networks = []
    if light is None or decoder == DECODER_AUTO:
        networks.append((m, file_weights(m)))  # W of spec §8c, before any cast
    if light is not None:
        networks.append((light, file_weights(light)))
    if not isinstance(model, torch.nn.Module):
        for_inference(m, next(m.parameters()).device, precision)
    check_decoder_memory(m, header)
    if light is not None:
        light.to(device=next(m.parameters()).device, dtype=m.dtype).eval()
    return m, SegmentDecoders(light if light is not None else m, header, records, networks, on_error)


def file_weights(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Copies of the tensors an ADAPT record may change, as the model holds them now (call it
    before casting the model for inference: W of spec §8c is the weights file's value)."""
    sd = model.state_dict()
    return {n: sd[n].detach().clone() for n in adaptable_names(model)}
