"""Mutation fuzzer of the ``.mgv`` reader and decoder.

Seeds are real streams made with the tiny model (raw and context-coded segments, AUDIO records,
one-frame and multi-segment streams, a 1.3 stream with an ADAPT record; forged records of methods 0 and 2). Each case mutates one
seed (bit flips, random bytes, interesting 32-bit values in record fields, inserted / deleted /
duplicated ranges, truncation), optionally re-computes the header and record CRCs so the
mutation reaches the checks behind them, and then runs every entry point on it: strict decode,
recovering decode, a frame-range decode, ``streaminfo.stream_info``, and for streams with ADAPT
records the strict reading of spec §8c (:func:`check_adaptations`: the records before
SEGMENT 0, ``adapt.read_adaptations``, the model rules, adaptations re-coded and re-read). A case
passes when each one ends in a correct decode (frames of the header's size, and with recovery
exactly the header's frame count) or an :class:`neuralcodec.errors.MGVError`; any other
exception or a case running past its time limit fails, and its input is saved to the corpus
directory.

``--mode struct`` is structure-aware: it parses a seed into its header and records, forges
header fields and record contents at their limits (sizes, counts, offsets, time bases,
timestamps, record types and flags, INDEX / END offsets, segments consistent with a forged
header, ADAPT records), and writes every header and record with a valid CRC, so each case
reaches the checks behind the framing. ``--mode adapt`` forges only ADAPT records (spec §8c)
inside otherwise valid streams (correct INDEX and END): valid ones from
``neuralcodec.adapt.Adaptation(...).to_payload()`` for the tiny model's decoder tensors, several
with adjacent or overlapping ranges, and mutated ones (head and entry fields at their limits,
cut or padded payloads, records at both caps and the most passes the caps allow, flipped or
random data, a record after a SEGMENT, unknown methods, the CRITICAL flag). ``--mode mix``
cycles through the three: mutate, struct, adapt.

    python -m tools.fuzz_mgv --cases 10000 [--mode struct|adapt|mix] [--seed 0] [--save tests/fuzz_corpus]

Decodes run with ``MGV_MAX_MEMORY`` (``--max-memory``, default 1G): the decoder refuses frame
sizes whose decoding would need more, and each decode consumes at most :data:`FRAME_CAP` frames
and :data:`PIXEL_CAP` pixels.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import random
import signal
import struct
import sys
import time
import traceback
import zlib
from fractions import Fraction
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np

from neuralcodec import adapt, audio, codec, streaminfo
from neuralcodec import container as ct
from neuralcodec.errors import MGVError

FRAME_CAP = 300  # frames consumed per decode (a header may validly announce 2^24)
PIXEL_CAP = 1 << 20  # pixels consumed per decode (a forged header may announce 33 Mpx frames)
INTERESTING32 = (0, 1, 2, 3, 0x7F, 0xFF, 0x100, 0xFFFF, 0x10000, 1 << 24, 1 << 28, (1 << 28) + 1,
                 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)


class CaseTimeout(BaseException):
    """A case ran past its time limit (a hang). Not an Exception: code under test that turns
    any Exception into its own error (a decoder wrapping its library's) must not hide it."""


def tiny_model():
    """The tiny config with fixed random weights; identity set without a weights file."""
    import torch

    from neuralcodec.configs import CONFIGS
    from neuralcodec.model import Tokenizer

    torch.manual_seed(0)
    m = Tokenizer(CONFIGS["tiny"], name="tiny-fuzz",
                  sha256=hashlib.sha256(b"tiny-fuzz").hexdigest()).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def _clip(t: int, h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    v = np.stack([np.stack([(x * 7 + i * 5) % 256, (y * 9 + i * 3) % 256, (x + y) * 4 % 256], -1)
                  for i in range(t)]).astype(np.int16) + rng.integers(-6, 7, (t, h, w, 3))
    return np.clip(v, 0, 255).astype(np.uint8)


def _with_audio(data: bytes) -> bytes:
    """Re-write a stream with a synthetic audio track: a TRACK record up front and one
    PACKETS record after each segment."""
    r = ct.Reader(io.BytesIO(data))
    out = io.BytesIO()
    w = ct.Writer(out, r.header)
    tr = ct.AudioTrack(0, "aac", Fraction(1, 1000), 44100, 2, 0, b"\x1aE\xdf\xa3template")
    w.write_record(ct.REC_AUDIO, tr.to_payload(), critical=False)
    for i, seg in enumerate(r.segments()):
        w.write_segment(seg)
        pk = tuple(ct.AudioPacket(40 * i + k, 40 * i + k, 23, True, bytes([k] * (5 + k)))
                   for k in range(3))
        w.write_record(ct.REC_AUDIO, ct.AudioPackets(0, pk).to_payload(), critical=False)
    w.close()
    return out.getvalue()


def seed_streams(model) -> List[bytes]:
    """Small real streams: raw and context-coded, several segments, 1 frame, audio."""
    s1 = codec.compress(model, _clip(9, 16, 16, 0), segment_frames=5, entropy="none")
    s2 = codec.compress(model, _clip(13, 16, 24, 1), segment_frames=5, entropy="context")
    s3 = codec.compress(model, _clip(1, 8, 8, 2), entropy="context")
    s4 = _with_audio(codec.compress(model, _clip(6, 16, 16, 3), segment_frames=5, entropy="context",
                                    fps=Fraction(30000, 1001)))
    return [s1, s2, s3, s4, _real_audio_stream(model), _adapt_seed(model)]


def _adapt_seed(model) -> bytes:
    """A 1.3 stream: 11 frames in 3 segments with an ADAPT record (spec §8c) that changes
    four decoder tensors of ``model`` for segments 1 and 2 (``codec.insert_adaptation``)."""
    data = codec.compress(model, _clip(11, 16, 16, 5), segment_frames=5, entropy="context")
    h = ct.Reader(io.BytesIO(data)).header
    targets = _targets(model)
    rng = np.random.default_rng(5)
    tensors = []
    for index, size in (targets[1], targets[4], targets[9], targets[-1]):
        v = np.clip(np.round(rng.normal(0, 2, size)), -7, 7).astype(np.int32)
        tensors.append(adapt.TensorUpdate(index, -6, int(np.abs(v).max()), v))
    out = io.BytesIO()
    codec.insert_adaptation(data, adapt.Adaptation(h.model_sha256, 1, 2, tuple(tensors)).to_payload(), out)
    return out.getvalue()


_TARGETS: dict = {}


def _targets(model=None) -> List[Tuple[int, int]]:
    """(tensor index, element count) of every tensor an ADAPT record may change (the decoder's
    floating tensors, spec §8c) of ``model``, default the tiny config (built on the meta device,
    cached), in index order."""
    if model is None:
        if "tiny" not in _TARGETS:
            import torch

            from neuralcodec.configs import CONFIGS
            from neuralcodec.model import Tokenizer

            with torch.device("meta"):
                _TARGETS["tiny"] = _targets(Tokenizer(CONFIGS["tiny"]))
        return _TARGETS["tiny"]
    names, sd = adapt.tensor_names(model), model.state_dict()
    allowed = set(adapt.adaptable_names(model))
    return [(i, sd[n].numel()) for i, n in enumerate(names) if n in allowed]


def _real_audio_stream(model) -> bytes:
    """A stream made from a real file with a PCM audio track (a template FFmpeg can mux)."""
    import tempfile

    import av

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "a.mkv"
        c = av.open(str(path), "w")
        v = c.add_stream("ffv1", rate=25)
        v.width, v.height, v.pix_fmt = 16, 16, "yuv420p"
        a = c.add_stream("pcm_s16le", rate=8000)
        a.layout = "mono"
        frames = _clip(6, 16, 16, 4)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            for p in v.encode(vf):
                c.mux(p)
            af = av.AudioFrame.from_ndarray(np.zeros((1, 320), np.int16), format="s16", layout="mono")
            af.sample_rate, af.pts = 8000, 320 * i
            for p in a.encode(af):
                c.mux(p)
        for st in (v, a):
            for p in st.encode():
                c.mux(p)
        c.close()
        return codec.compress(model, str(path), segment_frames=5)


# ---- mutations ------------------------------------------------------------------------------
def _record_offsets(data: bytes) -> List[int]:
    out, i = [], data.find(ct.RECORD_SYNC)
    while i >= 0:
        out.append(i)
        i = data.find(ct.RECORD_SYNC, i + 1)
    return out


def fix_crcs(data: bytearray) -> bytearray:
    """Recompute the header CRC and the CRC of every record that still parses."""
    if len(data) >= 16 and data[:8] == ct.MAGIC:
        hlen = struct.unpack_from("<I", data, 12)[0]
        if 16 + hlen + 4 <= len(data):
            struct.pack_into("<I", data, 16 + hlen, zlib.crc32(bytes(data[:16 + hlen])))
    for off in _record_offsets(bytes(data)):
        if off + 12 > len(data):
            continue
        length = struct.unpack_from("<I", data, off + 8)[0]
        end = off + 12 + length
        if end + 4 <= len(data):
            struct.pack_into("<I", data, end, zlib.crc32(bytes(data[off:end])))
    return data


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four random mutations of ``data``; CRCs re-fixed half of the time."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        n = len(b)
        if n == 0:
            b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
            continue
        i = rng.randrange(n)
        if op == 0:  # bit flip
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # random byte
            b[i] = rng.randrange(256)
        elif op == 2:  # interesting 32-bit value at a record field or anywhere
            offs = _record_offsets(bytes(b))
            j = (rng.choice(offs) + rng.choice((4, 8, 12, 16, 20, 24, 28))) \
                if offs and rng.random() < 0.7 else i
            if j + 4 <= n:
                struct.pack_into("<I", b, j, rng.choice(INTERESTING32))
        elif op == 3:  # header field
            j = 16 + rng.randrange(min(44, max(1, n - 16)))
            if j < n:
                b[j] = rng.choice((0, 1, 2, 0x7F, 0x80, 0xFF))
        elif op == 4:  # truncate
            del b[rng.randrange(n):]
        elif op == 5:  # insert random bytes
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
        elif op == 6:  # delete a range
            del b[i:i + rng.randint(1, 64)]
        elif op == 7:  # duplicate a range elsewhere (spliced records)
            j = rng.randrange(n)
            b[j:j] = b[i:i + rng.randint(1, 200)]
        else:  # a sync word somewhere (false resynchronization)
            b[i:i] = ct.RECORD_SYNC
    if rng.random() < 0.5:
        fix_crcs(b)
    return bytes(b)


# ---- structure-aware forging ------------------------------------------------------------------
HEADER_FIELDS = [(f.name, f.kind) for f in ct.FIELDS]
LIMITS = {
    "width": (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 63, 64, 1023, 1024, 2047, 4096, 8191, 8192, 8193, 0, 65535),
    "height": (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 63, 64, 1023, 1024, 2047, 4096, 8191, 8192, 8193, 0,
               65535),
    "frames": (1, 2, 4, 5, 6, 9, 13, 17, 65536, 65537, 65538, (1 << 20) + 1, (1 << 24) - 1, 1 << 24,
               (1 << 24) + 1, 0, 0xFFFFFFFF),
    "fps_num": (1, 999, 1000, 1001, 30000, 10 ** 6, 10 ** 6 + 1, 0),
    "fps_den": (1, 999, 1000, 1001, 10 ** 6, 10 ** 6 + 1, 0),
    "model_bits": (1, 5, 6, 7, 32, 33, 0),
    "bits": (1, 2, 5, 6, 7, 32, 0),
    "bit_order": (0, 1), "sign_convention": (0, 1),
    "temporal_factor": (1, 2, 4, 8, 64, 65, 0), "spatial_factor": (1, 2, 4, 8, 128, 129, 0),
    "entropy": (0, 1, 2), "reserved": (0, 1),
    "segment_frames": (1, 2, 5, 9, 13, 17, 49, 65533, 65537, 65538, 0, 0xFFFFFFFF),
}
I64_LIMITS = (0, 1, -1, (1 << 63) - 1, -(1 << 63), -(1 << 63) + 1, 1 << 62, 3 * 10 ** 9)
U32_LIMITS = (0, 1, 2, 0x7FFFFFFF, 0x80000000, 3 * 10 ** 9, 0xFFFFFFFE, 0xFFFFFFFF)


def _parse_seed(data: bytes):
    """(header field dict, minor, [(type, flags, payload)]) of a valid seed stream."""
    r = ct.Reader(io.BytesIO(data))
    h = r.header
    fields = {name: getattr(h, name) for name, _ in HEADER_FIELDS}
    recs = [(rec.type, rec.flags, bytes(rec.payload)) for rec in r.records()]
    return fields, r.version[1], recs


def _pack_header(fields: dict, minor: int, extra: bytes = b"") -> bytes:
    out = []
    for name, kind in HEADER_FIELDS:
        v = fields[name]
        if kind == "u8":
            out.append(struct.pack("<B", v & 0xFF))
        elif kind == "u16":
            out.append(struct.pack("<H", v & 0xFFFF))
        elif kind == "u32":
            out.append(struct.pack("<I", v & 0xFFFFFFFF))
        elif kind == "bytes16":
            out.append(bytes(v)[:16].ljust(16, b"\0"))
        else:
            b = v.encode("ascii") if isinstance(v, str) else bytes(v)
            out.append(bytes([len(b) & 0xFF]) + b)
    body = b"".join(out) + extra
    head = ct.PRELUDE.pack(ct.MAGIC, 1, minor & 0xFFFF, len(body)) + body
    return head + struct.pack("<I", zlib.crc32(head))


def _record(rtype: int, flags: int, payload: bytes) -> bytes:
    head = ct.RECORD_HEAD.pack(ct.RECORD_SYNC, rtype & 0xFF, flags & 0xFF, 0, len(payload))
    return head + payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))


def _consistent_segments(fields: dict, rng: random.Random, limit: int = 6) -> List[tuple]:
    """SEGMENT records that agree with a (forged) header, when its geometry is valid and the
    payloads are small: raw payloads of exactly R(t) bytes or short mode-1 payloads."""
    try:
        h = ct.Header(**{k: v for k, v in fields.items()})
        h.check()
    except Exception:  # noqa: BLE001 - an invalid forged header has no consistent segments
        return []
    out = []
    lh, lw = h.latent_hw
    for i in range(min(h.segment_count, limit)):
        first, n = h.segment_bounds(i)
        t = h.latent_frames(n)
        raw = h.raw_bytes(t)
        if raw <= (1 << 16) and rng.random() < 0.6:
            mode, data = 0, bytes(rng.getrandbits(8) for _ in range(min(raw, 64))) + bytes(max(0, raw - 64))
        elif rng.random() < 0.5 and _const_payload((h.bits, t, lh, lw)) is not None:
            data = _const_payload((h.bits, t, lh, lw))
            mode = 1
            if len(data) > raw:
                mode, data = 0, bytes(raw)
        else:
            words = rng.choice((1, 2, 3, 8, 64, 256))
            data = bytes(rng.getrandbits(8) for _ in range(4 * words)) if rng.random() < 0.5 \
                else bytes(4 * words)
            mode = 1
            if len(data) > raw:
                mode, data = 0, bytes(raw)
        out.append((ct.REC_SEGMENT, 1, ct.Segment(i, first, n, t, lh, lw, mode, data).to_payload()))
    return out


def _forge_audio(rng: random.Random) -> bytes:
    if rng.random() < 0.5:  # a track description with fields at their limits
        codec_name = rng.choice((b"aac", b"pcm_s16le", b"x" * 32, b"flac"))
        tmpl = rng.choice((b"", b"\x1aE\xdf\xa3template", bytes(rng.getrandbits(8) for _ in range(40))))
        return (bytes([ct.AUDIO_TRACK, rng.choice((0, 1, 15, 16, 255))]) + bytes([len(codec_name)])
                + codec_name
                + struct.pack("<IIIHqI", rng.choice(U32_LIMITS), rng.choice(U32_LIMITS),
                              rng.choice((1, 8000, 44100, 10 ** 6, 10 ** 6 + 1, 0)),
                              rng.choice((1, 2, 255, 256, 0)), rng.choice(I64_LIMITS),
                              rng.choice((len(tmpl), len(tmpl) + 1, 0, 1 << 20, 0xFFFFFFFF))) + tmpl)
    n = rng.choice((0, 1, 2, 3, 10))
    body = []
    for _ in range(n):
        size = rng.choice((0, 1, 7, 100))
        body.append(struct.pack("<qqIBI", rng.choice(I64_LIMITS + (5, 3)), rng.choice(I64_LIMITS + (4, 3)),
                                rng.choice(U32_LIMITS), rng.choice((0, 1, 2)), size) + bytes(size))
    count = rng.choice((n, n, n + 1, 0xFFFFFFFF, 1 << 28))
    return bytes([rng.choice((ct.AUDIO_PACKETS, ct.AUDIO_PACKETS, 2, 255)), rng.choice((0, 1, 15, 16))]) \
        + struct.pack("<I", count) + b"".join(body)


def _forge_real_audio(payload: bytes, rng: random.Random) -> bytes:
    """A real AUDIO record with its time base, start or packet timestamps / order forged."""
    import dataclasses

    try:
        a = ct.parse_audio(payload)
    except MGVError:
        return payload
    if isinstance(a, ct.AudioTrack):
        num = rng.choice(U32_LIMITS[1:] + (1,))
        den = rng.choice(U32_LIMITS[1:] + (8000,))
        raw = a.to_payload()
        pos = 3 + len(a.codec)
        b = bytearray(raw)
        if rng.random() < 0.6:
            struct.pack_into("<II", b, pos, num, den)
        else:
            struct.pack_into("<q", b, pos + 14, rng.choice(I64_LIMITS))
        return bytes(b)
    if isinstance(a, ct.AudioPackets) and a.packets:
        pk = list(a.packets)
        i = rng.randrange(len(pk))
        r = rng.random()
        if r < 0.4:
            pk[i] = dataclasses.replace(pk[i], pts=rng.choice(I64_LIMITS[:-3] + (None,)),
                                        dts=rng.choice(I64_LIMITS[:-3] + (None,)))
        elif r < 0.7 and len(pk) > 1:
            j = rng.randrange(len(pk))
            pk[i], pk[j] = pk[j], pk[i]
        else:
            pk[i] = dataclasses.replace(pk[i], duration=rng.choice(U32_LIMITS),
                                        data=pk[i].data[:rng.choice((0, 1))])
        return ct.AudioPackets(a.track, tuple(pk)).to_payload()
    return payload


_CONST_PAYLOADS: dict = {}


def _const_payload(shape) -> Optional[bytes]:
    """A valid mode-1 payload of all-zero bits (cached): segments of forged huge frames or
    long segments that reach the model."""
    if shape not in _CONST_PAYLOADS:
        k, t, h, w = shape
        if k * t * h * w > (1 << 24):
            return None
        from neuralcodec.entropy import encode_bits

        _CONST_PAYLOADS[shape] = encode_bits(np.zeros(shape, np.uint8))
    return _CONST_PAYLOADS[shape]


def _segment_count(fields: dict) -> int:
    """S of a (forged) header, 1 when the header is invalid."""
    try:
        h = ct.Header(**fields)
        h.check()
        return h.segment_count
    except Exception:  # noqa: BLE001 - an invalid forged header
        return 1


def _int_values(nrng: np.random.Generator, size: int, vmax: int) -> np.ndarray:
    """``size`` integers in -vmax..vmax: small ones, the extremes, or all zero."""
    r = nrng.random()
    if vmax == 0 or r < 0.1:
        return np.zeros(size, np.int32)
    if r < 0.25:  # every one at ±vmax: the most passes and symbols
        return (vmax * nrng.choice([-1, 1], size)).astype(np.int32)
    mag = np.minimum(nrng.geometric(nrng.uniform(0.05, 0.9), size) - 1, vmax)
    mag[nrng.random(size) < 0.01] = vmax
    return (mag * nrng.choice([-1, 1], size)).astype(np.int32)


def valid_adaptation(rng: random.Random, sha: bytes, first: int, segments: int,
                     targets: Optional[List[Tuple[int, int]]] = None) -> adapt.Adaptation:
    """A valid update of 1-6 decoder tensors (of ``targets``, default the tiny config's) for
    segments ``first`` .. ``first + segments - 1``: exponents -64..0, vmax 0..255; a third of
    them of method 2 (1.4), naming a decoder variant no reader here holds (the decoder's tensors
    come first in the model's sorted names, so the indices are those of a variant file too)."""
    targets = targets or _targets()
    nrng = np.random.default_rng(rng.getrandbits(32))
    chosen = sorted(rng.sample(targets, min(len(targets), rng.choice((1, 1, 2, 3, 6)))))
    tensors = []
    for index, size in chosen:
        vmax = rng.choice((0, 1, 2, 3, 7, 31, 255))
        exp = rng.choice((adapt.MIN_EXP, -30, -16, -12, -10, -8, -6, -4, -2, adapt.MAX_EXP))
        tensors.append(adapt.TensorUpdate(index, exp, vmax, _int_values(nrng, size, vmax)))
    variant = bytes(rng.getrandbits(8) for _ in range(16)) if rng.random() < 1 / 3 else None
    return adapt.Adaptation(sha, first, segments, tuple(tensors), variant)


def _adapt_ranges(rng: random.Random, S: int) -> List[Tuple[int, int]]:
    """1-4 valid segment ranges of a stream of S segments: adjacent (valid) or overlapping."""
    cuts = sorted(rng.sample(range(1, S), min(S - 1, rng.randint(0, 3)))) if S > 1 else []
    bounds = [0] + cuts + [S]
    ranges = [(a, b - a) for a, b in zip(bounds, bounds[1:])]
    if rng.random() < 0.3:  # overlapping ranges
        a, n = rng.choice(ranges)
        ranges.insert(rng.randint(0, len(ranges)), (a, rng.randint(1, S - a)))
    elif rng.random() < 0.3 and len(ranges) > 1:  # not all segments covered
        del ranges[rng.randrange(len(ranges))]
    return ranges


def _mutate_adapt(payload: bytes, rng: random.Random, S: int) -> bytes:
    """A valid ADAPT payload with one field, its length or its data forged (spec §8c's rules)."""
    b = bytearray(payload)
    n = struct.unpack_from("<H", b, 2)[0]
    head = adapt.head_size(b[0])
    data_at = head + adapt.ADAPT_ENTRY.size * n
    op = rng.randrange(6)
    if op == 0:  # a head field
        k = rng.randrange(6)
        if k == 0:
            b[0] = rng.choice((0, 1, 2, 3, 255))  # 0 ↔ 2 moves every later field by 16 bytes
        elif k == 1:
            b[1] = rng.choice((1, 255))
        elif k == 2:
            struct.pack_into("<H", b, 2, rng.choice((0, 1, n - 1, n + 1, 1024, 1025, 0xFFFF)) & 0xFFFF)
        elif k == 3:  # model_sha256, or method 2's decoder_sha256
            b[4 + rng.randrange(16) + (24 if head > adapt.ADAPT_HEAD.size and rng.random() < 0.5
                                       else 0)] ^= 1 << rng.randrange(8)
        else:
            lim = (0, 1, S - 1, S, S + 1, 1 << 20, 0x7FFFFFFF, 0xFFFFFFFF)
            struct.pack_into("<I", b, 20 if k == 4 else 24, rng.choice(lim) & 0xFFFFFFFF)
    elif op == 1 and n:  # an entry field
        at = head + adapt.ADAPT_ENTRY.size * rng.randrange(n)
        k = rng.randrange(4)
        if k == 0:
            names = _targets()[-1][0] + 1  # past the last decoder tensor: past every tensor
            struct.pack_into("<H", b, at, rng.choice((0, 1, 2, 5, 50, names - 1, names, 0xFFFF)))
        elif k == 1:
            struct.pack_into("<b", b, at + 2, rng.choice((-128, -65, -64, -1, 0, 1, 127)))
        elif k == 2:
            b[at + 3] = rng.choice((0, 1, 2, 127, 254, 255))
        else:
            c = struct.unpack_from("<I", b, at + 4)[0]
            struct.pack_into("<I", b, at + 4, rng.choice(
                (0, 1, c - 1, c + 1, 1 << 20, (1 << 20) + 1, 1 << 23, 0xFFFFFFFF)) & 0xFFFFFFFF)
    elif op == 2:  # the length: cut anywhere, or bytes appended (whole words or not)
        if rng.random() < 0.6:
            del b[rng.randrange(len(b)):]
        else:
            b += bytes(rng.getrandbits(8) for _ in range(rng.choice((1, 2, 3, 4, 8, 64))))
    elif op == 3 and len(b) > data_at:  # the coded data: flipped bits, random or zero words
        r = rng.random()
        if r < 0.5:
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(data_at, len(b))
                b[i] ^= 1 << rng.randrange(8)
        elif r < 0.75:
            b[data_at:] = bytes(rng.getrandbits(8) for _ in range(rng.choice((4, 8, 64, len(b) - data_at))))
        else:
            b[data_at:] = bytes(rng.choice((0, 4, 8, 400)))
    elif op == 4:  # entries swapped (indices out of order) or duplicated
        if n >= 2:
            i = head + adapt.ADAPT_ENTRY.size * rng.randrange(n - 1)
            j = i + adapt.ADAPT_ENTRY.size
            b[i:j + 8] = b[j:j + 8] + (b[i:i + 8] if rng.random() < 0.5 else b[j:j + 8])
    else:  # the data of another record (its integers decode as garbage, or fail)
        b[data_at:] = adapt.encode_ints([(np.full(rng.choice((1, 5, 100)), 1, np.int32), 1)])
    return bytes(b)


def _caps_adapt(rng: random.Random, sha: bytes) -> bytes:
    """An ADAPT payload at or just over the caps (Σ count 2^20, Σ count·(vmax + 1) 2^23), or
    with the most passes they allow (1024 one-integer tensors at vmax 255), coded as valid
    data of integers at ±vmax or with random data; tensor indices past the model's."""
    k = rng.randrange(4)
    over = int(rng.random() < 0.4)
    if k == 0:  # Σ count at 2^20 (+1)
        entries = [(0, 0, 7, (1 << 20) - 1), (1, -8, 7, 1 + over)]
    elif k == 1:  # Σ count·(vmax + 1) at 2^23 (+1): 2^15 numbers at vmax 255 (and one more)
        entries = [(2, -4, 255, 1 << 15)] + ([(3, -4, 0, 1)] if over else [])
    elif k == 2:  # the most passes: 1024 tensors of one number at vmax 255
        entries = [(i, -6, 255, 1) for i in range(1024 + over)]
    else:  # many tensors, counts spread
        entries = [(i, -6, rng.choice((1, 3, 15)), rng.choice((1, 16, 17, 1000)))
                   for i in range(rng.randint(2, 300))]
    nrng = np.random.default_rng(rng.getrandbits(32))
    r = rng.random()
    if r < 0.6:
        vals = [(np.where(nrng.random(c) < 0.5, -vm, vm).astype(np.int32) if rng.random() < 0.7
                 else _int_values(nrng, c, vm), vm) for _, _, vm, c in entries]
        data = adapt.encode_ints(vals)
    else:
        data = bytes(rng.getrandbits(8) for _ in range(rng.choice((4, 64, 4096))))
    variant = rng.random() < 0.3  # method 2: the same caps
    head = adapt.ADAPT_HEAD.pack(2 if variant else 0, 0, len(entries) & 0xFFFF, sha, 0, 1)
    head += bytes(range(16)) if variant else b""
    return head + b"".join(adapt.ADAPT_ENTRY.pack(*e) for e in entries) + data


def forge_adapt(recs: list, fields: dict, rng: random.Random) -> list:
    """ADAPT records (spec §8c) forged into ``recs`` (type, flags, payload) of a stream whose
    header has ``fields``: valid ones before SEGMENT 0 (several, adjacent or overlapping), or a
    mutated one, one at the caps, one after a SEGMENT, an unknown method, an empty payload."""
    S = _segment_count(fields)
    sha = bytes(fields["model_sha256"])
    first_seg = next((i for i, r in enumerate(recs) if r[0] == ct.REC_SEGMENT), len(recs))
    recs = list(recs)

    def put(payload: bytes, after_segment: bool = False, flags: int = 0) -> None:
        segs = [i for i, r in enumerate(recs) if r[0] == ct.REC_SEGMENT]
        at = rng.randint(segs[0] + 1, len(recs)) if after_segment and segs else rng.randint(0, first_seg)
        recs.insert(at, (ct.REC_ADAPT, flags, payload))

    kind = rng.randrange(10)
    if kind <= 2:  # valid records for consecutive ranges (sometimes overlapping)
        for first, n in reversed(_adapt_ranges(rng, S)):
            recs.insert(first_seg, (ct.REC_ADAPT, 0, valid_adaptation(rng, sha, first, n).to_payload()))
    elif kind <= 5:  # one mutated record (a valid one before or after it, sometimes)
        put(_mutate_adapt(valid_adaptation(rng, sha, 0, S).to_payload(), rng, S))
    elif kind == 6:
        put(_caps_adapt(rng, sha))
    elif kind == 7:  # placement: a valid record after a SEGMENT
        put(valid_adaptation(rng, sha, 0, S).to_payload(), after_segment=True)
    elif kind == 8:  # a later method, an empty payload, a tiny one
        put(rng.choice((b"", b"\x01", bytes([rng.randrange(1, 256)]) + b"later method", b"\x00" * 27,
                        b"\x02" + b"\x00" * 42)))
    else:  # CRITICAL set on a valid record (a known type: read as ADAPT), or a foreign model
        ad = valid_adaptation(rng, sha if rng.random() < 0.6 else bytes(16), 0, S)
        put(ad.to_payload(), flags=rng.choice((0, ct.FLAG_CRITICAL)))
    return recs


def forge(seed: bytes, rng: random.Random, only_adapt: bool = False) -> bytes:
    """One structure-aware case built from ``seed``: header fields and records forged at their
    limits, every header and record with a valid CRC, INDEX / END made consistent or forged.
    ``only_adapt``: forge only ADAPT records (:func:`forge_adapt`), minor 3 or 4, INDEX and END
    right (an otherwise valid stream)."""
    fields, minor, recs = _parse_seed(seed)
    recs = [r for r in recs if r[0] not in (ct.REC_INDEX, ct.REC_END)]
    extra = b""
    has_audio = any(r[0] == ct.REC_AUDIO for r in recs)
    for _ in range(1 if only_adapt else rng.randint(1, 3)):
        op = 13 if only_adapt else rng.randrange(14)
        if op == 10 or (op == 11 and has_audio):
            op = 4  # audio forging is worth more cases where there is real audio
        if op == 13:  # ADAPT records (spec §8c), in a 1.3 or 1.4 stream most of the time
            recs = forge_adapt(recs, fields, rng)
            if only_adapt or rng.random() < 0.8:
                minor = rng.choice((ct.MINOR_ADAPT, ct.MINOR_ADAPT_VARIANT))
        elif op == 12:  # a valid header of huge frames or a long segment, with matching segments
            if rng.random() < 0.5:
                fields["width"], fields["height"] = rng.choice(((8192, 4096), (4096, 4096), (2048, 2048),
                                                                (8192, 1), (1, 8192), (1024, 1024)))
                fields["frames"] = rng.choice((1, 2, 5))
            else:
                fields["frames"] = rng.choice((65533, 8193, 4097))
                fields["segment_frames"] = fields["frames"]
            recs = [r for r in recs if r[0] != ct.REC_SEGMENT] + _consistent_segments(fields, rng)
        elif op <= 2:  # header fields at their limits; segments made to match half of the time
            for name in rng.sample(list(LIMITS), rng.randint(1, 3)):
                fields[name] = rng.choice(LIMITS[name])
            if rng.random() < 0.5:
                segs = _consistent_segments(fields, rng)
                recs = [r for r in recs if r[0] != ct.REC_SEGMENT]
                recs[rng.randint(0, len(recs)):rng.randint(0, len(recs))] = []
                recs = ([r for r in recs if r[0] != ct.REC_SEGMENT] + segs if rng.random() < 0.5
                        else segs + recs)
        elif op == 3:  # a SEGMENT head field at a limit
            idx = [i for i, r in enumerate(recs) if r[0] == ct.REC_SEGMENT]
            if idx:
                i = rng.choice(idx)
                p = bytearray(recs[i][2])
                k = rng.randrange(8)
                off, fmt = [(0, "<I"), (4, "<I"), (8, "<I"), (12, "<H"), (14, "<H"), (16, "<H"),
                            (18, "<B"), (19, "<B")][k]
                lim = {"<I": U32_LIMITS, "<H": (0, 1, 2, 0x7FFF, 0xFFFF), "<B": (0, 1, 2, 255)}[fmt]
                struct.pack_into(fmt, p, off, rng.choice(lim))
                recs[i] = (ct.REC_SEGMENT, recs[i][1], bytes(p))
        elif op == 4:  # AUDIO records at their limits: new ones, or real ones with forged fields
            real = [i for i, r in enumerate(recs) if r[0] == ct.REC_AUDIO]
            if real and rng.random() < 0.6:
                i = rng.choice(real)
                recs[i] = (ct.REC_AUDIO, recs[i][1], _forge_real_audio(recs[i][2], rng))
            else:
                recs.insert(rng.randint(0, len(recs)), (ct.REC_AUDIO, 0, _forge_audio(rng)))
        elif op == 5:  # odd record types and flags
            junk = bytes(rng.getrandbits(8) for _ in range(rng.choice((0, 8, 40))))
            recs.insert(rng.randint(0, len(recs)), (rng.choice((0, 4, 7, 14, 16, 255)),
                                                    rng.choice((0, 1, 2, 0x80)), junk))
        elif op == 6:  # duplicate, drop or reorder records
            if recs:
                i = rng.randrange(len(recs))
                r = rng.random()
                if r < 0.4:
                    recs.insert(rng.randint(0, len(recs)), recs[i])
                elif r < 0.7:
                    del recs[i]
                else:
                    j = rng.randrange(len(recs))
                    recs[i], recs[j] = recs[j], recs[i]
        elif op == 7:  # a SEGMENT hidden inside a non-critical record
            segs = [r for r in recs if r[0] == ct.REC_SEGMENT]
            if segs:
                recs.insert(rng.randint(0, len(recs)), (9, 0, _record(*rng.choice(segs))))
        elif op == 8:  # a newer minor with extra header bytes, or a known minor with them
            minor = rng.choice((0, 1, 2, 0xFFFF))
            extra = bytes(rng.getrandbits(8) for _ in range(rng.choice((0, 1, 7, 100))))
        else:  # the model identity changed (ModelError paths)
            if rng.random() < 0.5:
                fields["model_name"] = rng.choice(("unknown-model", "x" * 64, "tiny-fuzz"))
            else:
                fields["model_sha256"] = bytes(16)
    head = _pack_header(fields, minor, extra)
    body = bytearray()
    seg_offsets = []
    for rtype, flags, payload in recs:
        if rtype == ct.REC_SEGMENT:
            seg_offsets.append((len(head) + len(body), payload))
        body += _record(rtype, flags, payload)
    # INDEX: the right one, a forged one, or none; END naming it, or forged; maybe trailing bytes
    index_off = 0
    r = rng.random() * (0.55 if only_adapt else 1)
    if r < 0.75:
        entries = []
        for off, payload in seg_offsets:
            first, n = struct.unpack_from("<II", payload, 4) if len(payload) >= 12 else (0, 0)
            entries.append([off, first, n])
        if r > 0.55 and entries:  # forged entries
            e = rng.choice(entries)
            e[rng.randrange(3)] = rng.choice(U32_LIMITS + (e[0] + 12, e[0] - 1, len(head)))
        count = len(entries) if rng.random() < 0.9 else rng.choice(U32_LIMITS)
        index_off = len(head) + len(body)
        body += _record(ct.REC_INDEX, 0, struct.pack("<I", count & 0xFFFFFFFF) + b"".join(
            struct.pack("<QII", max(0, o) & (2 ** 64 - 1), f & 0xFFFFFFFF, n & 0xFFFFFFFF)
            for o, f, n in entries))
    end_off = index_off if only_adapt or rng.random() < 0.85 else rng.choice(
        (0, 1, len(head), 2 ** 64 - 1, index_off + 1))
    body += _record(ct.REC_END, 1, struct.pack("<Q", end_off))
    r = 1 if only_adapt else rng.random()
    if r < 0.05:
        body += _record(ct.REC_END, 1, struct.pack("<Q", end_off))
    elif r < 0.1:
        body += bytes(rng.randint(1, 30))
    return bytes(head + body)


# ---- one case -------------------------------------------------------------------------------
def _consume(meta, it, recover: bool, header: Optional[ct.Header]) -> None:
    n = 0
    for f in it:
        if f.shape != (meta.height, meta.width, 3) or f.dtype != np.uint8:
            raise AssertionError(f"frame of shape {f.shape} {f.dtype}, header says "
                                 f"{meta.height}x{meta.width}")
        n += 1
        if n >= FRAME_CAP or n * meta.width * meta.height >= PIXEL_CAP:
            return
    if recover and n != meta.frames:
        raise AssertionError(f"recovering decode gave {n} frames, expected {meta.frames}")


def run_case(data: bytes, model) -> Optional[str]:
    """None when every entry point ends in a correct decode or an MGVError; else a report."""
    checks: List[Callable[[], None]] = []

    def decode(recover: bool, frames=None):
        def go():
            reports = []
            meta, it = codec.decompress_from_file(
                io.BytesIO(data), model=model, frames=frames,
                on_damage=reports.append if recover else None,
                audio=audio.AudioSink())
            _consume(meta, it, recover, None)
        return go

    def mux():  # decode with audio into an .mkv (forged audio reaches the muxer)
        import itertools
        import tempfile

        from neuralcodec import video_out as vout

        sink = audio.AudioSink()
        meta, it = codec.decompress_from_file(io.BytesIO(data), model=model,
                                              on_damage=lambda d: None, audio=sink)
        n = max(1, min(FRAME_CAP, PIXEL_CAP // max(1, meta.width * meta.height)))
        with tempfile.TemporaryDirectory() as d:
            vout.write_video(Path(d) / "o.mkv", meta, itertools.islice(it, n), audio=sink,
                            warn=lambda m: None)

    checks += [decode(False), decode(True), decode(True, (1, None)),
               lambda: streaminfo.stream_info(io.BytesIO(data))]
    if ct.RECORD_SYNC + bytes([ct.REC_ADAPT]) in data:
        checks.append(lambda: check_adaptations(data, model))
    if ct.RECORD_SYNC + bytes([ct.REC_AUDIO]) in data:
        checks.append(mux)
    for c in checks:
        try:
            c()
        except MGVError:
            pass
        except CaseTimeout:
            raise
        except Exception:  # noqa: BLE001 - the point of the fuzzer
            return traceback.format_exc(limit=6)
    return None


def check_adaptations(data: bytes, model) -> list:
    """The strict reading of a stream's ADAPT records (spec §8c; the conformance suite's): the
    records before SEGMENT 0 read by the strict reader, ``read_adaptations`` without the model,
    then the model rules (``check_against``; for a record of method 2 the model stands in for
    the variant it names: its decoder tensors come first in its sorted names, as a variant
    file's do) → an MGVError, or the adaptations, which keep their invariants (ranges inside the
    stream, |v| ≤ vmax, exponents in range; re-coded by ``to_payload`` and read back to the same
    integers and variant, for records of at most 64 tensors: the 1024-tensor ones cost a second
    each) and change a copy of the model."""
    rd = ct.Reader(io.BytesIO(data))
    recs = adapt.leading_records(rd)
    h = rd.header
    ads = adapt.read_adaptations(recs, h)
    for a in ads:
        if not 0 <= a.first_segment < a.first_segment + a.segments <= h.segment_count:
            raise AssertionError(f"ADAPT range {a.first_segment}+{a.segments} of {h.segment_count}")
        for t in a.tensors:
            if not (adapt.MIN_EXP <= t.exp <= adapt.MAX_EXP and t.values.dtype == np.int32
                    and (not t.values.size or int(np.abs(t.values).max()) <= t.vmax)):
                raise AssertionError(f"ADAPT tensor {t.index}: exp {t.exp}, vmax {t.vmax}, values "
                                     f"{t.values.dtype} up to {np.abs(t.values).max()}")
        if len(a.tensors) <= 64:
            again = adapt.Adaptation.parse(a.to_payload(), h)
            if (again.decoder_sha256 != a.decoder_sha256
                    or not all(np.array_equal(x.values, y.values) for x, y in zip(again.tensors, a.tensors))):
                raise AssertionError("an ADAPT record re-coded reads back to other integers")
    for a in ads:
        adapt.check_against(a, model)
    if ads:
        adapt.adapted_model(model, ads[0])
    return ads


def _alarm(signum, frame):
    raise CaseTimeout()


class Campaign:
    """The bookkeeping of one fuzz run, shared by the stream and token-file fuzzers: each case
    runs under an alarm of ``timeout_s`` (a hang counts as a failure), failing inputs are
    logged and saved under ``save`` as ``case-<sha256 prefix>.<suffix>``, the slowest case and
    the peak RSS are measured. Use as a context manager (it installs the alarm handler)."""

    def __init__(self, timeout_s: int, save: Optional[Path], suffix: str, log=print) -> None:
        self.timeout_s, self.save, self.suffix, self.log = timeout_s, save, suffix, log
        self.failures = self.timeouts = 0
        self.saved: List[str] = []
        self.slowest = 0.0
        self.t0 = time.perf_counter()
        self.use_alarm = hasattr(signal, "SIGALRM")
        self._old = None

    def __enter__(self) -> "Campaign":
        if self.use_alarm:
            self._old = signal.signal(signal.SIGALRM, _alarm)
        return self

    def __exit__(self, *exc) -> None:
        if self.use_alarm:
            signal.signal(signal.SIGALRM, self._old)

    def run(self, k: int, data: bytes, case: Callable[[], Optional[str]], note: str = "") -> None:
        """Run case ``k`` (``case()`` → None, or a report of what went wrong) on input ``data``."""
        if self.use_alarm:
            signal.alarm(self.timeout_s)
        c0 = time.perf_counter()
        try:
            report = case()
        except CaseTimeout:
            report = f"timeout after {self.timeout_s} s"
            self.timeouts += 1
        finally:
            if self.use_alarm:
                signal.alarm(0)
        self.slowest = max(self.slowest, time.perf_counter() - c0)
        if report is not None:
            self.failures += 1
            name = f"case-{hashlib.sha256(data).hexdigest()[:12]}.{self.suffix}"
            self.log(f"FAIL case {k} ({name}, {len(data)} bytes{note}):\n{report}")
            if self.save is not None:
                self.save.mkdir(parents=True, exist_ok=True)
                (self.save / name).write_bytes(data)
                self.saved.append(name)

    def result(self, cases: int) -> dict:
        """{"cases", "failures", "timeouts", "seconds", "saved", "slowest_s", "peak_rss_mib"}."""
        import resource

        return {"cases": cases, "failures": self.failures, "timeouts": self.timeouts,
                "seconds": time.perf_counter() - self.t0, "saved": self.saved,
                "slowest_s": self.slowest,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def fuzz(cases: int, seed: int = 0, save: Optional[Path] = None, timeout_s: int = 10,
         model=None, seeds: Optional[List[bytes]] = None, log=print, mode: str = "mutate") -> dict:
    """Run ``cases`` cases → {"cases", "failures", "timeouts", "seconds", "saved"}. ``mode``:
    "mutate" (byte-level mutations), "struct" (structure-aware forging, :func:`forge`), "adapt"
    (ADAPT records forged into valid streams) or "mix" (the three in turn)."""
    model = model or tiny_model()
    seeds = seeds or seed_streams(model)
    rng = random.Random(seed)
    with Campaign(timeout_s, save, "mgv", log) as camp:
        for k in range(cases):
            base = rng.choice(seeds)
            kind = ("mutate", "struct", "adapt")[k % 3] if mode == "mix" else mode
            if kind == "struct":
                data = forge(base, rng)
            elif kind == "adapt":
                data = forge(base, rng, only_adapt=True)
            else:
                data = mutate(base, rng) if rng.random() < 0.9 else base[:rng.randrange(len(base))]
            camp.run(k, data, lambda data=data: run_case(data, model))
    return camp.result(cases)


def campaign_parser(doc: str) -> argparse.ArgumentParser:
    """The command-line options every fuzzer here takes (cases, seed, timeout, save, memory)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=int, default=10, help="seconds per case before it counts as a hang")
    ap.add_argument("--save", type=Path, default=None, help="directory for failing inputs")
    ap.add_argument("--max-memory", default="1G",
                    help="MGV_MAX_MEMORY (reads and decodes needing more are refused)")
    return ap


def run_campaign(a: argparse.Namespace, what: str, fuzz_fn) -> int:
    """Run ``fuzz_fn(cases, seed, save, timeout)`` single-threaded under the options of
    :func:`campaign_parser`, print its one-line summary → exit status (1 when a case failed)."""
    import os

    import torch

    os.environ["MGV_MAX_MEMORY"] = a.max_memory
    torch.set_num_threads(1)
    res = fuzz_fn(a.cases, a.seed, a.save, a.timeout)
    print(f"{res['cases']} {what}, {res['failures']} failures "
          f"({res['failures'] - res['timeouts']} tracebacks, {res['timeouts']} hangs over "
          f"{a.timeout} s), {res['seconds']:.1f} s ({res['cases'] / res['seconds']:.1f} cases/s), "
          f"slowest case {res['slowest_s']:.2f} s, peak RSS {res['peak_rss_mib']:.0f} MiB")
    return 1 if res["failures"] else 0


def main(argv=None) -> int:
    ap = campaign_parser(__doc__)
    ap.add_argument("--mode", choices=["mutate", "struct", "adapt", "mix"], default="mutate")
    a = ap.parse_args(argv)
    return run_campaign(a, f"cases ({a.mode})",
                        lambda *args: fuzz(*args, mode=a.mode))


if __name__ == "__main__":
    sys.exit(main())
