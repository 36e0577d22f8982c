"""The ``.mgv`` header: the format's constants and caps (spec §2), the declarative field table
:data:`FIELDS` and :class:`Header`, checked on write and on read. All integers little-endian."""
from __future__ import annotations

import dataclasses
import re
import struct
import zlib
from dataclasses import dataclass, fields as dc_fields
from fractions import Fraction
from typing import Dict, List, Optional, Tuple

from ..configs import MAX_BITS, latent_frames, latent_size
from ..errors import HeaderError

__all__ = ["MAGIC", "MAJOR", "MINOR", "MINOR_SEGMENT_BITS", "MINOR_ADAPT", "MINOR_ADAPT_VARIANT", "MINOR_KNOWN", "PRELUDE",
           "RECORD_SYNC", "RECORD_HEAD", "CRC", "MAX_HEADER_LEN", "MAX_SIDE", "MAX_PIXELS",
           "MAX_FRAMES", "MAX_FPS_TERM", "MAX_SEGMENT_FRAMES", "MAX_SEGMENTS", "MAX_AUDIO_TRACKS",
           "MAX_TIME_BASE_TERM", "MAX_AUDIO_TEMPLATE", "AUDIO_RECORD_TARGET", "MAX_RECORD_PAYLOAD",
           "READ_CHUNK", "REC_SEGMENT", "REC_INDEX", "REC_AUDIO", "REC_ADAPT", "REC_END", "RECORD_NAMES",
           "FLAG_CRITICAL", "ENTROPY_NONE", "ENTROPY_CONTEXT", "ENTROPY_NAMES", "SEGMENT_HEAD",
           "INDEX_ENTRY", "END_PAYLOAD", "END_RECORD_SIZE", "NAME_RE", "PIXFMT_RE", "Field",
           "FIELDS", "Header", "parse_fields", "replace_header"]

MAGIC = b"\x89MGV\r\n\x1a\n"  # PNG-style: non-ASCII first byte, CR-LF / ^Z / LF catch text-mode damage
MAJOR = 1  # a reader must understand this major version exactly
MINOR = 1  # minor versions only add skippable things (trailing header fields, optional records);
# 1.1 defines the AUDIO record payload (spec §8a). Writers write 1.1 unless a segment carries
# its own bit count:
MINOR_SEGMENT_BITS = 2  # 1.2: the SEGMENT byte that 1.0/1.1 reserve holds the segment's bits (§5)
MINOR_ADAPT = 3  # 1.3: ADAPT records (§8c) change the decoder for some segments; same header
MINOR_ADAPT_VARIANT = 4  # 1.4: ADAPT records of method 2 change a decoder variant; same header
MINOR_KNOWN = 4  # the newest minor whose header fields this reader knows (extra bytes refused)
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
REC_ADAPT = 4  # a coded change of the decoder for some segments (spec §8c, since 1.3)
REC_END = 15
RECORD_NAMES = {REC_SEGMENT: "SEGMENT", REC_INDEX: "INDEX", REC_AUDIO: "AUDIO", REC_ADAPT: "ADAPT",
                REC_END: "END"}
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
    Field("model_bits", "u8", 1, MAX_BITS, "bits per token of the model (K)"),
    Field("bits", "u8", 1, MAX_BITS, "bits stored per token (b <= K; channels >= b decode as 0)"),
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
        return latent_size(self.height, self.width, self.spatial_factor)

    @property
    def segment_count(self) -> int:
        return -(-self.frames // self.segment_frames)

    def segment_bounds(self, index: int) -> Tuple[int, int]:
        """(first frame, frame count) of segment ``index``."""
        first = index * self.segment_frames
        return first, min(self.segment_frames, self.frames - first)

    def latent_frames(self, frames: int) -> int:
        """Latent frames of a segment holding ``frames`` frames: 1 + ceil((n - 1) / f)."""
        return latent_frames(frames, self.temporal_factor)

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


def parse_fields(body: bytes, minor: int) -> Header:
    """Header fields as stored (``body``, stream minor version ``minor``) → checked
    :class:`Header` → :class:`HeaderError`."""
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


def replace_header(h: Header, **kw) -> Header:
    """A copy of ``h`` with fields replaced (checked)."""
    out = dataclasses.replace(h, **kw)
    out.check()
    return out
