"""The ``.mgv`` container: prelude, declarative header, typed CRC-checked records.

``bitstream_spec.md`` is normative; this module follows it. All integers are little-endian.

::

    prelude  magic(8) major(u16) minor(u16) header_len(u32)              16 bytes
    header   header_len bytes of fields (see FIELDS), then crc32(u32) over prelude + header
    records  sync "MGVR" type(u8) flags(u8) reserved(u16) length(u32) payload crc32(u32)
             SEGMENT* [INDEX] END

The reader is strict: every length is checked against a cap before it is used, payloads are
read in bounded chunks (a forged length cannot allocate more memory than the file holds), and
every failure raises one :class:`~neuralcodec.errors.StreamError` subclass. The reader works on
any binary file object; it only seeks for :meth:`Reader.index` / :meth:`Reader.segment_at`.
"""
from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass, fields as dc_fields
from fractions import Fraction
from typing import BinaryIO, Dict, Iterator, List, Optional, Tuple, Union

from .errors import (BadMagic, CRCMismatch, HeaderError, RecordError, StreamError, Truncated,
                     UnsupportedVersion)

MAGIC = b"\x89MGV\r\n\x1a\n"  # PNG-style: non-ASCII first byte, CR-LF / ^Z / LF catch text-mode damage
MAJOR = 1  # a reader must understand this major version exactly
MINOR = 1  # minor versions only add skippable things (trailing header fields, optional records);
# 1.1 defines the AUDIO record payload (spec §8a). Writers write 1.1 unless a segment carries
# its own bit count:
MINOR_SEGMENT_BITS = 2  # 1.2: the SEGMENT byte that 1.0/1.1 reserve holds the segment's bits (§5)
MINOR_KNOWN = 2  # the newest minor whose header fields this reader knows (extra bytes refused)
PRELUDE = struct.Struct("<8sHHI")  # magic, major, minor, header_len
RECORD_SYNC = b"MGVR"
RECORD_HEAD = struct.Struct("<4sBBHI")  # sync, type, flags, reserved, payload length
CRC = struct.Struct("<I")

# ---- caps (normative, bitstream_spec.md §2) ----------------------------------------------
MAX_HEADER_LEN = 4096  # bytes of header fields
MAX_SIDE = 8192  # pixels, width and height each
MAX_PIXELS = 1 << 25  # width·height (33.5 Mpx, covers 8K UHD)
MAX_FRAMES = 1 << 24  # frames per stream
MAX_FPS_TERM = 1_000_000  # fps numerator and denominator
MAX_SEGMENT_FRAMES = 65537
MAX_SEGMENTS = 1 << 20
MAX_AUDIO_TRACKS = 16  # audio tracks per stream
MAX_TIME_BASE_TERM = (1 << 31) - 1  # an audio time base's numerator and denominator (FFmpeg int)
MAX_AUDIO_TEMPLATE = 1 << 20  # bytes of an audio track's codec-parameter template
AUDIO_RECORD_TARGET = 1 << 20  # a writer starts a new AUDIO record after this many bytes
MAX_RECORD_PAYLOAD = 1 << 28  # 256 MiB
READ_CHUNK = 1 << 20  # payloads are read in pieces of at most this size

# ---- record types ------------------------------------------------------------------------
REC_SEGMENT = 1
REC_INDEX = 2
REC_AUDIO = 3  # audio track descriptions and packets, stored as-is (spec §8a, version 1.1)
REC_END = 15
RECORD_NAMES = {REC_SEGMENT: "SEGMENT", REC_INDEX: "INDEX", REC_AUDIO: "AUDIO", REC_END: "END"}
FLAG_CRITICAL = 0x01  # a reader that does not know the type must stop (UnsupportedVersion)

# ---- entropy modes of segment payloads ----------------------------------------------------
ENTROPY_NONE = 0  # raw packed bits (spec §6)
ENTROPY_CONTEXT = 1  # context-adaptive arithmetic coding (spec §7)
ENTROPY_NAMES = {ENTROPY_NONE: "none", ENTROPY_CONTEXT: "context"}

SEGMENT_HEAD = struct.Struct("<IIIHHHBB")  # index, first, frames, t, h, w, entropy, bits (1.2; 0 = header's)
INDEX_ENTRY = struct.Struct("<QII")  # record offset, first frame, frames
END_PAYLOAD = struct.Struct("<Q")  # offset of the INDEX record (0: none)
END_RECORD_SIZE = RECORD_HEAD.size + END_PAYLOAD.size + CRC.size  # 24

NAME_RE = re.compile(rb"^[A-Za-z0-9._-]+$")
PIXFMT_RE = re.compile(rb"^[a-z0-9_]+$")


@dataclass(frozen=True)
class Field:
    """One header field: name, binary kind, allowed range and meaning.

    ``kind`` is ``u8``/``u16``/``u32`` (value in ``lo..hi``), ``bytes16`` (16 raw bytes) or
    ``str8`` (u8 length in ``lo..hi`` then that many bytes matching ``pattern``).
    """

    name: str
    kind: str
    lo: int
    hi: int
    doc: str
    pattern: Optional[re.Pattern] = None


_INT = {"u8": struct.Struct("<B"), "u16": struct.Struct("<H"), "u32": struct.Struct("<I")}

# The header of version 1.0, in file order. Named once; used to write, read, check and print.
FIELDS: Tuple[Field, ...] = (
    Field("width", "u16", 1, MAX_SIDE, "frame width in pixels"),
    Field("height", "u16", 1, MAX_SIDE, "frame height in pixels"),
    Field("frames", "u32", 1, MAX_FRAMES, "number of frames in the stream"),
    Field("fps_num", "u32", 1, MAX_FPS_TERM, "frame rate numerator (fps = num / den)"),
    Field("fps_den", "u32", 1, MAX_FPS_TERM, "frame rate denominator"),
    Field("model_bits", "u8", 1, 32, "LFQ bits per token of the model (K)"),
    Field("bits", "u8", 1, 32, "LFQ bits stored per token (b <= K; channels >= b decode as 0)"),
    Field("bit_order", "u8", 0, 0, "0: channel k is bit k of the token index, LSB first"),
    Field("sign_convention", "u8", 0, 0, "0: z <= 0 -> code -1 (bit 0), z > 0 -> +1 (bit 1)"),
    Field("temporal_factor", "u8", 1, 64, "frames per latent frame (after the first)"),
    Field("spatial_factor", "u8", 1, 128, "pixels per token side"),
    Field("entropy", "u8", 0, 1, "default entropy mode of segments (0 none, 1 context)"),
    Field("reserved", "u8", 0, 0, "must be 0"),
    Field("segment_frames", "u32", 1, MAX_SEGMENT_FRAMES, "frames per segment (1 + f·k)"),
    Field("model_sha256", "bytes16", 16, 16, "first 16 bytes of the model weights' sha256"),
    Field("pix_fmt", "str8", 1, 32, "source pixel format (FFmpeg name)", PIXFMT_RE),
    Field("model_name", "str8", 1, 64, "registered model name", NAME_RE),
)


@dataclass(frozen=True)
class Header:
    """The decoded header (see :data:`FIELDS` for the meaning and range of each field)."""

    width: int
    height: int
    frames: int
    fps_num: int
    fps_den: int
    model_bits: int
    bits: int
    temporal_factor: int
    spatial_factor: int
    entropy: int
    segment_frames: int
    model_sha256: bytes
    pix_fmt: str
    model_name: str
    bit_order: int = 0
    sign_convention: int = 0
    reserved: int = 0

    # ---- derived geometry ----------------------------------------------------------------
    @property
    def fps(self) -> Fraction:
        return Fraction(self.fps_num, self.fps_den)

    @property
    def latent_hw(self) -> Tuple[int, int]:
        """Tokens per latent frame: (ceil(H / s), ceil(W / s))."""
        s = self.spatial_factor
        return -(-self.height // s), -(-self.width // s)

    @property
    def segment_count(self) -> int:
        return -(-self.frames // self.segment_frames)

    def segment_bounds(self, index: int) -> Tuple[int, int]:
        """(first frame, frame count) of segment ``index``."""
        first = index * self.segment_frames
        return first, min(self.segment_frames, self.frames - first)

    def latent_frames(self, frames: int) -> int:
        """Latent frames of a segment holding ``frames`` frames: 1 + ceil((n - 1) / f)."""
        return 1 + -(-(frames - 1) // self.temporal_factor)

    def raw_bytes(self, latent_t: int, bits: Optional[int] = None) -> int:
        """Bytes of a raw (entropy mode 0) payload of ``latent_t`` latent frames of ``bits``
        bits per token (default: the header's)."""
        h, w = self.latent_hw
        return -(-((bits or self.bits) * latent_t * h * w) // 8)

    # ---- serialization -------------------------------------------------------------------
    def check(self) -> None:
        """Check every field range and the cross-field rules → :class:`HeaderError`."""
        for f in FIELDS:
            _check_field(f, getattr(self, f.name))
        if self.bits > self.model_bits:
            raise HeaderError(f"bits {self.bits} > model_bits {self.model_bits}")
        if self.width * self.height > MAX_PIXELS:
            raise HeaderError(f"{self.width}x{self.height} exceeds {MAX_PIXELS} pixels")
        if not Fraction(1, 1000) <= self.fps <= 1000:
            raise HeaderError(f"fps {self.fps_num}/{self.fps_den} outside 1/1000..1000")
        if (self.segment_frames - 1) % self.temporal_factor:
            raise HeaderError(f"segment_frames {self.segment_frames} is not 1 + "
                              f"{self.temporal_factor}·k")
        if self.segment_count > MAX_SEGMENTS:
            raise HeaderError(f"{self.segment_count} segments exceed the cap {MAX_SEGMENTS}")
        seg_raw = self.raw_bytes(self.latent_frames(self.segment_frames))
        if seg_raw + SEGMENT_HEAD.size > MAX_RECORD_PAYLOAD:
            raise HeaderError(f"a segment of {seg_raw} bytes exceeds the record cap")

    def pack_fields(self) -> bytes:
        self.check()
        out = []
        for f in FIELDS:
            v = getattr(self, f.name)
            if f.kind in _INT:
                out.append(_INT[f.kind].pack(v))
            elif f.kind == "bytes16":
                out.append(v)
            else:
                b = v.encode("ascii")
                out.append(bytes([len(b)]) + b)
        return b"".join(out)

    def to_bytes(self, minor: int = MINOR) -> bytes:
        """Prelude + header + header CRC."""
        body = self.pack_fields()
        head = PRELUDE.pack(MAGIC, MAJOR, minor, len(body)) + body
        return head + CRC.pack(zlib.crc32(head))

    def to_dict(self) -> Dict[str, object]:
        """JSON-friendly view (``fps`` as "num/den", sha as hex) plus derived values."""
        d: Dict[str, object] = {f.name: getattr(self, f.name) for f in dc_fields(self)}
        d["model_sha256"] = self.model_sha256.hex()
        d["fps"] = f"{self.fps_num}/{self.fps_den}"
        d["duration_s"] = float(self.frames / self.fps)
        d["segments"] = self.segment_count
        d["latent_hw"] = list(self.latent_hw)
        return d

    def describe(self) -> List[Tuple[str, str, str]]:
        """(name, value, meaning) for every header field, in file order."""
        rows = []
        for f in FIELDS:
            v = getattr(self, f.name)
            rows.append((f.name, v.hex() if isinstance(v, bytes) else str(v), f.doc))
        return rows


def _check_field(f: Field, v) -> None:
    if f.kind in _INT:
        if not isinstance(v, int) or isinstance(v, bool) or not f.lo <= v <= f.hi:
            raise HeaderError(f"header field {f.name}={v!r} outside {f.lo}..{f.hi}")
    elif f.kind == "bytes16":
        if not isinstance(v, (bytes, bytearray)) or len(v) != 16:
            raise HeaderError(f"header field {f.name} must be 16 bytes")
    else:
        try:
            b = v.encode("ascii")
        except (AttributeError, UnicodeEncodeError):
            raise HeaderError(f"header field {f.name}={v!r} is not an ASCII string") from None
        if not f.lo <= len(b) <= f.hi or not f.pattern.match(b):
            raise HeaderError(f"header field {f.name}={v!r}: length {f.lo}..{f.hi}, "
                              f"characters {f.pattern.pattern.decode()}")


def _parse_fields(body: bytes, minor: int) -> Header:
    vals: Dict[str, object] = {}
    pos = 0
    for f in FIELDS:
        try:
            if f.kind in _INT:
                (v,) = _INT[f.kind].unpack_from(body, pos)
                pos += _INT[f.kind].size
            elif f.kind == "bytes16":
                if pos + 16 > len(body):
                    raise struct.error
                v = bytes(body[pos:pos + 16])
                pos += 16
            else:
                (n,) = _INT["u8"].unpack_from(body, pos)
                if not f.lo <= n <= f.hi or pos + 1 + n > len(body):
                    raise HeaderError(f"header string {f.name} has bad length {n}")
                raw = bytes(body[pos + 1:pos + 1 + n])
                if not f.pattern.match(raw):
                    raise HeaderError(f"header string {f.name} has invalid characters")
                v = raw.decode("ascii")
                pos += 1 + n
        except struct.error:
            raise HeaderError(f"header too short for field {f.name}") from None
        _check_field(f, v)
        vals[f.name] = v
    if pos != len(body) and minor <= MINOR_KNOWN:  # this reader knows every field of these versions
        raise HeaderError(f"{len(body) - pos} unexpected bytes after the header fields")
    h = Header(**vals)  # type: ignore[arg-type]
    h.check()
    return h


# ---- records ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Record:
    """A record as read: type, flags, file offset of its sync word, payload bytes."""

    type: int
    flags: int
    offset: int
    payload: bytes

    @property
    def size(self) -> int:
        return RECORD_HEAD.size + len(self.payload) + CRC.size


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


def _crc_ok(data: bytes, crc: int) -> bool:
    return zlib.crc32(data) == crc


def _read_exact(fo: BinaryIO, n: int, what: str) -> bytes:
    """Read exactly ``n`` bytes in chunks of at most READ_CHUNK (so a forged length cannot
    allocate more than the file holds) → :class:`Truncated` on a short read."""
    if n <= READ_CHUNK:
        b = fo.read(n)
        if b is None or len(b) != n:
            raise Truncated(f"stream ends inside {what} ({0 if b is None else len(b)} of {n} bytes)")
        return b
    parts = []
    left = n
    while left:
        b = fo.read(min(left, READ_CHUNK))
        if not b:
            raise Truncated(f"stream ends inside {what} ({n - left} of {n} bytes)")
        parts.append(b)
        left -= len(b)
    return b"".join(parts)


class Reader:
    """Strict streaming reader of a ``.mgv`` file object.

    On construction the prelude and header are read and checked (:attr:`header`,
    :attr:`version`). :meth:`records` and :meth:`segments` scan forward from the first record
    and need no seeking; :meth:`index` and :meth:`segment_at` seek (seekable files only).
    """

    def __init__(self, fo: BinaryIO) -> None:
        self.fo = fo
        try:
            self.base = fo.tell() if fo.seekable() else 0
        except (OSError, ValueError):
            self.base = 0
        head = fo.read(PRELUDE.size) or b""
        if len(head) < len(MAGIC) or head[:len(MAGIC)] != MAGIC:
            if MAGIC.startswith(head) and len(head) < len(MAGIC):
                raise Truncated("stream ends inside the magic") if head else Truncated("empty stream")
            raise BadMagic("not an .mgv stream (bad magic)")
        if len(head) < PRELUDE.size:
            raise Truncated("stream ends inside the prelude")
        _, major, minor, hlen = PRELUDE.unpack(head)
        if major != MAJOR:
            raise UnsupportedVersion(f"stream version {major}.{minor}; this reader reads {MAJOR}.x")
        if hlen > MAX_HEADER_LEN:
            raise HeaderError(f"header length {hlen} exceeds the cap {MAX_HEADER_LEN}")
        body = _read_exact(fo, hlen, "the header")
        (crc,) = CRC.unpack(_read_exact(fo, CRC.size, "the header CRC"))
        if not _crc_ok(head + body, crc):
            raise CRCMismatch("header CRC mismatch")
        self.version = (major, minor)
        self.header = _parse_fields(body, minor)
        self.records_offset = PRELUDE.size + hlen + CRC.size  # relative to self.base
        self._pos = self.records_offset

    # ---- sequential access ------------------------------------------------------------------
    def read_record(self) -> Record:
        """Read the record at the current position (offset bookkeeping for non-seekable files)."""
        offset = self._pos
        raw = self.fo.read(RECORD_HEAD.size) or b""
        if not raw:
            raise Truncated("stream ends before its END record")
        if len(raw) < RECORD_HEAD.size:
            raise Truncated("stream ends inside a record header")
        sync, rtype, flags, res, length = RECORD_HEAD.unpack(raw)
        if sync != RECORD_SYNC:
            raise RecordError(f"no record sync word at offset {offset}")
        if length > MAX_RECORD_PAYLOAD:
            raise RecordError(f"record length {length} at offset {offset} exceeds the cap")
        payload = _read_exact(self.fo, length, f"{RECORD_NAMES.get(rtype, 'a')} record")
        (crc,) = CRC.unpack(_read_exact(self.fo, CRC.size, "a record CRC"))
        if not _crc_ok(raw + payload, crc):
            raise CRCMismatch(f"CRC mismatch in {RECORD_NAMES.get(rtype, 'record')} at offset {offset}")
        if res != 0 or flags & ~FLAG_CRITICAL:
            raise RecordError(f"reserved record bits set at offset {offset}")
        self._pos = offset + RECORD_HEAD.size + length + CRC.size
        return Record(rtype, flags, offset, payload)

    def records(self) -> Iterator[Record]:
        """All records from the first one through END (END included). Unknown non-critical
        types are returned too (callers skip them); unknown critical types raise
        :class:`UnsupportedVersion`."""
        self._seek(self.records_offset)
        order = RecordOrder(self.header, self.records_offset)
        while True:
            rec = self.read_record()
            if rec.type not in RECORD_NAMES and rec.type != 0 and rec.flags & FLAG_CRITICAL:
                raise UnsupportedVersion(f"record type {rec.type} is required but unknown")
            order.check(rec)
            yield rec
            if rec.type == REC_END:
                self.check_nothing_after(rec)
                return

    def segments(self, start: int = 0) -> Iterator[Segment]:
        """Scan records and yield every SEGMENT with index >= ``start``, checked against the
        header, in order; raises :class:`Truncated` if segments are missing before END."""
        expected = 0
        for rec in self.records():
            if rec.type == REC_SEGMENT:
                seg = Segment.parse(rec.payload)
                seg.check(self.header, expected)
                expected += 1
                if seg.index >= start:
                    yield seg
            elif rec.type == REC_END:
                if expected != self.header.segment_count:
                    raise Truncated(f"stream has {expected} of {self.header.segment_count} segments")

    # ---- random access ----------------------------------------------------------------------
    def _seek(self, rel: int) -> None:
        if rel == self._pos:
            return
        try:
            self.fo.seek(self.base + rel)
        except (OSError, ValueError, AttributeError):
            raise RecordError("stream is not seekable") from None
        self._pos = rel

    def stream_size(self) -> Optional[int]:
        """Bytes of the stream (from its first byte to the end of the file), None when the
        file is not seekable."""
        if not self.seekable():
            return None
        try:
            size = self.fo.seek(0, 2) - self.base
        except (OSError, ValueError):
            return None
        self._pos = -1  # the next read seeks
        return size

    def seekable(self) -> bool:
        try:
            return bool(self.fo.seekable())
        except (OSError, ValueError, AttributeError):
            return False

    def index(self) -> Optional[List[IndexEntry]]:
        """Segment table from the INDEX record, found through the END record at the end of the
        file → None if the file is not seekable or has no index (scan instead). A present but
        inconsistent index raises."""
        if not self.seekable():
            return None
        end = self.fo.seek(0, 2) - self.base
        self._pos = -1
        if end - END_RECORD_SIZE < self.records_offset:
            return None
        self._seek(end - END_RECORD_SIZE)
        try:  # no readable END at the end (cut or damaged file): callers scan instead
            rec = self.read_record()
            if rec.type != REC_END:
                return None
            off = _parse_end(rec)
        except StreamError:
            return None
        if off == 0:
            return None
        if not self.records_offset <= off <= end - END_RECORD_SIZE - RECORD_HEAD.size - CRC.size:
            raise RecordError(f"END points to offset {off} outside the records")
        self._seek(off)
        rec = self.read_record()
        if rec.type != REC_INDEX:
            raise RecordError(f"END points to a record of type {rec.type}, not INDEX")
        if rec.offset + rec.size != end - END_RECORD_SIZE:
            raise RecordError("INDEX is not followed by END")
        entries = _parse_index(rec.payload, self.header, self.records_offset, rec.offset)
        starts = self._segment_starts(rec.offset)
        if starts != [e.offset for e in entries]:
            raise RecordError("INDEX offsets do not match the SEGMENT records of the file")
        return entries

    def _segment_starts(self, stop: int) -> List[int]:
        """Offsets of the SEGMENT records among the records from the first one to ``stop``
        (the INDEX), walking the record heads only (payloads are skipped, not read): an
        INDEX entry must name a real record boundary, never bytes inside another record."""
        out: List[int] = []
        pos = self.records_offset
        while pos < stop:
            self._seek(pos)
            raw = self.fo.read(RECORD_HEAD.size) or b""
            self._pos = -1
            if len(raw) < RECORD_HEAD.size:
                raise RecordError("INDEX does not match the records of the file")
            sync, rtype, _, _, length = RECORD_HEAD.unpack(raw)
            if sync != RECORD_SYNC or length > MAX_RECORD_PAYLOAD:
                raise RecordError("INDEX does not match the records of the file")
            if rtype == REC_SEGMENT:
                out.append(pos)
            pos += RECORD_HEAD.size + length + CRC.size
            if len(out) > self.header.segment_count:
                break
        if pos != stop:
            raise RecordError("INDEX does not follow the last record before it")
        return out

    def check_nothing_after(self, end: Record) -> None:
        """Spec §4: nothing follows END → :class:`RecordError` for trailing bytes (a second
        END included)."""
        after = end.offset + end.size
        try:
            if self.seekable():
                size = self.fo.seek(0, 2) - self.base
                self._pos = -1
                extra = size - after
            else:
                self._pos = after
                extra = len(self.fo.read(1) or b"")
        except (OSError, ValueError):
            return
        if extra > 0:
            raise RecordError(f"{'bytes' if extra > 1 else 'data'} after the END record "
                              f"(offset {after})")

    def segment_at(self, offset: int, expected_index: Optional[int] = None) -> Segment:
        """Read and check the SEGMENT record at ``offset`` (relative to the stream start)."""
        self._seek(offset)
        rec = self.read_record()
        if rec.type != REC_SEGMENT:
            raise RecordError(f"record at offset {offset} is not a SEGMENT")
        seg = Segment.parse(rec.payload)
        seg.check(self.header, expected_index)
        return seg

    # ---- damage-tolerant scan ------------------------------------------------------------------
    def scan(self) -> Iterator[Union[Record, "Damage"]]:
        """Records from the first one through END, resynchronizing after damage.

        Yields every readable record (CRC checked) and, for each unreadable stretch, one
        :class:`Damage` (its first error and the byte range skipped). After a record that does
        not read (bad sync, CRC mismatch, length over the cap or past the end of the file) the
        scan looks for the next ``MGVR`` sync word after the damaged record's first byte, so a
        damaged length field costs only the records it covers. A file that ends before END
        yields a final :class:`Damage` with a :class:`Truncated` error. Non-seekable streams
        cannot resynchronize: the first damage ends the scan. An unknown CRITICAL record type
        with a valid CRC still raises :class:`UnsupportedVersion` (that is not damage).
        """
        can_seek = self.seekable()
        size = None
        if can_seek:
            size = self.fo.seek(0, 2) - self.base
            self._pos = -1
        pos = self.records_offset
        # bytes that failed candidates may read: bounded by a multiple of the file size, so a
        # file full of forged sync words costs linear, not quadratic, time
        budget = 4 * (size or 0) + (1 << 20)
        while True:
            self._seek(pos) if can_seek else None
            try:
                rec = self.read_record()
            except StreamError as e:
                if isinstance(e, Truncated) and size is not None and pos >= size:
                    yield Damage(pos, pos, e)  # clean cut between records
                    return
                if can_seek:
                    try:
                        budget -= max(0, self.fo.tell() - self.base - pos)
                    except (OSError, ValueError):
                        budget = -1
                    self._pos = -1
                nxt = self._find_sync(pos + 1, size) if can_seek and budget > 0 else None
                yield Damage(pos, size if nxt is None else nxt, e)
                if nxt is None:
                    if not isinstance(e, Truncated):
                        yield Damage(size or pos, size or pos, Truncated("stream ends before its END record"))
                    return
                pos = nxt
                continue
            if rec.type not in RECORD_NAMES and rec.type != 0 and rec.flags & FLAG_CRITICAL:
                raise UnsupportedVersion(f"record type {rec.type} is required but unknown")
            yield rec
            if rec.type == REC_END:
                return
            pos = rec.offset + rec.size

    def _find_sync(self, start: int, size: Optional[int]) -> Optional[int]:
        """Offset of the next ``MGVR`` at or after ``start`` (read in bounded chunks) or None."""
        pos = start
        while size is None or pos < size:
            self._seek(pos)
            block = self.fo.read(READ_CHUNK)
            self._pos = -1
            if not block:
                return None
            i = block.find(RECORD_SYNC)
            if i >= 0:
                return pos + i
            if len(block) < len(RECORD_SYNC):
                return None
            pos += len(block) - len(RECORD_SYNC) + 1
        return None


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
            entries = _parse_index(rec.payload, self.header, self.records_offset, rec.offset)
            if [e.offset for e in entries] != self.segment_offsets:
                raise RecordError("INDEX offsets do not match the SEGMENT records")
        elif rec.type == REC_END:
            off = _parse_end(rec)
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


def _parse_end(rec: Record) -> int:
    if len(rec.payload) != END_PAYLOAD.size:
        raise RecordError(f"END payload of {len(rec.payload)} bytes, expected {END_PAYLOAD.size}")
    return END_PAYLOAD.unpack(rec.payload)[0]


def _parse_index(payload: bytes, header: Header, lo: int, hi: int) -> List[IndexEntry]:
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


# ---- AUDIO records (version 1.1, spec §8a) -------------------------------------------------------
AUDIO_TRACK = 0  # AUDIO payload kind: a track description
AUDIO_PACKETS = 1  # AUDIO payload kind: packets of one track
AUDIO_TRACK_HEAD = struct.Struct("<BB")  # kind, track
AUDIO_TRACK_FIXED = struct.Struct("<IIIHqI")  # tb_num, tb_den, sample_rate, channels, start, template_len
AUDIO_PACKETS_HEAD = struct.Struct("<BBI")  # kind, track, count
AUDIO_PACKET = struct.Struct("<qqIBI")  # pts, dts, duration, flags, size
NO_PTS = -(1 << 63)  # pts/dts value meaning "unknown"
CODEC_RE = re.compile(rb"^[a-z0-9_]+$")


@dataclass(frozen=True)
class AudioTrack:
    """An audio track carried through unchanged (AUDIO record of kind 0).

    ``codec`` is the FFmpeg codec name, ``time_base`` the unit of the packets' pts/dts/duration,
    ``start`` the pts (in that unit) that coincides with video frame 0, ``template`` a
    Matroska file holding the track's full codec parameters (extradata included) and its first
    packet: the reference writer creates the output stream from it (stream copy).
    """

    track: int
    codec: str
    time_base: Fraction
    sample_rate: int
    channels: int
    start: int
    template: bytes

    def to_payload(self) -> bytes:
        c = self.codec.encode("ascii")
        return (AUDIO_TRACK_HEAD.pack(AUDIO_TRACK, self.track) + bytes([len(c)]) + c
                + AUDIO_TRACK_FIXED.pack(self.time_base.numerator, self.time_base.denominator,
                                         self.sample_rate, self.channels, self.start,
                                         len(self.template)) + self.template)


@dataclass(frozen=True)
class AudioPacket:
    """One compressed audio packet: bytes as demuxed, timestamps in the track's time base
    (None: unknown), duration, and the keyframe flag."""

    pts: Optional[int]
    dts: Optional[int]
    duration: int
    keyframe: bool
    data: bytes


@dataclass(frozen=True)
class AudioPackets:
    """Packets of one track in decoding order (AUDIO record of kind 1)."""

    track: int
    packets: Tuple[AudioPacket, ...]

    def to_payload(self) -> bytes:
        out = [AUDIO_PACKETS_HEAD.pack(AUDIO_PACKETS, self.track, len(self.packets))]
        for p in self.packets:
            out.append(AUDIO_PACKET.pack(NO_PTS if p.pts is None else p.pts,
                                         NO_PTS if p.dts is None else p.dts,
                                         p.duration, int(p.keyframe), len(p.data)))
            out.append(p.data)
        return b"".join(out)


def parse_audio(payload: bytes) -> Union[AudioTrack, AudioPackets, None]:
    """AUDIO record payload → :class:`AudioTrack` or :class:`AudioPackets`, None for a kind
    this version does not define (skipped) → :class:`RecordError` when malformed; every
    length is checked against the payload."""
    try:
        kind, track = AUDIO_TRACK_HEAD.unpack_from(payload)
        if track >= MAX_AUDIO_TRACKS:
            raise RecordError(f"AUDIO track {track} >= {MAX_AUDIO_TRACKS}")
        if kind == AUDIO_TRACK:
            n = payload[2]
            codec = bytes(payload[3:3 + n])
            if not 1 <= n <= 32 or len(codec) != n or not CODEC_RE.match(codec):
                raise RecordError("AUDIO track has a bad codec name")
            pos = 3 + n
            num, den, rate, ch, start, tlen = AUDIO_TRACK_FIXED.unpack_from(payload, pos)
            pos += AUDIO_TRACK_FIXED.size
            if (not 1 <= num <= MAX_TIME_BASE_TERM or not 1 <= den <= MAX_TIME_BASE_TERM
                    or not 1 <= rate <= 1_000_000 or not 1 <= ch <= 255):
                raise RecordError("AUDIO track has a bad time base, sample rate or channel count")
            if tlen > MAX_AUDIO_TEMPLATE or pos + tlen != len(payload):
                raise RecordError(f"AUDIO track template of {tlen} bytes does not fit the record")
            return AudioTrack(track, codec.decode("ascii"), Fraction(num, den), rate, ch, start,
                              bytes(payload[pos:]))
        if kind == AUDIO_PACKETS:
            _, _, count = AUDIO_PACKETS_HEAD.unpack_from(payload)
            pos = AUDIO_PACKETS_HEAD.size
            if count > (len(payload) - pos) // AUDIO_PACKET.size:
                raise RecordError(f"AUDIO record claims {count} packets, more than it can hold")
            pk = []
            for _ in range(count):
                pts, dts, dur, flags, size = AUDIO_PACKET.unpack_from(payload, pos)
                pos += AUDIO_PACKET.size
                if flags & ~1 or pos + size > len(payload):
                    raise RecordError("AUDIO packet has bad flags or runs past its record")
                pk.append(AudioPacket(None if pts == NO_PTS else pts, None if dts == NO_PTS else dts,
                                      dur, bool(flags & 1), bytes(payload[pos:pos + size])))
                pos += size
            if pos != len(payload):
                raise RecordError(f"{len(payload) - pos} unexpected bytes after the AUDIO packets")
            return AudioPackets(track, tuple(pk))
        return None  # a kind from a later minor version: skipped (spec §8a, §10)
    except (struct.error, IndexError):
        raise RecordError("AUDIO record is too short") from None


class Writer:
    """Write a ``.mgv`` stream: header on construction, then :meth:`write_segment` in order,
    then :meth:`close` (INDEX + END). :meth:`rewrite_header` patches the header in place
    (seekable outputs; the new header must have the same size, e.g. a corrected frame count).
    """

    def __init__(self, fo: BinaryIO, header: Header, segment_bits: bool = False) -> None:
        """``segment_bits``: segments may carry their own bit count (a 1.2 stream); otherwise
        every segment stores the header's bits (a 1.1 stream)."""
        self.fo = fo
        self.header = header
        self.minor = MINOR_SEGMENT_BITS if segment_bits else MINOR
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
        seg.check(_replace(self.header, frames=end), len(self.entries))
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


def _replace(h: Header, **kw) -> Header:
    d = {f.name: getattr(h, f.name) for f in dc_fields(h)}
    d.update(kw)
    return Header(**d)


def replace_header(h: Header, **kw) -> Header:
    """A copy of ``h`` with fields replaced (checked)."""
    out = _replace(h, **kw)
    out.check()
    return out
