"""Mutation fuzzer of the ``.mgv`` reader and decoder.

Seeds are real streams made with the tiny model (raw and context-coded segments, AUDIO records,
one-frame and multi-segment streams). Each case mutates one seed (bit flips, random bytes,
interesting 32-bit values in record fields, inserted / deleted / duplicated ranges, truncation),
optionally re-computes the header and record CRCs so the mutation reaches the checks behind
them, and then runs every entry point on it: strict decode, recovering decode, a frame-range
decode and ``streaminfo.stream_info``. A case passes when each one ends in a correct decode (frames of the
header's size, and with recovery exactly the header's frame count) or an
:class:`neuralcodec.errors.MGVError`; any other exception or a case running past its time limit
fails, and its input is saved to the corpus directory.

``--mode struct`` is structure-aware: it parses a seed into its header and records, forges
header fields and record contents at their limits (sizes, counts, offsets, time bases,
timestamps, record types and flags, INDEX / END offsets, segments consistent with a forged
header), and writes every header and record with a valid CRC, so each case reaches the checks
behind the framing. ``--mode mix`` alternates both.

    python -m tools.fuzz_mgv --cases 10000 [--mode struct] [--seed 0] [--save tests/fuzz_corpus]

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
from typing import Callable, List, Optional

import numpy as np

from neuralcodec import audio, codec, streaminfo
from neuralcodec import container as ct
from neuralcodec.errors import MGVError

FRAME_CAP = 300  # frames consumed per decode (a header may validly announce 2^24)
PIXEL_CAP = 1 << 20  # pixels consumed per decode (a forged header may announce 33 Mpx frames)
INTERESTING32 = (0, 1, 2, 3, 0x7F, 0xFF, 0x100, 0xFFFF, 0x10000, 1 << 24, 1 << 28, (1 << 28) + 1,
                 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)


class CaseTimeout(Exception):
    """A case ran past its time limit (a hang)."""


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
    return [s1, s2, s3, s4, _real_audio_stream(model)]


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
            j = (rng.choice(offs) + rng.choice((4, 8, 12, 16, 20, 24, 28))) if offs and rng.random() < 0.7 else i
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
    "height": (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 63, 64, 1023, 1024, 2047, 4096, 8191, 8192, 8193, 0, 65535),
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
            data = bytes(rng.getrandbits(8) for _ in range(4 * words)) if rng.random() < 0.5 else bytes(4 * words)
            mode = 1
            if len(data) > raw:
                mode, data = 0, bytes(raw)
        out.append((ct.REC_SEGMENT, 1, ct.Segment(i, first, n, t, lh, lw, mode, data).to_payload()))
    return out


def _forge_audio(rng: random.Random) -> bytes:
    if rng.random() < 0.5:  # a track description with fields at their limits
        codec_name = rng.choice((b"aac", b"pcm_s16le", b"x" * 32, b"flac"))
        tmpl = rng.choice((b"", b"\x1aE\xdf\xa3template", bytes(rng.getrandbits(8) for _ in range(40))))
        return (bytes([ct.AUDIO_TRACK, rng.choice((0, 1, 15, 16, 255))]) + bytes([len(codec_name)]) + codec_name
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
            pk[i] = dataclasses.replace(pk[i], duration=rng.choice(U32_LIMITS), data=pk[i].data[:rng.choice((0, 1))])
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


def forge(seed: bytes, rng: random.Random) -> bytes:
    """One structure-aware case built from ``seed``: header fields and records forged at their
    limits, every header and record with a valid CRC, INDEX / END made consistent or forged."""
    fields, minor, recs = _parse_seed(seed)
    recs = [r for r in recs if r[0] not in (ct.REC_INDEX, ct.REC_END)]
    extra = b""
    has_audio = any(r[0] == ct.REC_AUDIO for r in recs)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(13)
        if op == 10 or (op == 11 and has_audio):
            op = 4  # audio forging is worth more cases where there is real audio
        if op == 12:  # a valid header of huge frames or a long segment, with matching segments
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
                recs = [r for r in recs if r[0] != ct.REC_SEGMENT] + segs if rng.random() < 0.5 else segs + recs
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
            recs.insert(rng.randint(0, len(recs)), (rng.choice((0, 4, 7, 14, 16, 255)),
                                                    rng.choice((0, 1, 2, 0x80)),
                                                    bytes(rng.getrandbits(8) for _ in range(rng.choice((0, 8, 40))))))
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
    r = rng.random()
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
    end_off = index_off if rng.random() < 0.85 else rng.choice((0, 1, len(head), 2 ** 64 - 1, index_off + 1))
    body += _record(ct.REC_END, 1, struct.pack("<Q", end_off))
    r = rng.random()
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
    "mutate" (byte-level mutations), "struct" (structure-aware forging, :func:`forge`) or
    "mix" (alternating)."""
    model = model or tiny_model()
    seeds = seeds or seed_streams(model)
    rng = random.Random(seed)
    with Campaign(timeout_s, save, "mgv", log) as camp:
        for k in range(cases):
            base = rng.choice(seeds)
            if mode == "struct" or (mode == "mix" and k % 2):
                data = forge(base, rng)
            else:
                data = mutate(base, rng) if rng.random() < 0.9 else base[:rng.randrange(len(base))]
            camp.run(k, data, lambda: run_case(data, model))
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
    ap.add_argument("--mode", choices=["mutate", "struct", "mix"], default="mutate")
    a = ap.parse_args(argv)
    return run_campaign(a, f"cases ({a.mode})",
                        lambda *args: fuzz(*args, mode=a.mode))


if __name__ == "__main__":
    sys.exit(main())
