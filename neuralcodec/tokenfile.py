"""The tokens file: a safetensors file of token indices, read as untrusted input (the format is
specified in ``bitstream_spec.md``, appendix B).

Reading parses the safetensors header itself (length word capped, JSON size and nesting
checked before parsing, no NaN / Infinity, integers of at most 20 digits), the ``mgv`` metadata
through one schema (:func:`parse_metadata`: types, finite ranges, string lengths) before any
arithmetic, and every tensor's name, dtype (integers only), shape and ``data_offsets`` against
the metadata and the file's size, all before a byte of tensor data is read
(:meth:`TokensFile.open`); :meth:`TokensFile.read_arrays` then checks the tokens' memory and
values. Writing (:class:`FileLayout`) streams one latent frame at a time, so a file of any
length is written in the memory of one frame; the files load with ``safetensors`` alone.
"""
from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import container as ct
from .chunks import Progress
from .adapt import read_adaptations
from .errors import InputError, MGVError
from .resources import check_memory
from .subtokens import check_split, parse_split, split_tokens  # noqa: F401 (this module's API)

FORMAT = "mgv-tokens"  # value of the metadata key "format"
FORMAT_VERSION = 1  # bumped when the file layout changes incompatibly


# ---- the file format (bitstream_spec.md appendix B) -----------------------------------------
#: dtypes a tokens tensor may have (safetensors name → little-endian NumPy type); mgv writes
#: I32, or I64 when a token can have 32 bits. Anything else (floats, BF16, F8_*, BOOL) is refused.
DTYPES = {"I8": "<i1", "U8": "<u1", "I16": "<i2", "U16": "<u2", "I32": "<i4", "U32": "<u4",
          "I64": "<i8", "U64": "<u8"}
MAX_FILE_HEADER = 1 << 24  # bytes of the safetensors JSON header (safetensors allows 100 MB)
MIN_ENTRY_BYTES = 64  # the fewest header bytes one tensor entry takes (name, dtype, shape, offsets)
MAX_MGV_JSON = 1 << 23  # bytes of the "mgv" metadata value
MAX_JSON_DEPTH = 3  # nesting of either JSON text: {name: {"shape": [...]}} / {"split": [...]}
MAX_STRING = 256  # characters of a metadata string we read (model, pix_fmt, token, …)
MAX_INT = 1 << 53  # any integer of the metadata or the header (JSON-safe)
MAX_SPLIT = 32  # sub-token groups
MAX_ADAPT_RECORDS = 16  # ADAPT payloads a tokens file carries …
MAX_ADAPT_HEX = 1 << 21  # … each at most 1 MiB (as hex)
ADAPT_RE = re.compile(r"^(?:[0-9a-f]{2})+$")
FPS_RE = re.compile(r"^([0-9]{1,7})(?:/([0-9]{1,7}))?$")
HEX_RE = re.compile(r"^(?:[0-9a-fA-F]{2}){16,32}$")
TENSOR_RE = re.compile(r"^(?:tokens\.([0-9]{1,7})|subtokens\.([0-9]{1,7})\.([0-9]{1,2}))$")
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*+"')


def _json(text: str, what: str, limit: int):
    """Parse untrusted JSON: size and nesting checked first (strings skipped), integers of at
    most 20 digits, no NaN / Infinity → :class:`InputError`."""
    if len(text) > limit:
        raise InputError(f"{what} of {len(text)} bytes exceeds {limit}")
    depth = deepest = 0
    for c in re.findall(r"[\[\]{}]", _JSON_STRING.sub("", text)):
        depth += 1 if c in "[{" else -1
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            raise InputError(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")

    def bad_constant(name):
        raise ValueError(f"{name} is not a number")

    def integer(digits):
        if len(digits.lstrip("-")) > 20:
            raise ValueError(f"integer of {len(digits)} digits")
        return int(digits)

    try:
        return json.loads(text, parse_constant=bad_constant, parse_int=integer)
    except (ValueError, RecursionError) as e:
        raise InputError(f"{what} is not valid JSON ({str(e).splitlines()[0][:80]})") from None


def _int(md: dict, key: str, lo: int = 0, hi: int = MAX_INT, default=None) -> int:
    v = md.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise InputError(f"metadata {key}={_short(v)} must be an integer in {lo}..{hi}")
    return v


def _str(md: dict, key: str, default=None, pattern: Optional[re.Pattern] = None) -> str:
    v = md.get(key, default)
    if not isinstance(v, str) or not 1 <= len(v) <= MAX_STRING or (pattern and not pattern.match(v)):
        raise InputError(f"metadata {key}={_short(v)} must be a string"
                         + (f" matching {pattern.pattern}" if pattern else ""))
    return v


def _int_list(md: dict, key: str, lo: int, hi: int, max_len: int) -> Optional[List[int]]:
    v = md.get(key)
    if v is None:
        return None
    if (not isinstance(v, list) or len(v) > max_len
            or any(not isinstance(x, int) or isinstance(x, bool) or not lo <= x <= hi for x in v)):
        raise InputError(f"metadata {key} must be a list of at most {max_len} integers in "
                         f"{lo}..{hi}")
    return v


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def metadata_dict(header: ct.Header, bits: Sequence[int], split: Optional[Sequence[int]],
                  adapt: Sequence[bytes] = ()) -> dict:
    """The ``mgv`` metadata of a tokens file (schema: :func:`parse_metadata`); ``adapt``: the
    stream's ADAPT record payloads, stored as hex strings when there are any."""
    h = header
    return ({"adapt": [p.hex() for p in adapt]} if adapt else {}) | {
            "model": h.model_name, "model_sha256": h.model_sha256.hex(),
            "model_bits": h.model_bits, "bits": h.bits, "segment_bits": list(bits),
            "width": h.width, "height": h.height, "fps": f"{h.fps_num}/{h.fps_den}",
            "frames": h.frames, "segment_frames": h.segment_frames,
            "segments": h.segment_count, "latent_hw": list(h.latent_hw),
            "temporal_factor": h.temporal_factor, "spatial_factor": h.spatial_factor,
            "pix_fmt": h.pix_fmt, "split": list(split) if split else None,
            "token": "sum_k 2^k * bit_k, bit k = 1 iff latent z_k > 0 (bitstream_spec.md §5)"}


@dataclass(frozen=True)
class TokensMeta:
    """The ``mgv`` metadata of a tokens file, parsed and checked."""

    header: ct.Header
    bits: Tuple[int, ...]  # per segment, 1..header.bits
    split: Optional[Tuple[int, ...]]  # sub-token group sizes (adding up to header.bits) or None
    adapt: Tuple[bytes, ...] = ()  # the stream's ADAPT record payloads (spec §8c), checked


def parse_metadata(text: str) -> TokensMeta:
    """The ``mgv`` metadata JSON → :class:`TokensMeta` → :class:`InputError`: the one schema
    of a tokens file's metadata (bitstream_spec.md appendix B). Sizes, types and ranges are
    checked before any arithmetic; the header fields then pass :meth:`Header.check` (the
    stream header's own ranges and caps)."""
    md = _json(text, "metadata 'mgv'", MAX_MGV_JSON)
    if not isinstance(md, dict):
        raise InputError("metadata 'mgv' must be a JSON object")
    m = FPS_RE.match(_str(md, "fps"))
    if m is None:
        raise InputError(f"metadata fps={_short(md['fps'])} must be \"num/den\" with integers "
                         f"of at most 7 digits")
    num, den = int(m.group(1)), int(m.group(2) or 1)
    if den == 0 or num == 0:
        raise InputError(f"metadata fps {md['fps']!r} must be positive")
    fps = Fraction(num, den)
    sha = _str(md, "model_sha256", pattern=HEX_RE)
    try:
        header = ct.Header(
            width=_int(md, "width"), height=_int(md, "height"), frames=_int(md, "frames"),
            fps_num=fps.numerator, fps_den=fps.denominator, model_bits=_int(md, "model_bits"),
            bits=_int(md, "bits"), temporal_factor=_int(md, "temporal_factor"),
            spatial_factor=_int(md, "spatial_factor"), entropy=ct.ENTROPY_NONE,
            segment_frames=_int(md, "segment_frames"), model_sha256=bytes.fromhex(sha)[:16],
            pix_fmt=_str(md, "pix_fmt", default="rgb24"), model_name=_str(md, "model"))
        header.check()
    except MGVError as e:
        raise InputError(f"bad header fields in the metadata: {e}") from None
    n = header.segment_count
    bits = _int_list(md, "segment_bits", 1, header.bits, ct.MAX_SEGMENTS)
    if bits is not None and len(bits) != n:
        raise InputError(f"segment_bits must list {n} values in 1..{header.bits}")
    if md.get("segments") is not None and _int(md, "segments") != n:
        raise InputError(f"metadata segments={md['segments']} but the header implies {n}")
    hw = _int_list(md, "latent_hw", 0, MAX_INT, 2)
    if hw is not None and tuple(hw) != header.latent_hw:
        raise InputError(f"metadata latent_hw={hw} but the header implies {list(header.latent_hw)}")
    split = _int_list(md, "split", 1, header.bits, MAX_SPLIT)
    adapt = md.get("adapt") or []
    if (not isinstance(adapt, list) or len(adapt) > MAX_ADAPT_RECORDS
            or not all(isinstance(a, str) and len(a) <= MAX_ADAPT_HEX and ADAPT_RE.match(a) for a in adapt)):
        raise InputError(f"metadata adapt must be a list of at most {MAX_ADAPT_RECORDS} hex strings")
    try:
        read_adaptations([ct.Record(ct.REC_ADAPT, 0, 0, bytes.fromhex(a)) for a in adapt], header)
    except MGVError as e:
        raise InputError(f"metadata adapt: {e}") from None
    return TokensMeta(header, tuple(bits or [header.bits] * n),
                      check_split(split, header.bits) if split else None,
                      tuple(bytes.fromhex(a) for a in adapt))


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a tokens file: its safetensors dtype, shape and byte range (offsets from
    the start of the data, after the header)."""

    name: str
    dtype: str
    shape: Tuple[int, ...]
    begin: int
    end: int


class FileLayout:
    """The tensors of a tokens file for ``header`` (per-segment ``bits``, optional ``split``)
    and their byte ranges: segment by segment, ``tokens.{i}`` then its ``subtokens.{i}.{j}``,
    each ``t_i×h×w`` of I32 (I64 when a token can have 32 bits). Writes the file one latent
    frame at a time (:meth:`write`), so the memory it needs is one frame's."""

    def __init__(self, header: ct.Header, bits: Sequence[int],
                 split: Optional[Sequence[int]] = None, adapt: Sequence[bytes] = ()) -> None:
        self.header, self.bits, self.split = header, tuple(bits), tuple(split or ())
        if len(adapt) > MAX_ADAPT_RECORDS or any(2 * len(a) > MAX_ADAPT_HEX for a in adapt):
            raise InputError(f"the stream's ADAPT records do not fit a tokens file (at most "
                             f"{MAX_ADAPT_RECORDS} of {MAX_ADAPT_HEX // 2} bytes)")
        tensors = header.segment_count * (1 + len(self.split))
        if tensors * MIN_ENTRY_BYTES > MAX_FILE_HEADER:  # refused before building the table
            raise InputError(f"{header.segment_count} segments would need {tensors} tensors, "
                             f"more than a tokens file header of {MAX_FILE_HEADER} bytes holds")
        self.dtype = "I64" if header.bits > 31 else "I32"
        item = np.dtype(DTYPES[self.dtype]).itemsize
        h, w = header.latent_hw
        self.entries: List[List[TensorEntry]] = []
        pos = 0
        for i in range(header.segment_count):
            t = header.latent_frames(header.segment_bounds(i)[1])
            names = [f"tokens.{i}"] + [f"subtokens.{i}.{j}" for j in range(len(self.split))]
            seg = []
            for name in names:
                seg.append(TensorEntry(name, self.dtype, (t, h, w), pos, pos + t * h * w * item))
                pos = seg[-1].end
            self.entries.append(seg)
        self.data_bytes = pos
        md = {"format": FORMAT, "version": str(FORMAT_VERSION),
              "mgv": json.dumps(metadata_dict(header, self.bits, self.split or None, adapt))}
        table: Dict[str, object] = {"__metadata__": md}
        for seg in self.entries:
            for e in seg:
                table[e.name] = {"dtype": e.dtype, "shape": list(e.shape),
                                 "data_offsets": [e.begin, e.end]}
        text = json.dumps(table, separators=(",", ":")).encode()
        if len(text) > MAX_FILE_HEADER - 8:
            raise InputError(f"{header.segment_count} segments need a tokens file header of "
                             f"{len(text)} bytes, over the cap of {MAX_FILE_HEADER}")
        text += b" " * (-len(text) % 8)  # data 8-byte aligned, as safetensors writes it
        self.head = struct.pack("<Q", len(text)) + text

    @property
    def file_bytes(self) -> int:
        return len(self.head) + self.data_bytes

    def write(self, fo: BinaryIO, frames_of: Callable[[int], Iterator[np.ndarray]],
              progress: Progress = None) -> None:
        """Write the file to the seekable ``fo``: ``frames_of(i)`` yields segment i's latent
        frames as ``h×w`` token arrays (bits above ``bits[i]`` must be 0)."""
        fo.write(self.head)
        base = len(self.head)
        np_dtype = np.dtype(DTYPES[self.dtype])
        tf = self.header.temporal_factor
        for i, seg in enumerate(self.entries):
            t = seg[0].shape[0]
            n, frames_left = 0, self.header.segment_bounds(i)[1]
            for f, tok in enumerate(frames_of(i)):
                if f >= t or tok.shape != seg[0].shape[1:]:
                    raise InputError(f"segment {i}: latent frame {f} of shape {tok.shape} does "
                                     f"not fit tokens.{i} {seg[0].shape}")
                for e, p in zip(seg, [tok, *split_tokens(tok, self.split)]):
                    fo.seek(base + e.begin + f * p.size * np_dtype.itemsize)
                    fo.write(np.ascontiguousarray(p, dtype=np_dtype).tobytes())
                n += 1
                if progress:  # latent frame 0 is one frame, each later one up to f
                    step = min(frames_left, 1 if f == 0 else tf)
                    frames_left -= step
                    progress(step)
            if n != t:
                raise InputError(f"segment {i}: {n} latent frames, tokens.{i} holds {t}")
        fo.seek(base + self.data_bytes)
        fo.truncate()


class TokensFile:
    """A tokens file opened and checked without reading tensor data: :attr:`meta` (the
    parsed metadata), :attr:`tensors` (name → :class:`TensorEntry`, every dtype, shape and
    byte range checked against the metadata and the file size); :meth:`read` reads the
    tokens (their memory checked first)."""

    def __init__(self, path: Path, meta: TokensMeta, tensors: Dict[str, TensorEntry],
                 data_start: int) -> None:
        self.path, self.meta, self.tensors, self.data_start = path, meta, tensors, data_start

    @property
    def header(self) -> ct.Header:
        return self.meta.header

    @classmethod
    def open(cls, path: Union[str, Path]) -> "TokensFile":
        """Parse and check the file's header → :class:`InputError` (prefixed with the path)."""
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{p}: no such file")
        try:
            with open(p, "rb") as fo:
                return cls._open(p, fo, os.fstat(fo.fileno()).st_size)
        except InputError as e:
            raise InputError(f"{p}: {e}") from None

    @classmethod
    def _open(cls, p: Path, fo: BinaryIO, size: int) -> "TokensFile":
        raw = fo.read(8)
        if len(raw) < 8:
            raise InputError(f"not a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_FILE_HEADER or 8 + n > size:
            raise InputError(f"not a safetensors file (header length {n} exceeds "
                             f"{'the file' if n <= MAX_FILE_HEADER else MAX_FILE_HEADER})")
        try:
            text = fo.read(n).decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("not a safetensors file (header is not UTF-8)") from None
        try:
            table = _json(text, "its header", MAX_FILE_HEADER)
        except InputError as e:
            raise InputError(f"not a safetensors file ({e})") from None
        if not isinstance(table, dict):
            raise InputError("not a safetensors file (header is not a JSON object)")
        md = table.pop("__metadata__", None) or {}
        if not isinstance(md, dict) or md.get("format") != FORMAT or not isinstance(md.get("mgv"), str):
            raise InputError(f"not an mgv tokens file (metadata 'format' is not {FORMAT!r})")
        version = md.get("version", str(FORMAT_VERSION))
        if version != str(FORMAT_VERSION):
            raise InputError(f"tokens file version {_short(version)}; this reader reads "
                             f"{FORMAT_VERSION}")
        meta = parse_metadata(md["mgv"])
        data_size = size - 8 - n
        tensors: Dict[str, TensorEntry] = {}
        for name, e in table.items():
            tensors[name] = _tensor_entry(name, e, data_size)
        spans = sorted((e.begin, e.end, e.name) for e in tensors.values() if e.end > e.begin)
        for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
            if begin < end:
                raise InputError(f"tensors {a} and {b} overlap")
        _check_tensors(meta, tensors)
        return cls(p, meta, tensors, 8 + n)

    def token_bytes(self) -> int:
        """Memory :meth:`read` needs: the int64 tokens of every segment, plus one tensor as read."""
        h, w = self.header.latent_hw
        total = sum(self.header.latent_frames(self.header.segment_bounds(i)[1])
                    for i in range(self.header.segment_count)) * h * w * 8
        return total + max((e.end - e.begin) * 2 for e in self.tensors.values())

    def read_arrays(self) -> Tuple[ct.Header, Tuple[np.ndarray, ...], Tuple[int, ...]]:
        """The tokens, (header, int64 ``t×h×w`` token indices per segment, bits per segment) —
        what :meth:`neuralcodec.tokens.Tokens.load` holds → :class:`InputError` for values out of range,
        :class:`~neuralcodec.errors.ResourceError` when they cannot fit in memory."""
        check_memory(self.token_bytes(), f"reading {self.path.name}")
        meta = self.meta
        segs = []
        try:
            with open(self.path, "rb") as fo:
                for i, b in enumerate(meta.bits):
                    if f"tokens.{i}" in self.tensors:
                        tok = self._array(fo, f"tokens.{i}", b)
                    else:
                        tok, shift = None, 0
                        for j, s in enumerate(meta.split or ()):
                            part = self._array(fo, f"subtokens.{i}.{j}", s)
                            tok = part << shift if tok is None else tok | (part << shift)
                            shift += s
                        if tok.size and tok.max() >= 1 << b:
                            raise InputError(f"tokens.{i} has values outside 0..{(1 << b) - 1} "
                                             f"({b} bits)")
                    segs.append(tok)
        except InputError as e:
            raise InputError(f"{self.path}: {e}") from None
        return meta.header, tuple(segs), meta.bits

    def _array(self, fo: BinaryIO, name: str, bits: int) -> np.ndarray:
        e = self.tensors[name]
        fo.seek(self.data_start + e.begin)
        data = fo.read(e.end - e.begin)
        if len(data) != e.end - e.begin:
            raise InputError(f"the file ends inside tensor {name}")
        a = np.frombuffer(data, dtype=DTYPES[e.dtype]).reshape(e.shape)
        if a.size and (a.min() < 0 or a.max() >= 1 << bits):
            raise InputError(f"{name} has values outside 0..{(1 << bits) - 1} ({bits} bits)")
        return a.astype(np.int64)


def _tensor_entry(name, e, data_size: int) -> TensorEntry:
    """One header entry → :class:`TensorEntry`: name, dtype, shape and offsets checked
    against each other and the data size → :class:`InputError`."""
    if not isinstance(name, str) or not TENSOR_RE.match(name):
        raise InputError(f"unexpected tensor {_short(name)} (tokens.i and subtokens.i.j only)")
    if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
        raise InputError(f"tensor {name}: entry must have dtype, shape and data_offsets")
    dtype, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
    if dtype not in DTYPES:
        raise InputError(f"tensor {name} has dtype {_short(dtype)}, not an integer dtype "
                         f"({', '.join(DTYPES)})")
    ints = lambda v, n: (isinstance(v, list) and len(v) == n  # noqa: E731
                         and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_INT
                                 for x in v))
    if not ints(shape, 3):
        raise InputError(f"{name} must be a t×h×w integer tensor, got shape {_short(shape)}")
    if not ints(offs, 2) or not offs[0] <= offs[1] <= data_size:
        raise InputError(f"tensor {name}: data_offsets {_short(offs)} outside the file's "
                         f"{data_size} data bytes")
    nbytes = shape[0] * shape[1] * shape[2] * np.dtype(DTYPES[dtype]).itemsize
    if offs[1] - offs[0] != nbytes:
        raise InputError(f"tensor {name}: data_offsets hold {offs[1] - offs[0]} bytes, its "
                         f"{dtype} shape {shape} needs {nbytes}")
    return TensorEntry(name, dtype, tuple(shape), offs[0], offs[1])


def _check_tensors(meta: TokensMeta, tensors: Dict[str, TensorEntry]) -> None:
    """Every segment has ``tokens.{i}`` or all ``subtokens.{i}.{j}`` of the split, of the
    shape the header implies; nothing else → :class:`InputError`."""
    header, n = meta.header, meta.header.segment_count
    h, w = header.latent_hw
    for name, e in tensors.items():
        m = TENSOR_RE.match(name)
        i = int(m.group(1) or m.group(2))
        if i >= n:
            raise InputError(f"unexpected tensor {name} ({n} segments expected)")
        if m.group(3) is not None and int(m.group(3)) >= len(meta.split or ()):
            raise InputError(f"unexpected tensor {name} (split "
                             f"{','.join(map(str, meta.split or ())) or 'none'})")
        want = (header.latent_frames(header.segment_bounds(i)[1]), h, w)
        if e.shape != want:
            raise InputError(f"{name} has shape {e.shape}, the header implies {want}")
    for i in range(n):
        if f"tokens.{i}" in tensors:
            continue
        if not meta.split or any(f"subtokens.{i}.{j}" not in tensors for j in range(len(meta.split))):
            raise InputError(f"tensor tokens.{i} is missing ({n} segments expected)")
