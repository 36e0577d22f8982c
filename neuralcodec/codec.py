"""Codec API: video ↔ ``.mgv`` streams (EnCodec-style layers).

::

    compress_to_file(model, video, fo)          video file / frames → .mgv file object
    decompress_from_file(fo) → (meta, frames)   .mgv file object → VideoMeta + frame iterator
    compress(model, video) → bytes              thin wrappers over the two above
    decompress(data) → (meta, T×H×W×3 array)
    stream_info(fo) → dict                      header + segment table, no decoding

Encoding cuts the video into segments of ``segment_frames`` = 1 + f·k frames (default about
2 s). Each segment restarts the causal state and is streamed through the encoder chunk by chunk
(a first chunk of 1 frame, then chunks of :data:`CHUNK_FRAMES` frames), so peak memory depends
on the frame size only, not on the length of the video. The last segment is padded by
repeating its last frame; frames are edge-padded to the spatial factor and cropped after
decoding. A segment's payload holds the first ``bits`` LFQ bits of each token, raw-packed
(``none``) or entropy coded (``context``, used only where it is smaller).

Frames everywhere are ``H×W×3`` uint8 RGB numpy arrays; model tensors are ``1×3×T×H×W`` float
in [-1, 1] and codes ``1×K×t×h×w`` in {-1, 0, +1}.
"""
from __future__ import annotations

import io as _io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch

from . import container as ct
from .errors import InputError, MGVError, ModelError, PayloadError
from .io import VideoMeta, frames_of, probe, read_frames
from .layers import streaming

CHUNK_FRAMES = 16  # most frames per encoder chunk after the first (rounded to the temporal factor)
CHUNK_PIXELS = 16 * 640 * 360  # pixel budget of a chunk: large frames get shorter chunks
CHUNK_LATENTS = 4  # most latent frames per decoder chunk after the first
SEGMENT_SECONDS = 2.0  # default segment duration
ENTROPY_MODES = {"none": ct.ENTROPY_NONE, "context": ct.ENTROPY_CONTEXT}

Progress = Optional[Callable[[int], None]]  # called with the number of frames just processed
VideoInput = Union[str, Path, np.ndarray, Tuple[VideoMeta, Iterable[np.ndarray]]]
ModelSource = Union[torch.nn.Module, Callable[[str], torch.nn.Module], None]


@dataclass(frozen=True)
class EncodeResult:
    """Summary of one :func:`compress_to_file` call."""

    header: ct.Header
    bytes_written: int
    segments: int
    context_segments: int  # segments whose payload is entropy coded

    @property
    def bpp(self) -> float:
        """Bits per pixel of the whole stream (header and framing included)."""
        h = self.header
        return 8 * self.bytes_written / (h.width * h.height * h.frames)


# ---- model identity ---------------------------------------------------------------------------
def model_identity(model: torch.nn.Module) -> Tuple[str, bytes]:
    """(name, first 16 bytes of the weights' sha256) of a model loaded through
    :mod:`neuralcodec.weights` (which sets ``model.name`` and ``model.sha256``)."""
    name = getattr(model, "name", None)
    sha = getattr(model, "sha256", None)
    if not isinstance(name, str) or not isinstance(sha, str):
        raise ModelError("the model has no name/sha256 (load it with weights.load_model, or set "
                         "model.name and model.sha256)")
    try:
        digest = bytes.fromhex(sha)
    except ValueError:
        raise ModelError(f"model sha256 {sha!r} is not hex") from None
    if len(digest) < 16:
        raise ModelError("model sha256 is shorter than 16 bytes")
    return name, digest[:16]


def resolve_model(header: ct.Header, model: ModelSource = None) -> torch.nn.Module:
    """The model a stream names, checked against the header (sha256 prefix, K and factors).

    ``model``: None (load the registered model of that name), a callable ``name → model``, or
    a model object. Raises :class:`ModelError`.
    """
    from .weights import WeightsError, load_model

    try:
        if model is None:
            m = load_model(header.model_name)
        elif isinstance(model, torch.nn.Module):
            m = model
        else:
            m = model(header.model_name)
    except WeightsError as e:
        raise ModelError(str(e)) from None
    name, prefix = model_identity(m)
    if prefix != header.model_sha256:
        raise ModelError(f"stream needs model {header.model_name} with sha256 "
                         f"{header.model_sha256.hex()}…, got {name} with {prefix.hex()}…")
    cfg = m.cfg
    if (cfg.bits, cfg.temporal_factor, cfg.spatial_factor) != (
            header.model_bits, header.temporal_factor, header.spatial_factor):
        raise ModelError("model geometry (bits, temporal, spatial factor) does not match the stream")
    return m


def default_segment_frames(fps: Fraction, temporal_factor: int) -> int:
    """About :data:`SEGMENT_SECONDS` of frames, rounded to 1 + f·k (e.g. 49 at 25 fps)."""
    k = max(1, round((float(fps) * SEGMENT_SECONDS - 1) / temporal_factor))
    return min(1 + k * temporal_factor, ct.MAX_SEGMENT_FRAMES - (ct.MAX_SEGMENT_FRAMES - 1) % temporal_factor)


# ---- input ----------------------------------------------------------------------------------
def _source(video: VideoInput, fps: Optional[Fraction]) -> Tuple[VideoMeta, Iterator[np.ndarray]]:
    if isinstance(video, (str, Path)):
        meta = probe(video)
        return meta, read_frames(video, meta)
    if isinstance(video, np.ndarray):
        if video.ndim != 4 or video.shape[3] != 3 or video.dtype != np.uint8 or not video.shape[0]:
            raise InputError(f"frames must be a non-empty T×H×W×3 uint8 array, got "
                             f"{video.shape} {video.dtype}")
        meta = VideoMeta(video.shape[2], video.shape[1], Fraction(fps or 25), video.shape[0], "rgb24")
        return meta, frames_of(video)
    if isinstance(video, tuple) and len(video) == 2 and isinstance(video[0], VideoMeta):
        return video[0], iter(video[1])
    raise InputError(f"unsupported video input of type {type(video).__name__}")


def _take(it: Iterator[np.ndarray], n: int, meta: VideoMeta) -> List[np.ndarray]:
    out = []
    for _ in range(n):
        try:
            f = next(it)
        except StopIteration:
            break
        if f.shape != (meta.height, meta.width, 3):
            raise InputError(f"frame of shape {f.shape}, expected {(meta.height, meta.width, 3)}")
        out.append(f)
    return out


def frames_to_tensor(frames: List[np.ndarray], device: torch.device) -> torch.Tensor:
    """List of T frames ``H×W×3`` uint8 → ``1×3×T×H×W`` float in [-1, 1] on ``device``."""
    x = torch.from_numpy(np.stack(frames)).to(device)
    return (x.permute(3, 0, 1, 2).unsqueeze(0).float() / 127.5 - 1.0)


def tensor_to_frames(x: torch.Tensor) -> np.ndarray:
    """``1×3×T×H×W`` float in [-1, 1] → ``T×H×W×3`` uint8 (rounded)."""
    y = ((x[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return y.permute(1, 2, 3, 0).cpu().numpy()


# ---- payloads -------------------------------------------------------------------------------
def encode_payload(bits: np.ndarray, entropy: int) -> Tuple[int, bytes]:
    """Segment bits ``b×t×h×w`` uint8 {0,1} → (entropy mode used, payload). With
    ``context`` the raw mode is used wherever coding does not make the payload smaller."""
    from .kernels import pack_bits

    b, t, h, w = bits.shape
    raw = pack_bits(torch.from_numpy(bits).unsqueeze(0).float()).cpu().numpy().tobytes()
    if entropy == ct.ENTROPY_CONTEXT:
        from .entropy import encode_bits

        coded = encode_bits(bits)
        if len(coded) < len(raw):
            return ct.ENTROPY_CONTEXT, coded
    return ct.ENTROPY_NONE, raw


def decode_payload(seg: ct.Segment, bits: int) -> np.ndarray:
    """Segment payload → bits ``b×t×h×w`` uint8 {0,1} → :class:`PayloadError`."""
    shape = (bits, seg.latent_t, seg.latent_h, seg.latent_w)
    if seg.entropy == ct.ENTROPY_CONTEXT:
        from .entropy import decode_bits

        out = decode_bits(seg.data, shape)
        if out.shape != shape:
            raise PayloadError(f"segment {seg.index}: decoded shape {out.shape} != {shape}")
        return out
    from .kernels import unpack_bits

    packed = torch.frombuffer(bytearray(seg.data), dtype=torch.uint8)
    codes = unpack_bits(packed, (1,) + shape, torch.float32)
    return (codes[0] > 0).to(torch.uint8).numpy()


# ---- encoding -------------------------------------------------------------------------------
def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def chunk_frames(pixels: int, tf: int) -> int:
    """Frames per chunk after the first: a multiple of ``tf``, at most :data:`CHUNK_FRAMES`,
    and within :data:`CHUNK_PIXELS` where possible (activation memory ∝ chunk pixels)."""
    n = min(CHUNK_FRAMES, CHUNK_PIXELS // max(1, pixels))
    return max(tf, n // tf * tf)


def _encode_segment(model, it: Iterator[np.ndarray], meta: VideoMeta, seg_frames: int,
                    bits: int, progress: Progress) -> Tuple[int, Optional[np.ndarray]]:
    """Encode up to ``seg_frames`` frames from ``it`` with a fresh causal state →
    (frames read, bits ``b×t×h×w`` uint8) or (0, None) at the end of the input."""
    tf = model.cfg.temporal_factor
    device = _model_device(model)
    latents: List[np.ndarray] = []
    n = 0
    step = chunk_frames(meta.width * meta.height, tf)
    with streaming(model):
        while n < seg_frames:
            want = 1 if n == 0 else min(step, seg_frames - n)
            chunk = _take(it, want, meta)
            got = len(chunk)
            if not got:
                break
            n += got
            if n > 1 and got % tf:  # the input ended inside a chunk: repeat the last frame
                chunk += [chunk[-1]] * (tf - got % tf)
            x = model.pad_spatial(frames_to_tensor(chunk, device))
            z = model.encode_latents(x)
            latents.append((z[0, :bits] > 0).to(torch.uint8).cpu().numpy())
            if progress:
                progress(got)
            if got < want:
                break
    if n == 0:
        return 0, None
    return n, np.ascontiguousarray(np.concatenate(latents, axis=1))


def check_encode_args(model: torch.nn.Module, *, bits: Optional[int] = None,
                      entropy: str = "context", segment_frames: Optional[int] = None) -> None:
    """Validate :func:`compress_to_file` options for ``model`` → :class:`InputError` /
    :class:`ModelError` (lets a caller fail before it starts reading the input)."""
    name, _ = model_identity(model)
    if entropy not in ENTROPY_MODES:
        raise InputError(f"unknown entropy mode {entropy!r} (use none or context)")
    k = model.cfg.bits
    if bits is not None and (not isinstance(bits, int) or not 1 <= bits <= k):
        raise InputError(f"bits must be in 1..{k} for model {name}, got {bits}")
    tf = model.cfg.temporal_factor
    if segment_frames is not None and (not isinstance(segment_frames, int) or segment_frames < 1
                                       or (segment_frames - 1) % tf
                                       or segment_frames > ct.MAX_SEGMENT_FRAMES):
        raise InputError(f"segment frames must be 1 + {tf}·k (<= {ct.MAX_SEGMENT_FRAMES}), "
                         f"got {segment_frames}")


def compress_to_file(model: torch.nn.Module, video: VideoInput, fo: BinaryIO, *,
                     bits: Optional[int] = None, entropy: str = "context",
                     segment_frames: Optional[int] = None, progress: Progress = None,
                     fps: Optional[Fraction] = None) -> EncodeResult:
    """Encode ``video`` with ``model`` into the binary file object ``fo``.

    ``video``: a path PyAV can open, a ``T×H×W×3`` uint8 RGB array (rate ``fps``, default 25)
    or ``(VideoMeta, iterable of frames)``. ``bits``: LFQ bits stored per token (1..K, default
    K). ``entropy``: "context" (entropy code where it helps) or "none". ``segment_frames``:
    1 + f·k frames per segment (default about 2 s). ``progress(n)`` is called as frames are
    encoded. The frame count is patched into the header at the end when the input did not
    declare it (needs a seekable ``fo``). Raises :class:`MGVError` subclasses for bad input.
    """
    check_encode_args(model, bits=bits, entropy=entropy, segment_frames=segment_frames)
    name, prefix = model_identity(model)
    cfg = model.cfg
    k = cfg.bits
    bits = k if bits is None else bits
    meta, it = _source(video, fps)
    tf = cfg.temporal_factor
    seg = segment_frames or default_segment_frames(meta.fps, tf)
    pix = meta.pix_fmt if ct._PIXFMT_RE.match(meta.pix_fmt.encode("ascii", "replace")) else "rgb24"
    if meta.frames is not None and meta.frames > ct.MAX_FRAMES:
        raise InputError(f"{meta.frames} frames exceed the cap of {ct.MAX_FRAMES}")
    try:
        header = ct.Header(width=meta.width, height=meta.height, frames=max(1, meta.frames or 1),
                           fps_num=meta.fps.numerator, fps_den=meta.fps.denominator,
                           model_bits=k, bits=bits, temporal_factor=tf,
                           spatial_factor=cfg.spatial_factor, entropy=ENTROPY_MODES[entropy],
                           segment_frames=seg, model_sha256=prefix, pix_fmt=pix[:32],
                           model_name=name)
        header.check()
    except MGVError as e:
        raise InputError(f"cannot encode this input: {e}") from None
    writer = ct.Writer(fo, header)
    h, w = header.latent_hw
    total = 0
    n_ctx = 0
    index = 0
    model.eval()
    while True:
        n, seg_bits = _encode_segment(model, it, meta, seg, bits, progress)
        if n == 0:
            break
        if total + n > ct.MAX_FRAMES:
            raise InputError(f"input has more than {ct.MAX_FRAMES} frames")
        if seg_bits.shape[1:] != (header.latent_frames(n), h, w):
            raise MGVError(f"internal: latent shape {seg_bits.shape} for {n} frames")
        mode, data = encode_payload(seg_bits, header.entropy)
        n_ctx += mode == ct.ENTROPY_CONTEXT
        writer.write_segment(ct.Segment(index, total, n, seg_bits.shape[1], h, w, mode, data))
        total += n
        index += 1
        if n < seg:
            break
    if total == 0:
        raise InputError("the input has no frames")
    if total != header.frames:
        header = ct.replace_header(header, frames=total)
        try:
            writer.rewrite_header(header)
        except (OSError, ValueError, AttributeError):
            raise InputError("the input did not declare its frame count and the output is not "
                             "seekable") from None
    writer.close()
    return EncodeResult(header, writer.pos, index, n_ctx)


def compress(model: torch.nn.Module, video: VideoInput, **kw) -> bytes:
    """:func:`compress_to_file` into memory → the ``.mgv`` bytes."""
    buf = _io.BytesIO()
    compress_to_file(model, video, buf, **kw)
    return buf.getvalue()


# ---- decoding -------------------------------------------------------------------------------
def _frame_range(header: ct.Header, frames) -> Tuple[int, int]:
    if frames is None:
        return 0, header.frames
    a, b = frames
    a = 0 if a is None else a
    b = header.frames if b is None else min(b, header.frames)
    if not (isinstance(a, int) and isinstance(b, int)) or a < 0 or a >= b:
        raise InputError(f"frame range {frames} is empty or outside 0..{header.frames}")
    return a, b


def _decode_segment(model, header: ct.Header, seg: ct.Segment, a: int, b: int,
                    progress: Progress) -> Iterator[np.ndarray]:
    """Frames ``a..b-1`` (absolute numbers) of ``seg`` as ``H×W×3`` uint8."""
    bits = decode_payload(seg, header.bits)
    device = _model_device(model)
    k = header.model_bits
    codes = torch.zeros((1, k) + bits.shape[1:], dtype=torch.float32)
    codes[0, :header.bits] = torch.from_numpy(bits).float() * 2 - 1
    frame = seg.first_frame
    stop = min(b, seg.first_frame + seg.frames)
    step = max(1, min(CHUNK_LATENTS, chunk_frames(header.width * header.height,
                                                  header.temporal_factor) // header.temporal_factor))
    with streaming(model):
        t = 0
        while t < seg.latent_t and frame < stop:
            n = 1 if t == 0 else step
            x = model.decode(codes[:, :, t:t + n].to(device), bits=header.bits)
            t += n
            out = tensor_to_frames(x[:, :, :, :header.height, :header.width])
            for f in out:
                if frame >= stop:
                    break
                if frame >= a:
                    if progress:
                        progress(1)
                    yield f
                frame += 1


def decompress_from_file(fo: BinaryIO, *, frames: Optional[Tuple[Optional[int], Optional[int]]] = None,
                         model: ModelSource = None, progress: Progress = None
                         ) -> Tuple[VideoMeta, Iterator[np.ndarray]]:
    """Open a ``.mgv`` stream → (metadata of the decoded video, iterator of ``H×W×3`` uint8 RGB
    frames). The header is read and the model resolved (and checked) before this returns;
    frames are decoded lazily, segment by segment.

    ``frames=(a, b)`` decodes frames ``a..b-1`` only (either may be None), reading only the
    segments they need through the index when ``fo`` is seekable. ``model``: see
    :func:`resolve_model`.
    """
    reader = ct.Reader(fo)
    header = reader.header
    a, b = _frame_range(header, frames)
    m = resolve_model(header, model).eval()
    meta = VideoMeta(header.width, header.height, header.fps, b - a, header.pix_fmt)
    first_seg = a // header.segment_frames
    last_seg = (b - 1) // header.segment_frames
    index = reader.index() if (a > 0 and reader.seekable()) else None

    def gen() -> Iterator[np.ndarray]:
        if index is not None:
            segs = (reader.segment_at(index[i].offset, i) for i in range(first_seg, last_seg + 1))
        else:
            segs = reader.segments(first_seg)
        for seg in segs:
            if seg.index > last_seg:
                break
            yield from _decode_segment(m, header, seg, a, b, progress)

    return meta, gen()


def decompress(data: bytes, **kw) -> Tuple[VideoMeta, np.ndarray]:
    """:func:`decompress_from_file` from memory → (meta, ``T×H×W×3`` uint8 array)."""
    meta, it = decompress_from_file(_io.BytesIO(data), **kw)
    return meta, np.stack(list(it))


# ---- inspection -----------------------------------------------------------------------------
def stream_info(fo: BinaryIO) -> dict:
    """Header and segment table of a ``.mgv`` stream without decoding any payload: from the
    index (seekable files) or a scan. Returns a JSON-friendly dict."""
    reader = ct.Reader(fo)
    h = reader.header
    index = reader.index() if reader.seekable() else None
    rows = []
    if index is not None:
        segs = (reader.segment_at(e.offset, i) for i, e in enumerate(index))
    else:
        segs = reader.segments()
    for seg in segs:
        rows.append({"index": seg.index, "first_frame": seg.first_frame, "frames": seg.frames,
                     "latent_shape": [h.bits, seg.latent_t, seg.latent_h, seg.latent_w],
                     "entropy": ct.ENTROPY_NAMES[seg.entropy], "bytes": len(seg.data),
                     "bpp": 8 * len(seg.data) / (seg.frames * h.width * h.height)})
    size = fo.seek(0, 2) - reader.base if reader.seekable() else None
    d = {"version": "%d.%d" % reader.version, "header": h.to_dict(), "segments": rows}
    if size is not None:
        d["file_bytes"] = size
        d["bpp"] = 8 * size / (h.frames * h.width * h.height)
        d["kbps"] = 8 * size / 1000 / float(h.frames / h.fps)
    return d
