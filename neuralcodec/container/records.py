"""The records of a ``.mgv`` stream (spec §4-§8): SEGMENT (:class:`Segment`), INDEX
(:class:`IndexEntry`), END, their order (:class:`RecordOrder`), and the :class:`Writer` that
appends them."""
from __future__ import annotations

import dataclasses
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO, List, Optional

from ..errors import HeaderError, RecordError, StreamError, UnsupportedVersion
from .header import (CRC, END_PAYLOAD, ENTROPY_CONTEXT, ENTROPY_NONE, FLAG_CRITICAL, INDEX_ENTRY,
                     MAX_FRAMES, MAX_RECORD_PAYLOAD, MINOR, MINOR_ADAPT, MINOR_ADAPT_VARIANT,
                     MINOR_SEGMENT_BITS,
                     RECORD_HEAD, RECORD_SYNC, REC_ADAPT, REC_END, REC_INDEX, REC_SEGMENT,
                     SEGMENT_HEAD, Header)

__all__ = ["Record", "Segment", "IndexEntry", "RecordOrder", "Damage", "parse_end", "parse_index",
           "record_size", "Writer"]


@dataclass(frozen=True)
class Record:
    """A record as read: type, flags, file offset of its sync word, payload bytes."""

    type: int
    flags: int
    offset: int
    payload: bytes

    @property
    def size(self) -> int:
        return record_size(len(self.payload))


def record_size(payload: int) -> int:
    """Bytes in the stream of a record with a ``payload``-byte payload (head, payload, CRC)."""
    return RECORD_HEAD.size + payload + CRC.size


@dataclass(frozen=True)
class Segment:
    """One independently decodable segment.

    ``data`` holds the LFQ bits of :meth:`stored_bits` channels × ``latent_t`` × h × w
    tokens, coded with ``entropy`` (0: raw packed, spec §6; 1: context coder, spec §7).
    """

    index: int  # segment number, 0-based
    first_frame: int  # number of its first frame in the stream
    frames: int  # frames it covers
    latent_t: int  # latent frames: 1 + ceil((frames - 1) / f)
    latent_h: int  # token rows
    latent_w: int  # token columns
    entropy: int  # payload coding: ENTROPY_NONE or ENTROPY_CONTEXT
    data: bytes  # the coded bits
    bits: int = 0  # bits per token stored in this segment, 1..header.bits (version 1.2);
    # 0: the header's bits (every 1.0 / 1.1 segment)

    def stored_bits(self, header: Header) -> int:
        """Bits per token this segment stores: its own count, or the header's."""
        return self.bits or header.bits

    def to_payload(self) -> bytes:
        return SEGMENT_HEAD.pack(self.index, self.first_frame, self.frames, self.latent_t,
                                 self.latent_h, self.latent_w, self.entropy, self.bits) + self.data

    def check(self, header: Header, expected_index: Optional[int] = None) -> None:
        """Check the segment against the header → :class:`RecordError`."""
        if expected_index is not None and self.index != expected_index:
            raise RecordError(f"segment {self.index} found where segment {expected_index} belongs")
        if self.index >= header.segment_count:
            raise RecordError(f"segment index {self.index} >= segment count {header.segment_count}")
        first, frames = header.segment_bounds(self.index)
        if (self.first_frame, self.frames) != (first, frames):
            raise RecordError(f"segment {self.index} covers frames {self.first_frame}+{self.frames},"
                              f" header implies {first}+{frames}")
        shape = (header.latent_frames(frames),) + header.latent_hw
        if (self.latent_t, self.latent_h, self.latent_w) != shape:
            raise RecordError(f"segment {self.index} latent shape "
                              f"{(self.latent_t, self.latent_h, self.latent_w)} != {shape}")
        if self.bits > header.bits:
            raise RecordError(f"segment {self.index} stores {self.bits} bits per token, more than "
                              f"the header's {header.bits}")
        raw = header.raw_bytes(self.latent_t, self.stored_bits(header))
        if self.entropy == ENTROPY_NONE:
            if len(self.data) != raw:
                raise RecordError(f"segment {self.index}: raw payload of {len(self.data)} bytes,"
                                  f" expected {raw}")
        elif self.entropy == ENTROPY_CONTEXT:
            if not 1 <= len(self.data) <= raw:
                raise RecordError(f"segment {self.index}: context payload of {len(self.data)} "
                                  f"bytes outside 1..{raw}")
        else:  # a mode from a later version: this reader cannot decode it (spec §5)
            raise UnsupportedVersion(f"segment {self.index}: unknown entropy mode {self.entropy}")

    @classmethod
    def parse(cls, payload: bytes) -> "Segment":
        if len(payload) < SEGMENT_HEAD.size:
            raise RecordError(f"SEGMENT payload of {len(payload)} bytes is too short")
        idx, first, n, t, h, w, mode, bits = SEGMENT_HEAD.unpack_from(payload)
        return cls(idx, first, n, t, h, w, mode, bytes(payload[SEGMENT_HEAD.size:]), bits)


@dataclass(frozen=True)
class IndexEntry:
    """INDEX entry: file offset of a SEGMENT record and the frames it covers."""

    offset: int
    first_frame: int
    frames: int


class RecordOrder:
    """Spec §4 record order, checked record by record: no type 0; SEGMENTs, then at most one
    INDEX (after the last SEGMENT, its entries naming the SEGMENT records seen), then END,
    whose offset names that INDEX (0 when there is none). :meth:`check` raises
    :class:`RecordError`; call :meth:`segment` for each SEGMENT accepted."""

    def __init__(self, header: Header, records_offset: int) -> None:
        self.header = header
        self.records_offset = records_offset
        self.segment_offsets: List[int] = []
        self.index_offset: Optional[int] = None
        self.complete = True  # False once a caller lost a segment (recovery: skip INDEX checks)

    def check(self, rec: Record) -> None:
        if rec.type == 0:
            raise RecordError(f"record type 0 (invalid) at offset {rec.offset}")
        if self.index_offset is not None and rec.type not in (REC_END, REC_INDEX, REC_SEGMENT):
            raise RecordError(f"a record of type {rec.type} between the INDEX and END")
        if rec.type == REC_ADAPT and (self.segment_offsets or not self.complete):
            raise RecordError(f"ADAPT record after a SEGMENT (or after damage) at offset {rec.offset}")
        if rec.type == REC_SEGMENT:
            if self.index_offset is not None:
                raise RecordError(f"SEGMENT after the INDEX at offset {rec.offset}")
            self.segment_offsets.append(rec.offset)
        elif rec.type == REC_INDEX:
            if self.index_offset is not None:
                raise RecordError(f"a second INDEX at offset {rec.offset}")
            self.index_offset = rec.offset
            if not self.complete:
                return
            if len(self.segment_offsets) < self.header.segment_count:
                return  # a SEGMENT after it is refused; END after it: the stream is truncated
            entries = parse_index(rec.payload, self.header, self.records_offset, rec.offset)
            if [e.offset for e in entries] != self.segment_offsets:
                raise RecordError("INDEX offsets do not match the SEGMENT records")
        elif rec.type == REC_END:
            off = parse_end(rec)
            if off != (self.index_offset or 0):
                raise RecordError(f"END names offset {off}, but the INDEX is at "
                                  f"{self.index_offset or 0}")

    def drop_last_segment(self) -> None:
        """The caller rejected the SEGMENT just checked (damage): it is not indexed."""
        if self.segment_offsets:
            self.segment_offsets.pop()
        self.complete = False


@dataclass(frozen=True)
class Damage:
    """An unreadable stretch of a stream found by :meth:`Reader.scan`: bytes ``offset`` to
    ``end`` (where reading resumed, or the file size) and the first error met there."""

    offset: int
    end: int
    error: StreamError


def parse_end(rec: Record) -> int:
    """The INDEX offset an END record names → :class:`RecordError` for a bad payload."""
    if len(rec.payload) != END_PAYLOAD.size:
        raise RecordError(f"END payload of {len(rec.payload)} bytes, expected {END_PAYLOAD.size}")
    return END_PAYLOAD.unpack(rec.payload)[0]


def parse_index(payload: bytes, header: Header, lo: int, hi: int) -> List[IndexEntry]:
    """INDEX payload → its entries, checked against ``header`` and lying strictly between
    offsets ``lo`` and ``hi`` → :class:`RecordError`."""
    n = header.segment_count
    if len(payload) != 4 + INDEX_ENTRY.size * n:
        raise RecordError(f"INDEX of {len(payload)} bytes, expected {4 + INDEX_ENTRY.size * n}")
    (count,) = struct.unpack_from("<I", payload)
    if count != n:
        raise RecordError(f"INDEX lists {count} segments, header implies {n}")
    out: List[IndexEntry] = []
    prev = lo - 1
    for i in range(n):
        off, first, frames = INDEX_ENTRY.unpack_from(payload, 4 + INDEX_ENTRY.size * i)
        if (first, frames) != header.segment_bounds(i):
            raise RecordError(f"INDEX entry {i} covers frames {first}+{frames}, header implies "
                              f"{header.segment_bounds(i)}")
        if not prev < off < hi:
            raise RecordError(f"INDEX entry {i} offset {off} out of order or out of range")
        prev = off
        out.append(IndexEntry(off, first, frames))
    return out


class Writer:
    """Write a ``.mgv`` stream: header on construction, then :meth:`write_segment` in order,
    then :meth:`close` (INDEX + END). :meth:`rewrite_header` patches the header in place
    (seekable outputs; the new header must have the same size, e.g. a corrected frame count).
    """

    def __init__(self, fo: BinaryIO, header: Header, segment_bits: bool = False,
                 adapt: bool = False, adapt_variant: bool = False) -> None:
        """``segment_bits``: segments may carry their own bit count (a 1.2 stream); otherwise
        every segment stores the header's bits (a 1.1 stream). ``adapt``: the stream holds ADAPT
        records (a 1.3 stream, which may also use segment bit counts); ``adapt_variant``: some of
        them are of method 2 (a 1.4 stream)."""
        self.fo = fo
        self.header = header
        self.minor = (MINOR_ADAPT_VARIANT if adapt_variant else MINOR_ADAPT if adapt
                      else MINOR_SEGMENT_BITS if segment_bits else MINOR)
        try:
            self.base = fo.tell() if fo.seekable() else 0
        except (OSError, ValueError):
            self.base = 0
        head = header.to_bytes(self.minor)
        fo.write(head)
        self.pos = len(head)
        self.header_size = len(head)
        self.entries: List[IndexEntry] = []
        self.closed = False

    def write_record(self, rtype: int, payload: bytes, critical: bool) -> int:
        """Append one record → its offset (relative to the stream start)."""
        if len(payload) > MAX_RECORD_PAYLOAD:
            raise RecordError(f"record payload of {len(payload)} bytes exceeds the cap")
        head = RECORD_HEAD.pack(RECORD_SYNC, rtype, FLAG_CRITICAL if critical else 0, 0, len(payload))
        crc = zlib.crc32(payload, zlib.crc32(head))
        off = self.pos
        self.fo.write(head)
        self.fo.write(payload)
        self.fo.write(CRC.pack(crc))
        self.pos += len(head) + len(payload) + CRC.size
        return off

    def write_adapt(self, payload: bytes) -> int:
        """Append an ADAPT record (before the first SEGMENT, in a 1.3 or 1.4 stream) → its offset."""
        if self.minor < MINOR_ADAPT or self.entries:
            raise RecordError("ADAPT records need Writer(adapt=True) and go before the first SEGMENT")
        return self.write_record(REC_ADAPT, payload, critical=False)

    def write_segment(self, seg: Segment) -> int:
        """Append a SEGMENT (index must be the next one; checked against the header except for
        the total frame count, which :meth:`rewrite_header` may still correct)."""
        if seg.index != len(self.entries):
            raise RecordError(f"segment {seg.index} written out of order")
        if seg.bits and self.minor < MINOR_SEGMENT_BITS:
            raise RecordError("a segment with its own bit count needs Writer(segment_bits=True)")
        end = seg.first_frame + seg.frames
        if not 1 <= end <= MAX_FRAMES:
            raise RecordError(f"segment {seg.index} ends at frame {end}, beyond the frame cap")
        # the total may still be corrected at close(): check as if this segment were the last
        seg.check(dataclasses.replace(self.header, frames=end), len(self.entries))
        off = self.write_record(REC_SEGMENT, seg.to_payload(), critical=True)
        self.entries.append(IndexEntry(off, seg.first_frame, seg.frames))
        return off

    def rewrite_header(self, header: Header) -> None:
        head = header.to_bytes(self.minor)
        if len(head) != self.header_size:
            raise HeaderError("a rewritten header must keep its size")
        self.fo.seek(self.base)
        self.fo.write(head)
        self.fo.seek(self.base + self.pos)
        self.header = header

    def close(self) -> None:
        """Write INDEX and END. Every segment the header implies must have been written."""
        if self.closed:
            return
        if len(self.entries) != self.header.segment_count:
            raise RecordError(f"{len(self.entries)} segments written, header implies "
                              f"{self.header.segment_count}")
        for i, e in enumerate(self.entries):
            if (e.first_frame, e.frames) != self.header.segment_bounds(i):
                raise RecordError(f"segment {i} does not match the final header")
        payload = struct.pack("<I", len(self.entries)) + b"".join(
            INDEX_ENTRY.pack(e.offset, e.first_frame, e.frames) for e in self.entries)
        off = self.write_record(REC_INDEX, payload, critical=False)
        self.write_record(REC_END, END_PAYLOAD.pack(off), critical=True)
        self.closed = True
