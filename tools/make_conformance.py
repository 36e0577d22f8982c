"""Build the ``.mgv`` conformance suite (``tests/conformance``): small valid and invalid
streams, each with its expected outcome, listed in ``bitstream_spec.md`` appendix A.

Every vector is made here from a few lines, deterministically; ``tests/test_conformance.py``
rebuilds them and requires the committed files to be identical, then runs the reference
reader on each (``streaminfo.verify_stream``, plus :func:`read_adapt`: the ADAPT records of
spec §8c read strictly) and the dependency-free decoders on the valid ones. Expected outcomes:
``ok`` (with the frame count and the SHA-256 of the decoded bits of all segments, ``b×t×h×w``
uint8 arrays in segment order; for streams with ADAPT records also the number of adaptations
and the SHA-256 of their decoded integers, :func:`ints_digest`) or the name of the error class
(spec §9) a strict reader MUST report.

    python -m tools.make_conformance [--out tests/conformance]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import struct
import zlib
from fractions import Fraction
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from neuralcodec import adapt
from neuralcodec import container as ct

SHA0 = hashlib.sha256(b"").digest()[:16]


def header(**kw) -> ct.Header:
    d = dict(width=8, height=8, frames=1, fps_num=25, fps_den=1, model_bits=2, bits=2,
             temporal_factor=4, spatial_factor=8, entropy=0, segment_frames=1,
             model_sha256=SHA0, pix_fmt="rgb24", model_name="example")
    d.update(kw)
    return ct.Header(**d)


def head_bytes(h: ct.Header, major: int = 1, minor: int = 1, extra: bytes = b"",
               hlen: int = None, crc_delta: int = 0) -> bytes:
    body = h.pack_fields() + extra
    head = ct.PRELUDE.pack(ct.MAGIC, major, minor, len(body) if hlen is None else hlen) + body
    return head + ct.CRC.pack((zlib.crc32(head) + crc_delta) & 0xFFFFFFFF)


def record(rtype: int, payload: bytes, critical: bool, flags: int = None, crc_delta: int = 0) -> bytes:
    f = (ct.FLAG_CRITICAL if critical else 0) if flags is None else flags
    head = ct.RECORD_HEAD.pack(ct.RECORD_SYNC, rtype, f, 0, len(payload))
    return head + payload + ct.CRC.pack((zlib.crc32(payload, zlib.crc32(head)) + crc_delta) & 0xFFFFFFFF)


class Stream:
    """Bytes of a stream under construction, with the offsets a writer would index."""

    def __init__(self, h: ct.Header, **head_kw) -> None:
        self.h = h
        self.data = bytearray(head_bytes(h, **head_kw))
        self.segs: List[Tuple[int, int, int]] = []

    def add(self, rec: bytes) -> int:
        off = len(self.data)
        self.data += rec
        return off

    def segment(self, seg: ct.Segment, **kw) -> int:
        off = self.add(record(ct.REC_SEGMENT, seg.to_payload(), True, **kw))
        self.segs.append((off, seg.first_frame, seg.frames))
        return off

    def index_payload(self) -> bytes:
        return struct.pack("<I", len(self.segs)) + b"".join(
            ct.INDEX_ENTRY.pack(*e) for e in self.segs)

    def index(self) -> int:
        return self.add(record(ct.REC_INDEX, self.index_payload(), False))

    def end(self, index_offset: int) -> bytes:
        self.add(record(ct.REC_END, ct.END_PAYLOAD.pack(index_offset), True))
        return bytes(self.data)

    def close(self) -> bytes:
        return self.end(self.index())


def seg1(entropy: int = 0, data: bytes = b"\x01", **kw) -> ct.Segment:
    d = dict(index=0, first_frame=0, frames=1, latent_t=1, latent_h=1, latent_w=1)
    d.update(kw)
    return ct.Segment(entropy=entropy, data=data, **d)


def example() -> Stream:
    s = Stream(header())
    s.segment(seg1())
    return s


GOLDEN_1 = bytes.fromhex("e0c178e008c280714c9fb601cc54653553279993c34d8945395e25898bd3699a"
                         "43f20907ae3af9a71f3c8bee301596ca00a47b00")


def golden_vector_2():
    """bitstream_spec.md §7, golden vector 2: an 18×4×6×10 bit array defined by a formula."""
    k, t, y, x = np.meshgrid(*(np.arange(n) for n in (18, 4, 6, 10)), indexing="ij")
    return (((k * k + 3 * y + 5 * x + 7 * ((k * y) % 4)) % 11 < 5)
            ^ ((t >= 1) & ((x + 2 * y + t) % 3 == 0) & ((k + t) % 5 < 2))).astype(np.uint8)


GOLDEN_2_SHA256 = "1ed9b2b70d751d25f57b9cfe1ef04aedd51de8ceede09458c1fe1fd491d2fd36"


def golden_2_payload() -> bytes:
    from neuralcodec.entropy import encode_bits

    data = encode_bits(golden_vector_2())
    if hashlib.sha256(data).hexdigest() != GOLDEN_2_SHA256:  # the format is frozen
        raise SystemExit("golden vector 2 does not code to the bytes of bitstream_spec.md §7")
    return data


def audio_track(track: int = 0) -> bytes:
    t = ct.AudioTrack(track, "pcm_s16le", Fraction(1, 8000), 8000, 1, 0, b"template")
    return t.to_payload()


def audio_packets(track: int = 0) -> bytes:
    return ct.AudioPackets(track, (ct.AudioPacket(0, 0, 80, True, b"\0" * 160),)).to_payload()


# ---- ADAPT records (spec §8c, version 1.3) ------------------------------------------------------
#: The worked example of §11 (version 1.3 variant): tensor 3, step 2^-4, vmax 2, five integers.
EXAMPLE_INTS = np.array([0, 1, -2, 0, 1], np.int32)


def adapt_payload(entries: Sequence[Tuple[int, int, int, np.ndarray]], first: int = 0,
                  segments: int = 1, sha: bytes = SHA0, method: int = 0, reserved: int = 0,
                  n: int = None, counts: Sequence[int] = None, data: bytes = None,
                  decoder: bytes = None) -> bytes:
    """An ADAPT payload packed field by field, so that any field can break a rule: ``entries``
    (tensor index, exponent, vmax, integers) with their coded integers (``data`` replaces
    them; ``counts`` the entries' counts; ``n`` the tensor count; ``decoder``: method 2's
    decoder_sha256, which then follows the head)."""
    counts = [v.size for *_, v in entries] if counts is None else counts
    head = adapt.ADAPT_HEAD.pack(method, reserved, len(entries) if n is None else n, sha, first,
                                 segments)
    if decoder is not None:
        head += adapt.VARIANT_SHA.pack(decoder)
    body = b"".join(adapt.ADAPT_ENTRY.pack(i, e, vm, c) for (i, e, vm, _), c in zip(entries, counts))
    if data is None:
        data = adapt.encode_ints([(v, vm) for _, _, vm, v in entries])
    return head + body + data


def example_adapt(**kw) -> bytes:
    """The ADAPT payload of §11's 1.3 variant (fields replaced by ``kw``, see :func:`adapt_payload`)."""
    return adapt_payload([(3, -4, 2, EXAMPLE_INTS)], **kw)


#: decoder_sha256 of §11's 1.4 variant: the first 16 bytes of SHA-256("example decoder").
EXAMPLE_DECODER = hashlib.sha256(b"example decoder").digest()[:16]


def example_variant_adapt(**kw) -> bytes:
    """The ADAPT payload of §11's 1.4 variant: the 1.3 example as method 2, changing tensor 3 of
    the decoder variant :data:`EXAMPLE_DECODER` (fields replaced by ``kw``)."""
    return example_adapt(**{"method": adapt.METHOD_VARIANT, "decoder": EXAMPLE_DECODER, **kw})


def adapt_stream(payloads: Sequence[bytes], h: ct.Header = None, segments: int = 1,
                 critical: bool = False, minor: int = ct.MINOR_ADAPT) -> Stream:
    """A 1.3 stream: ADAPT records of ``payloads`` before SEGMENT 0, then ``segments`` one-frame
    raw segments (the §11 example's for one)."""
    if h is None:
        h = header() if segments == 1 else header(frames=segments, temporal_factor=1)
    s = Stream(h, minor=minor)
    for p in payloads:
        s.add(record(ct.REC_ADAPT, p, critical))
    for i in range(segments):
        s.segment(seg1(index=i, first_frame=i, data=bytes([1 + i % 3])))
    return s


def read_adapt(data: bytes) -> List[adapt.Adaptation]:
    """The strict reading of a stream's ADAPT records without a model (spec §8c): the records
    before its first SEGMENT (read and order-checked by the strict reader), each parsed and
    checked against the header, then their ranges → the adaptations in record order, methods
    this reader does not know left out → the first StreamError."""
    rd = ct.Reader(io.BytesIO(data))
    return adapt.read_adaptations(adapt.leading_records(rd), rd.header)


def ints_digest(ads: Sequence[adapt.Adaptation]) -> str:
    """SHA-256 of the decoded integers of ``ads``: every tensor of every adaptation in order,
    each integer as an int32, little-endian (appendix A)."""
    d = hashlib.sha256()
    for ad in ads:
        for t in ad.tensors:
            d.update(np.asarray(t.values, "<i4").tobytes())
    return d.hexdigest()


def at_caps_ints() -> np.ndarray:
    """2^20 integers in -7..7, mostly 0 (a record exactly at both caps of §8c)."""
    i = np.arange(1 << 20)
    return np.where(i % 4099 == 0, (i // 4099) % 15 - 7, 0).astype(np.int32)


def two_tensor_ints() -> Tuple[np.ndarray, np.ndarray]:
    """A tensor of 16 zeros (vmax 0: nothing coded) and one of 40 integers reaching ±255."""
    i = np.arange(40)
    return np.zeros(16, np.int32), np.where(i % 13 == 0, 255 * (1 - 2 * (i % 2)),
                                            (i * i) % 9 - 4).astype(np.int32)


def vectors() -> Dict[str, Tuple[bytes, str, str]]:
    """name → (bytes, expected outcome, what it tests)."""
    v: Dict[str, Tuple[bytes, str, str]] = {}

    def add(name, data, outcome, why):
        v[name] = (bytes(data), outcome, why)

    # ---- valid ----------------------------------------------------------------------------
    add("valid/example.mgv", example().close(), "ok", "the worked example of §11")
    g = Stream(header(width=64, height=48, frames=9, model_bits=4, bits=4, entropy=1,
                      segment_frames=9))
    g.segment(ct.Segment(0, 0, 9, 3, 6, 8, ct.ENTROPY_CONTEXT, GOLDEN_1))
    add("valid/mode1_golden.mgv", g.close(), "ok", "golden vector 1 of §7 as a mode-1 segment")
    s = Stream(header(frames=3, model_bits=3, bits=2, temporal_factor=1, segment_frames=1))
    for i in range(3):
        s.segment(seg1(index=i, first_frame=i, data=bytes([i + 1])))
    add("valid/three_segments_b_lt_k.mgv", s.close(), "ok", "3 segments, bits 2 of model_bits 3")
    s = example()
    add("valid/no_index.mgv", s.end(0), "ok", "no INDEX; END holds 0")
    s = Stream(header(), minor=2)
    s.segment(seg1(bits=1))
    add("valid/segment_bits_1_2.mgv", s.close(), "ok",
        "1.2: a segment storing b_i = 1 of the header's 2 bits (the §11 variant)")
    s = Stream(header())
    s.add(record(ct.REC_AUDIO, audio_track(), False))
    s.segment(seg1())
    s.add(record(ct.REC_AUDIO, audio_packets(), False))
    s.add(record(7, b"future", False))
    add("valid/audio_and_unknown_record.mgv", s.close(), "ok",
        "AUDIO track + packets, and an unknown non-critical type 7 (skipped)")
    s = Stream(header())
    s.add(record(ct.REC_AUDIO, bytes([9, 0]) + b"a later kind", False))
    s.segment(seg1())
    add("valid/audio_unknown_kind.mgv", s.close(), "ok", "an AUDIO kind of a later minor (skipped)")
    s = Stream(header(), minor=7, extra=b"\x07\x07")
    s.segment(seg1())
    add("valid/newer_minor_extra_header.mgv", s.close(), "ok",
        "minor 7 with 2 header bytes this reader does not know (skipped)")
    s = Stream(header())
    s.segment(seg1())
    s.add(record(ct.REC_AUDIO, audio_track(), False))  # audio after the last segment
    add("valid/audio_after_last_segment.mgv", s.close(), "ok", "AUDIO between the last SEGMENT and INDEX")

    g = Stream(header(width=80, height=48, frames=13, model_bits=18, bits=18, entropy=1,
                      segment_frames=13))
    g.segment(ct.Segment(0, 0, 13, 4, 6, 10, ct.ENTROPY_CONTEXT, golden_2_payload()))
    add("valid/mode1_golden2.mgv", g.close(), "ok", "golden vector 2 of §7 as a mode-1 segment")
    s = Stream(header())
    s.add(record(ct.REC_AUDIO, bytes([9, 200]) + b"a later kind", False))
    s.add(record(ct.REC_AUDIO, bytes([9]), False))
    s.segment(seg1())
    add("valid/audio_unknown_kind_any_track.mgv", s.close(), "ok",
        "AUDIO kinds of a later minor with track bytes 200 and none: skipped unread (§8a)")
    s = Stream(header())
    s.segment(seg1(), flags=0)
    idx = s.add(record(ct.REC_INDEX, s.index_payload(), True))
    s.add(record(ct.REC_END, ct.END_PAYLOAD.pack(idx), False))
    add("valid/critical_flags_ignored.mgv", s.data, "ok",
        "SEGMENT and END without CRITICAL, INDEX with it: a reader ignores the flag of a known type (§4)")

    # ---- invalid --------------------------------------------------------------------------
    good = example().close()
    add("invalid/bad_magic.mgv", b"\x89MGX" + good[4:], "BadMagic", "magic")
    add("invalid/major_2.mgv", head_bytes(header(), major=2) + good[78:], "UnsupportedVersion",
        "major version 2")
    add("invalid/header_crc.mgv", head_bytes(header(), crc_delta=1) + good[78:], "CRCMismatch",
        "header CRC")
    add("invalid/header_len_4097.mgv", ct.PRELUDE.pack(ct.MAGIC, 1, 1, 4097), "HeaderError",
        "header_len over the cap (refused before reading it)")
    body = bytearray(header().pack_fields())
    struct.pack_into("<I", body, 8, 1001)  # fps 1001/1
    head = ct.PRELUDE.pack(ct.MAGIC, 1, 1, len(body)) + body
    add("invalid/fps_1001.mgv", head + ct.CRC.pack(zlib.crc32(head)) + good[78:], "HeaderError",
        "fps above 1000")
    add("invalid/extra_header_bytes_minor_1.mgv",
        head_bytes(header(), extra=b"\0") + good[78:], "HeaderError",
        "bytes after the fields of a minor this reader knows")
    add("invalid/bytes_after_end.mgv", good + b"\0", "RecordError", "a byte after END")
    add("invalid/second_end.mgv", good + good[-24:], "RecordError", "a second END")
    s = example()
    s.index()
    add("invalid/two_index.mgv", s.close(), "RecordError", "two INDEX records")
    s = Stream(header(frames=2, temporal_factor=1, segment_frames=1))
    s.segment(seg1())
    idx = s.index()
    s.segment(seg1(index=1, first_frame=1))
    add("invalid/index_before_last_segment.mgv", s.end(idx), "RecordError",
        "INDEX before the last SEGMENT")
    s = example()
    idx = s.index()
    s.add(record(ct.REC_AUDIO, audio_track(), False))
    add("invalid/record_between_index_and_end.mgv", s.end(idx), "RecordError",
        "an AUDIO record between INDEX and END")
    s = example()
    s.add(record(0, b"", False))
    add("invalid/record_type_0.mgv", s.close(), "RecordError", "record type 0")
    s = example()
    s.add(record(0, b"", True))
    add("invalid/record_type_0_critical.mgv", s.close(), "RecordError",
        "record type 0 with the CRITICAL flag (invalid, not an unknown type)")
    s = example()
    s.add(record(7, b"future", True))
    add("invalid/unknown_critical.mgv", s.close(), "UnsupportedVersion", "unknown critical type 7")
    s = Stream(header())
    s.segment(seg1(entropy=2))
    add("invalid/entropy_mode_2.mgv", s.close(), "UnsupportedVersion", "unknown entropy mode 2")
    add("invalid/cut_before_end.mgv", good[:-24], "Truncated", "no END")
    s = Stream(header(frames=2, temporal_factor=1, segment_frames=1))
    s.segment(seg1())
    add("invalid/missing_segment.mgv", s.close(), "Truncated", "END with 1 of 2 segments")
    s = Stream(header())
    s.segment(seg1(), crc_delta=1)
    add("invalid/record_crc.mgv", s.close(), "CRCMismatch", "SEGMENT CRC")
    s = Stream(header())
    s.segment(seg1(), flags=3)
    add("invalid/record_flag_bits.mgv", s.close(), "RecordError", "reserved record flag bit set")
    s = Stream(header(), minor=2)
    s.segment(seg1(bits=3))
    add("invalid/segment_bits_over_header.mgv", s.close(), "RecordError",
        "1.2: a segment claiming 3 bits per token under a header of 2")
    s = Stream(header())
    s.segment(seg1(data=b"\x01\x00"))
    add("invalid/raw_length.mgv", s.close(), "RecordError", "mode-0 data longer than R(t)")
    s = example()
    add("invalid/end_offset.mgv", s.end(0x4E), "RecordError",
        "END names the SEGMENT, not the INDEX")
    # INDEX pointing into a non-critical record that holds a valid-looking SEGMENT record
    s = Stream(header())
    s.segment(seg1())
    fake = record(ct.REC_SEGMENT, seg1(data=b"\x02").to_payload(), True)
    off = s.add(record(9, fake, False))
    s.segs = [(off + 12, 0, 1)]
    add("invalid/index_into_record.mgv", s.close(), "RecordError",
        "INDEX names a SEGMENT hidden in a non-critical record")
    bad = bytearray(GOLDEN_1)
    bad[-5] ^= 0x10
    g = Stream(header(width=64, height=48, frames=9, model_bits=4, bits=4, entropy=1,
                      segment_frames=9))
    g.segment(ct.Segment(0, 0, 9, 3, 6, 8, ct.ENTROPY_CONTEXT, bytes(bad)))
    add("invalid/mode1_check_bits.mgv", g.close(), "PayloadError",
        "golden vector 1 with a flipped bit: the 16 check bits fail")
    g = Stream(header(width=64, height=48, frames=9, model_bits=4, bits=4, entropy=1,
                      segment_frames=9))
    g.segment(ct.Segment(0, 0, 9, 3, 6, 8, ct.ENTROPY_CONTEXT, GOLDEN_1[:-2]))
    add("invalid/mode1_length.mgv", g.close(), "PayloadError",
        "a mode-1 payload whose length is not a multiple of 4")
    s = Stream(header())
    s.add(record(ct.REC_AUDIO, bytes([1, 0, 5, 0, 0, 0]), False))
    s.segment(seg1())
    add("invalid/audio_count.mgv", s.close(), "RecordError",
        "AUDIO packets record claiming more packets than it holds")
    s = Stream(header(frames=2, temporal_factor=1, segment_frames=1))
    s.segment(seg1())
    idx = s.add(record(ct.REC_INDEX, s.index_payload(), False))  # count 1 of S = 2
    add("invalid/index_before_all_segments.mgv", s.end(idx), "Truncated",
        "INDEX (count 1) met after 1 of 2 segments, then END: truncated, its count unchecked (§4, §8)")
    s = example()
    idx = s.index()
    s.add(record(7, b"future", True))
    add("invalid/unknown_critical_after_index.mgv", s.end(idx), "UnsupportedVersion",
        "an unknown critical type between INDEX and END: the type rule comes first (§4)")
    head = ct.PRELUDE.pack(ct.MAGIC, 1, 1, 0)
    add("invalid/header_len_0.mgv", head + ct.CRC.pack(zlib.crc32(head)) + good[78:], "HeaderError",
        "header_len 0 with a valid CRC: the fields are checked after the CRC (§2)")
    add("invalid/header_len_0_crc.mgv", head + ct.CRC.pack(zlib.crc32(head) ^ 1) + good[78:],
        "CRCMismatch", "header_len 0 with a bad CRC: the CRC is checked first (§2)")
    body = bytearray(header(width=64, height=64, model_bits=32, bits=32, temporal_factor=1,
                            spatial_factor=1).pack_fields())
    struct.pack_into("<I", body, 24, 65537)  # segment_frames: a full segment of 1 GiB raw
    head = ct.PRELUDE.pack(ct.MAGIC, 1, 1, len(body)) + body
    add("invalid/full_segment_cap.mgv", head + ct.CRC.pack(zlib.crc32(head)) + good[78:],
        "HeaderError", "1 frame, but a full segment (segment_frames frames) would exceed the "
        "record cap (§2)")
    s = Stream(header())
    s.segment(seg1(entropy=1, data=b""))
    add("invalid/mode1_empty.mgv", s.close(), "RecordError",
        "a 0-byte mode-1 payload: §5's length rule, before any decoding (§7)")
    adapt_vectors(add, good)
    return v


def adapt_vectors(add, good: bytes) -> None:
    """The vectors of version 1.3's ADAPT records (spec §8c)."""
    ex = EXAMPLE_INTS
    add("valid/adapt.mgv", adapt_stream([example_adapt()]).close(), "ok",
        "1.3: §11's example with the ADAPT record of its 1.3 variant before SEGMENT 0")
    add("valid/adapt_unknown_method.mgv",
        adapt_stream([bytes([1, 0xFF]) + b"a later method"]).close(), "ok",
        "an ADAPT record of method 1 (unassigned; a later minor's): skipped unread (§8c)")
    z, big = two_tensor_ints()
    add("valid/adapt_two_records.mgv",
        adapt_stream([example_adapt(), adapt_payload([(0, 0, 0, z), (7, -64, 255, big)], first=1,
                                                     segments=2)], segments=3).close(), "ok",
        "two ADAPT records with adjacent ranges (0+1, 1+2); a vmax-0 tensor (nothing coded), "
        "vmax 255, exponents 0 and -64")
    add("valid/adapt_at_caps.mgv", adapt_stream([adapt_payload([(5, -8, 7, at_caps_ints())])]).close(),
        "ok", "an ADAPT record exactly at both caps: Σ count = 2^20, Σ count·(vmax + 1) = 2^23")
    add("valid/adapt_critical_flag.mgv", adapt_stream([example_adapt()], critical=True).close(), "ok",
        "an ADAPT record with CRITICAL set: read as ADAPT, the flag of a known type is ignored (§4)")
    s = Stream(header(), minor=ct.MINOR_ADAPT)
    s.add(record(ct.REC_AUDIO, audio_track(), False))
    s.add(record(ct.REC_ADAPT, example_adapt(), False))
    s.segment(seg1())
    s.add(record(ct.REC_AUDIO, audio_packets(), False))
    add("valid/adapt_after_audio_track.mgv", s.close(), "ok",
        "the reference encoder's layout: AUDIO track, ADAPT, SEGMENT 0, AUDIO packets")

    ok = adapt_stream([example_adapt()]).close()
    add("invalid/adapt_truncated.mgv", ok[:78 + 12 + 20], "Truncated", "the file ends inside an ADAPT record")
    s = Stream(header(), minor=ct.MINOR_ADAPT)
    s.add(record(ct.REC_ADAPT, example_adapt(), False, crc_delta=1))
    s.segment(seg1())
    add("invalid/adapt_crc.mgv", s.close(), "CRCMismatch", "ADAPT record CRC")
    s = Stream(header(), minor=ct.MINOR_ADAPT)
    s.segment(seg1())
    s.add(record(ct.REC_ADAPT, example_adapt(), False))
    add("invalid/adapt_after_segment.mgv", s.close(), "RecordError",
        "a valid ADAPT record after SEGMENT 0 (§4 order)")
    add("invalid/adapt_overlap.mgv",
        adapt_stream([example_adapt(segments=2), example_adapt(first=1, segments=2)], segments=3).close(),
        "RecordError", "two ADAPT records whose ranges (0+2, 1+2) overlap at segment 1")
    data = bytearray(adapt.encode_ints([(ex, 2)]))
    data[1] ^= 0x01
    add("invalid/adapt_check_bits.mgv", adapt_stream([example_adapt(data=bytes(data))]).close(),
        "PayloadError", "the 1.3 example with a flipped data bit: the 16 check bits fail")
    add("invalid/adapt_bad_exponent.mgv", adapt_stream([adapt_payload([(3, 1, 2, ex)])]).close(),
        "RecordError", "exponent e = 1, outside -64..0")
    zeros = [(3, 0, 0, np.zeros(1 << 20, np.int32)), (4, 0, 0, np.zeros(1, np.int32))]
    add("invalid/adapt_over_cap.mgv", adapt_stream([adapt_payload(zeros)]).close(), "RecordError",
        "Σ count = 2^20 + 1 (vmax 0: nothing else coded)")
    add("invalid/adapt_over_work_cap.mgv",
        adapt_stream([adapt_payload([(3, 0, 128, np.zeros(1 << 16, np.int32))])]).close(), "RecordError",
        "Σ count·(vmax + 1) = 2^16·129, over 2^23 (Σ count within its cap)")
    add("invalid/adapt_cap_before_data.mgv", adapt_stream([adapt_payload(zeros, data=b"\0\0\0")]).close(),
        "RecordError", "over the Σ count cap with 3 bytes of data: the caps are checked before the data")
    add("invalid/adapt_wrong_model.mgv",
        adapt_stream([example_adapt(sha=hashlib.sha256(b"another model").digest()[:16])]).close(),
        "RecordError", "ADAPT model_sha256 differs from the header's")
    add("invalid/adapt_empty.mgv", adapt_stream([b""]).close(), "RecordError", "an empty ADAPT payload")
    add("invalid/adapt_short_head.mgv", adapt_stream([example_adapt()[:27]]).close(), "RecordError",
        "an ADAPT payload of method 0 shorter than its 28-byte head")
    add("invalid/adapt_short_entries.mgv", adapt_stream([example_adapt(n=2)]).close(), "RecordError",
        "n = 2 tensors, but the payload holds 1 entry and 4 bytes of data")
    add("invalid/adapt_reserved.mgv", adapt_stream([example_adapt(reserved=1)]).close(), "RecordError",
        "ADAPT reserved byte 1")
    add("invalid/adapt_zero_tensors.mgv",
        adapt_stream([adapt_payload([], n=0, data=adapt.encode_ints([]))]).close(), "RecordError",
        "n = 0 tensors")
    add("invalid/adapt_segment_range.mgv", adapt_stream([example_adapt(segments=2)]).close(),
        "RecordError", "an ADAPT range (0+2) past the stream's 1 segment")
    add("invalid/adapt_index_order.mgv", adapt_stream([adapt_payload([(3, -4, 2, ex)] * 2)]).close(),
        "RecordError", "tensor indices not strictly increasing (3, 3)")
    add("invalid/adapt_count_0.mgv", adapt_stream([example_adapt(counts=[0])]).close(), "RecordError",
        "a tensor entry with count 0")
    add("invalid/adapt_data_length.mgv",
        adapt_stream([example_adapt(data=adapt.encode_ints([(ex, 2)]) + b"\0\0")]).close(), "PayloadError",
        "ADAPT coded data of 6 bytes (not a multiple of 4)")
    add("invalid/adapt_no_data.mgv", adapt_stream([example_adapt(data=b"")]).close(), "PayloadError",
        "ADAPT coded data of 0 bytes")
    add("invalid/extra_header_bytes_minor_3.mgv",
        head_bytes(header(), minor=ct.MINOR_ADAPT, extra=b"\0") + good[78:], "HeaderError",
        "1.3 has 1.2's header: bytes after its fields are refused")
    variant_vectors(add, good)


def variant_vectors(add, good: bytes) -> None:
    """The vectors of version 1.4's ADAPT records of method 2 (a decoder variant's change, §8c)."""
    v4 = ct.MINOR_ADAPT_VARIANT
    add("valid/adapt_variant.mgv", adapt_stream([example_variant_adapt()], minor=v4).close(), "ok",
        "1.4: §11's 1.4 variant, an ADAPT record of method 2 (decoder_sha256 at offset 28)")
    add("valid/adapt_variant_and_own.mgv",
        adapt_stream([example_adapt(), example_variant_adapt(first=1, segments=2)], segments=3,
                     minor=v4).close(), "ok",
        "a method-0 record for segment 0 and a method-2 record for segments 1-2")
    add("valid/adapt_variant_in_minor_3.mgv", adapt_stream([example_variant_adapt()]).close(), "ok",
        "a method-2 record in a stream marked 1.3: read as method 2 (ADAPT records are read in "
        "streams of every minor)")
    add("invalid/adapt_variant_short_head.mgv",
        adapt_stream([example_variant_adapt()[:43]], minor=v4).close(), "RecordError",
        "an ADAPT payload of method 2 shorter than its 44-byte head")
    add("invalid/adapt_variant_short_entries.mgv",
        adapt_stream([example_variant_adapt(n=2)], minor=v4).close(), "RecordError",
        "method 2, n = 2 tensors, but the payload holds 1 entry and 4 bytes of data")
    add("invalid/adapt_variant_wrong_model.mgv",
        adapt_stream([example_variant_adapt(sha=hashlib.sha256(b"another model").digest()[:16])],
                     minor=v4).close(), "RecordError",
        "method 2 whose model_sha256 differs from the header's")
    zeros = [(3, 0, 0, np.zeros(1 << 20, np.int32)), (4, 0, 0, np.zeros(1, np.int32))]
    add("invalid/adapt_variant_over_cap.mgv",
        adapt_stream([adapt_payload(zeros, method=adapt.METHOD_VARIANT, decoder=EXAMPLE_DECODER)],
                     minor=v4).close(), "RecordError", "method 2 with Σ count = 2^20 + 1")
    add("invalid/adapt_variant_overlap.mgv",
        adapt_stream([example_adapt(segments=2), example_variant_adapt(first=1, segments=2)],
                     segments=3, minor=v4).close(), "RecordError",
        "a method-0 and a method-2 record whose ranges (0+2, 1+2) overlap")
    data = bytearray(adapt.encode_ints([(EXAMPLE_INTS, 2)]))
    data[1] ^= 0x01
    add("invalid/adapt_variant_check_bits.mgv",
        adapt_stream([example_variant_adapt(data=bytes(data))], minor=v4).close(), "PayloadError",
        "the 1.4 example with a flipped data bit: the 16 check bits fail")
    s = Stream(header(), minor=v4)
    s.add(record(ct.REC_ADAPT, example_variant_adapt(), False, crc_delta=1))
    s.segment(seg1())
    add("invalid/adapt_variant_crc.mgv", s.close(), "CRCMismatch", "a method-2 ADAPT record's CRC")
    ok = adapt_stream([example_variant_adapt()], minor=v4).close()
    add("invalid/adapt_variant_truncated.mgv", ok[:78 + 12 + 40], "Truncated",
        "the file ends inside a method-2 ADAPT record")
    add("invalid/extra_header_bytes_minor_4.mgv",
        head_bytes(header(), minor=v4, extra=b"\0") + good[78:], "HeaderError",
        "1.4 has 1.3's header: bytes after its fields are refused")


def build(out: Path) -> Dict[str, Tuple[bytes, str, str]]:
    """Write every vector and ``expected.json`` under ``out``; return the vectors."""
    from neuralcodec import streaminfo

    v = vectors()
    table = []
    for name, (data, outcome, why) in sorted(v.items()):
        p = out / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        row = {"file": name, "outcome": outcome, "tests": why}
        if outcome == "ok":
            r = streaminfo.verify_stream(io.BytesIO(data))
            row.update(frames=r.frames, bits_sha256=r.bits_sha256)
            if any(rec.type == ct.REC_ADAPT for rec in ct.Reader(io.BytesIO(data)).records()):
                ads = read_adapt(data)
                row.update(adaptations=len(ads), ints_sha256=ints_digest(ads))
        table.append(row)
    (out / "expected.json").write_text(json.dumps({"vectors": table}, indent=1) + "\n")
    return v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests" / "conformance"))
    a = ap.parse_args()
    v = build(Path(a.out))
    print(f"{len(v)} vectors written to {a.out}")


if __name__ == "__main__":
    main()
