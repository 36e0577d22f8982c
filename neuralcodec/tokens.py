"""Tokens for generative models: the LFQ token indices of a video, in and out.

::

    tokenize(model, video) → Tokens          encode a video (the bits a stream would store)
    tokens_from_stream(fo) → Tokens          read a .mgv stream's stored bits (no model run)
    detokenize(model, tokens) → T×H×W×3      decode tokens to frames (what `mgv decode` gives)
    Tokens.save(path, split=(9, 9))          safetensors file, loadable with safetensors alone
    Tokens.load(path) → Tokens

A token is the index ``Σ_k 2^k · bit_k`` over the ``b`` stored bits of a latent position
(``bitstream_spec.md`` §5: bit k is 1 iff the encoder's latent ``z_k > 0``; channel 0 is the
least significant bit). Segment ``i`` of a stream becomes one ``t×h×w`` integer array (latent
frames × token rows × token columns); segments are independent, as in the stream.

File layout (``.safetensors``, specified in ``bitstream_spec.md`` appendix B, read as untrusted
input: :class:`TokensFile`): tensor ``tokens.{i}`` (int32, or int64 when a token can have
32 bits) for segment i; with ``split=(s_0, s_1, …)`` also ``subtokens.{i}.{j}``, the bits
``Σ_{l<j} s_l`` … ``Σ_{l≤j} s_l − 1`` of each token as an index of ``2^{s_j}`` (Open-MAGVIT2's
factorized vocabularies: ``split=(9, 9)`` turns 2^18 into two vocabularies of 512). The
metadata key ``mgv`` holds the header fields as JSON (:meth:`Tokens.metadata`).
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
import torch

from . import container as ct
from .chunks import Progress, decode_segment
from .codec import VideoInput, check_encode_args, open_video, stream_header
from .errors import InputError, MGVError
from .resources import check_decoder_memory, check_memory
from .kernels import token_indices
from .model import for_inference
from .payload import payload_frames
from .recovery import check_stream_size
from .quantizer import indices_to_codes
from .rdo import DEFAULT_LAMBDA, select_codes
from .refine import DEFAULT_REFINE, check_refine_size, encode_refined
from .video_io import VideoMeta
from .weights import ModelSource, resolve_model

FORMAT = "mgv-tokens"  # value of the metadata key "format"
FORMAT_VERSION = 1  # bumped when the file layout changes incompatibly


@dataclass(frozen=True)
class Tokens:
    """The tokens of one video, segment by segment.

    ``header`` is the stream header the tokens belong to (geometry, fps, frame count, model
    identity; ``header.bits`` is the most bits any segment stores); ``segments[i]`` is a
    ``t_i×h×w`` int64 array of token indices in ``0 .. 2^bits[i] − 1``.
    """

    header: ct.Header  # stream header: size, fps, frames, segment_frames, model name and sha256
    segments: Tuple[np.ndarray, ...]  # per segment: t×h×w int64 token indices
    bits: Tuple[int, ...]  # per segment: bits per token (1..header.bits)

    # ---- views -----------------------------------------------------------------------------
    @property
    def meta(self) -> VideoMeta:
        """Metadata of the video the tokens decode to."""
        h = self.header
        return VideoMeta(h.width, h.height, h.fps, h.frames, h.pix_fmt)

    def segment_bits(self, i: int) -> np.ndarray:
        """Segment ``i`` as the bit array ``b×t×h×w`` uint8 {0, 1} of the stream (bit k of
        every token on plane k)."""
        tok = self.segments[i]
        k = np.arange(self.bits[i], dtype=np.int64).reshape(-1, 1, 1, 1)
        return ((tok[None] >> k) & 1).astype(np.uint8)

    def segment_codes(self, i: int, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Segment ``i`` as codes ``1×b×t×h×w`` in {-1, +1} on ``device`` (what the decoder
        reads; bit k of every token on channel k)."""
        tok = torch.from_numpy(self.segments[i]).to(device)
        return indices_to_codes(tok, self.bits[i], dim=0, dtype=dtype).unsqueeze(0)

    def split(self, sizes: Sequence[int]) -> List[List[np.ndarray]]:
        """Sub-tokens: for each segment, one array per group of ``sizes`` (low bits first),
        holding bits ``Σ_{l<j} sizes_l`` … of each token as an index of ``2^sizes_j``.
        ``sizes`` must add up to ``header.bits``."""
        sizes = check_split(sizes, self.header.bits)
        out = []
        for tok in self.segments:
            parts, shift = [], 0
            for s in sizes:
                parts.append((tok >> shift) & ((1 << s) - 1))
                shift += s
            out.append(parts)
        return out

    def metadata(self, split: Optional[Sequence[int]] = None) -> dict:
        """The header fields as a JSON-friendly dict (stored under the metadata key ``mgv``;
        schema: :func:`parse_metadata`)."""
        return metadata_dict(self.header, self.bits, split)

    # ---- files -----------------------------------------------------------------------------
    def tensors(self, split: Optional[Sequence[int]] = None) -> Dict[str, np.ndarray]:
        """``{"tokens.{i}": t×h×w, "subtokens.{i}.{j}": t×h×w}`` (int32; int64 for 32-bit
        tokens), the tensors :meth:`save` writes."""
        dtype = np.int64 if self.header.bits > 31 else np.int32
        out = {f"tokens.{i}": np.ascontiguousarray(t.astype(dtype))
               for i, t in enumerate(self.segments)}
        if split:
            for i, parts in enumerate(self.split(split)):
                for j, p in enumerate(parts):
                    out[f"subtokens.{i}.{j}"] = np.ascontiguousarray(p.astype(dtype))
        return out

    def save(self, target: Union[str, Path], split: Optional[Sequence[int]] = None) -> None:
        """Write a ``.safetensors`` file (see the module docstring)."""
        sizes = check_split(split, self.header.bits) if split else None
        layout = FileLayout(self.header, self.bits, sizes)
        with open(target, "wb") as fo:
            layout.write(fo, lambda i: iter(self.segments[i]))

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Tokens":
        """Read a tokens file written by :meth:`save` (or made by a generative model with the
        same tensors and metadata) → :class:`InputError` when it is not one or is inconsistent,
        :class:`~neuralcodec.errors.ResourceError` when its tokens cannot fit in memory.
        ``tokens.{i}`` may be absent when every ``subtokens.{i}.{j}`` is present. Everything
        but the token values is checked before any tensor data is read
        (:meth:`TokensFile.open`)."""
        return TokensFile.open(path).read()


def check_split(sizes: Sequence[int], bits: int) -> Tuple[int, ...]:
    """Validate a sub-token split (positive sizes adding up to ``bits``) → tuple."""
    sizes = tuple(int(s) for s in sizes)
    if not sizes or any(s < 1 for s in sizes) or sum(sizes) != bits:
        raise InputError(f"split {','.join(map(str, sizes))} must be positive sizes adding up to "
                         f"the {bits} stored bits")
    return sizes


def parse_split(spec: Optional[str]) -> Optional[Tuple[int, ...]]:
    """"9,9" → (9, 9); None → None (:class:`InputError` for anything else)."""
    if spec is None:
        return None
    try:
        return tuple(int(x) for x in spec.split(","))
    except ValueError:
        raise InputError(f"--split {spec!r}: expected sizes like 9,9") from None


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


def metadata_dict(header: ct.Header, bits: Sequence[int], split: Optional[Sequence[int]]) -> dict:
    """The ``mgv`` metadata of a tokens file (schema: :func:`parse_metadata`)."""
    h = header
    return {"model": h.model_name, "model_sha256": h.model_sha256.hex(),
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
    return TokensMeta(header, tuple(bits or [header.bits] * n),
                      check_split(split, header.bits) if split else None)


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
                 split: Optional[Sequence[int]] = None) -> None:
        self.header, self.bits, self.split = header, tuple(bits), tuple(split or ())
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
              "mgv": json.dumps(metadata_dict(header, self.bits, self.split or None))}
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
                parts = [tok]
                shift = 0
                for s in self.split:
                    parts.append((tok >> shift) & ((1 << s) - 1))
                    shift += s
                for e, p in zip(seg, parts):
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

    def read(self) -> Tokens:
        """The tokens → :class:`InputError` for values out of range,
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
        return Tokens(meta.header, tuple(segs), meta.bits)

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


def bits_to_tokens(bits: np.ndarray) -> np.ndarray:
    """Bit array ``b×t×h×w`` uint8 {0,1} → token indices ``t×h×w`` int64 (Σ_k 2^k·bit_k)."""
    k = np.arange(bits.shape[0], dtype=np.int64).reshape(-1, 1, 1, 1)
    return (bits.astype(np.int64) << k).sum(axis=0)


# ---- producing tokens -----------------------------------------------------------------------
def _stream_plan(fo: BinaryIO, bits: Optional[int]) -> Tuple[ct.Reader, ct.Header, Tuple[int, ...]]:
    """Read a stream's records once, strictly, without decoding a payload → (reader, header
    with ``bits`` capped, bits per segment). Refuses a file too short for its segments at
    once (spec §8b, :func:`neuralcodec.recovery.check_stream_size`) and ``bits`` outside
    1..b (:class:`InputError`)."""
    reader = ct.Reader(fo)
    header = reader.header
    if bits is not None and not 1 <= bits <= header.bits:
        raise InputError(f"bits must be in 1..{header.bits} for this stream, got {bits}")
    check_stream_size(reader)
    keep = bits or header.bits
    nbits = tuple(min(seg.stored_bits(header), keep) for seg in reader.segments())
    if bits is not None:
        header = ct.replace_header(header, bits=min(bits, header.bits))
    return reader, header, nbits


def _stream_frames(reader: ct.Reader, header: ct.Header, nbits: Sequence[int]
                   ) -> Callable[[int], Iterator[np.ndarray]]:
    """``frames_of(i)`` for :meth:`FileLayout.write`: segment i's tokens one latent frame at a
    time (``h×w`` int64), its first ``nbits[i]`` bits, from a second strict scan."""
    segments = reader.segments()

    def frames_of(i: int) -> Iterator[np.ndarray]:
        seg = next(segments)
        # 1×b×1×h×w codes in {-1, +1}; a mode-1 payload's check bits fail after its last frame
        for codes in payload_frames(seg, seg.stored_bits(reader.header)):
            yield bits_to_tokens((codes[0, :nbits[i]] > 0).numpy())[0]

    return frames_of


def plan_stream_tokens(fo: BinaryIO, bits: Optional[int] = None,
                       split: Optional[Sequence[int]] = None
                       ) -> Tuple[FileLayout, Callable[[int], Iterator[np.ndarray]]]:
    """Check the ``.mgv`` stream ``fo`` (seekable; every record read once, strictly, no
    payload decoded) and the options → (the tokens file's :class:`FileLayout`, the
    ``frames_of`` its :meth:`FileLayout.write` takes)."""
    reader, header, nbits = _stream_plan(fo, bits)
    sizes = check_split(split, header.bits) if split else None
    return FileLayout(header, nbits, sizes), _stream_frames(reader, header, nbits)


def write_stream_tokens(fo: BinaryIO, target: BinaryIO, bits: Optional[int] = None,
                        split: Optional[Sequence[int]] = None, progress: Progress = None
                        ) -> FileLayout:
    """Write the tokens file of the ``.mgv`` stream ``fo`` (seekable) to ``target`` (a
    seekable binary file), one latent frame at a time: memory stays that of one frame
    whatever the stream announces (a 26 KB stream may legally expand to gigabytes of tokens;
    the file grows, the process does not). → the file's layout. Damage raises its
    :class:`~neuralcodec.errors.StreamError` (the caller discards ``target``)."""
    layout, frames_of = plan_stream_tokens(fo, bits, split)
    layout.write(target, frames_of, progress)
    return layout


def tokens_from_stream(fo: BinaryIO, bits: Optional[int] = None) -> Tokens:
    """The tokens stored in a ``.mgv`` stream (strict reader: damage raises its
    :class:`~neuralcodec.errors.StreamError`); no model is loaded or run. ``bits`` keeps only
    the first ``bits`` bits of every token (the nested code's lower rate). The int64 tokens of
    the whole stream are held in memory: :class:`~neuralcodec.errors.ResourceError` up front
    when they cannot fit (:func:`write_stream_tokens` writes a file in bounded memory)."""
    reader, header, nbits = _stream_plan(fo, bits)
    h, w = header.latent_hw
    t_all = sum(header.latent_frames(header.segment_bounds(i)[1]) for i in range(len(nbits)))
    check_memory(t_all * h * w * 8 + 8 * max(nbits) * h * w, "holding the stream's tokens")
    frames_of = _stream_frames(reader, header, nbits)
    segs = tuple(np.stack(list(frames_of(i))) for i in range(len(nbits)))
    return Tokens(header, segs, nbits)


def tokenize(model: torch.nn.Module, video: VideoInput, *, bits: Optional[int] = None,
             segment_frames: Optional[int] = None, fps: Optional[Fraction] = None,
             progress: Progress = None, rdo: float = DEFAULT_LAMBDA,
             refine: int = DEFAULT_REFINE) -> Tokens:
    """Encode ``video`` (see :func:`neuralcodec.codec.open_video`) → the tokens ``mgv encode``
    with the same options would store (``bits`` per token, default K; ``segment_frames``,
    ``rdo`` and ``refine`` as there: :func:`neuralcodec.rdo.select_codes`,
    :func:`neuralcodec.refine.refine_latents`). The token indices are computed
    on the model's device (:func:`neuralcodec.kernels.token_indices`)."""
    check_encode_args(model, bits=bits, segment_frames=segment_frames, rdo=rdo, refine=refine)
    meta, it = open_video(video, fps)
    header = stream_header(model, meta, bits=bits, segment_frames=segment_frames)
    check_refine_size(meta.width, meta.height, refine)
    model.eval()
    segs: List[np.ndarray] = []
    total = 0
    while True:
        n, latents = encode_refined(model, it, meta, header.segment_frames, header.bits, refine,
                                    progress)
        if n == 0:
            break
        codes = select_codes(latents, model.quantizer, header.bits, rdo)
        total += n
        if total > ct.MAX_FRAMES:
            raise InputError(f"input has more than {ct.MAX_FRAMES} frames")
        idx = token_indices(codes)[0].to(torch.int64) & 0xFFFFFFFF  # 32 bits: int32 wraps
        segs.append(idx.cpu().numpy())
        if n < header.segment_frames:
            break
    if total == 0:
        raise InputError("the input has no frames")
    header = ct.replace_header(header, frames=total)
    return Tokens(header, tuple(segs), (header.bits,) * len(segs))


def detokenize_frames(model: ModelSource, tokens: Tokens, progress: Progress = None,
                      precision: str = "auto") -> Tuple[VideoMeta, Iterator[np.ndarray]]:
    """Tokens → (metadata, iterator of ``H×W×3`` uint8 RGB frames), decoded segment by segment
    exactly as :func:`neuralcodec.codec.decompress_from_file` decodes the same bits.
    ``model``: as in :func:`neuralcodec.weights.resolve_model` (checked against the tokens'
    model name and sha256); ``precision``: as in :func:`~neuralcodec.codec.decompress_from_file`."""
    header = tokens.header
    m = resolve_model(header, model).eval()
    if model is None:  # as decompress_from_file runs a model it loads
        for_inference(m, "cpu", precision)
    check_decoder_memory(m, header)
    h, w = header.latent_hw

    def gen() -> Iterator[np.ndarray]:
        for i, tok in enumerate(tokens.segments):
            first, n = header.segment_bounds(i)
            seg = ct.Segment(i, first, n, tok.shape[0], h, w, ct.ENTROPY_NONE, b"", tokens.bits[i])
            yield from decode_segment(m, header, seg, tokens.segment_codes(i, dtype=m.dtype),
                                      progress)

    return tokens.meta, gen()


def detokenize(model: ModelSource, tokens: Tokens) -> np.ndarray:
    """Tokens → the decoded video ``T×H×W×3`` uint8 RGB (see :func:`detokenize_frames`)."""
    _, it = detokenize_frames(model, tokens)
    return np.stack(list(it))
