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
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch

from . import container as ct
from .errors import (InputError, MGVError, ModelError, PayloadError, RecordError, ResourceError,
                     StreamError, Truncated)
from .io import VideoMeta, frames_of, probe, read_frames
from .layers import streaming
from .model import PRECISIONS, for_inference

CHUNK_FRAMES = 16  # most frames per encoder chunk after the first (rounded to the temporal factor)
CHUNK_PIXELS = 16 * 640 * 360  # pixel budget of a chunk: large frames get shorter chunks
CHUNK_LATENTS = 4  # most latent frames per decoder chunk after the first
SEGMENT_SECONDS = 2.0  # default segment duration
LAZY_BITS = 1 << 26  # segments with more bits than this are decoded one latent frame at a time
MIN_SEGMENT_RECORD = 16 + 20 + 1  # bytes of the smallest SEGMENT record (framing, head, data)
CONCEAL_MIN_FRAMES = 1000  # a recovering decode may always conceal this many frames …
CONCEAL_RATIO = 8  # … or this many per frame of the intact segments it found
ENTROPY_MODES = {"none": ct.ENTROPY_NONE, "context": ct.ENTROPY_CONTEXT}

Progress = Optional[Callable[[int], None]]  # called with the number of frames just processed
VideoInput = Union[str, Path, np.ndarray, Tuple[VideoMeta, Iterable[np.ndarray]]]
ModelSource = Union[torch.nn.Module, Callable[[str], torch.nn.Module], None]


@dataclass(frozen=True)
class EncodeResult:
    """Summary of one :func:`compress_to_file` call."""

    header: ct.Header  # the final header (frame count corrected)
    bytes_written: int  # size of the stream
    segments: int  # number of segments
    context_segments: int  # segments whose payload is entropy coded
    segment_bits: Tuple[int, ...] = ()  # bits per token of each segment
    video_bytes: int = 0  # stream bytes without AUDIO records (what a target rate counts)
    rate_note: Optional[str] = None  # why a target rate was missed by more than 10 %, if it was
    warnings: Tuple[str, ...] = ()  # what was left out (e.g. audio tracks beyond the 16th)

    @property
    def video_kbps(self) -> float:
        """Rate of the stream without its audio, in kbit/s."""
        return 8 * self.video_bytes / 1000 / float(self.header.frames / self.header.fps)

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


# ---- audio (carried through unchanged) -----------------------------------------------------
def _packet_time(p, start: int, tb: Fraction, last: Fraction) -> Fraction:
    t = p.pts if p.pts is not None else p.dts
    return last if t is None else (t - start) * tb


class AudioSource:
    """The audio tracks of a video file, demuxed lazily (packets as-is, no decoding).

    :meth:`tracks` describes each track; :meth:`take_until` returns the packets whose time
    (relative to the first video frame) is before ``t`` seconds, so the encoder can interleave
    them with the segments that cover the same time and memory stays bounded.
    """

    def __init__(self, path) -> None:
        import av

        from .io import _open

        self._c = _open(path)
        try:
            v = self._c.streams.video[0]
            vstart = (v.start_time or 0) * v.time_base if v.start_time is not None else Fraction(0)
            every = list(self._c.streams.audio)
            self.streams = every[:ct.MAX_AUDIO_TRACKS]
            self._tracks = []
            self.warnings: List[str] = [
                f"audio track {i} dropped: a stream holds at most {ct.MAX_AUDIO_TRACKS} tracks"
                for i in range(ct.MAX_AUDIO_TRACKS, len(every))]
            if self.streams:
                firsts = _first_packets(path, len(self.streams))
            for i, st in enumerate(self.streams):
                cc = st.codec_context
                tb = Fraction(st.time_base)
                name = cc.name if ct._CODEC_RE.match(cc.name.encode("ascii", "replace")) else None
                if name is None or firsts.get(i) is None or not cc.sample_rate:
                    self.warnings.append(f"audio track {i} ({cc.name}) dropped: it cannot be "
                                         f"carried (no packets, codec parameters or sample rate)")
                    continue
                layout = cc.layout
                ch = max(1, min(255, layout.nb_channels if layout is not None else 1))
                self._tracks.append(ct.AudioTrack(i, name[:32], tb, int(cc.sample_rate), ch,
                                                  int(vstart / tb), firsts[i]))
            keep = {t.track for t in self._tracks}
            self._by_index = {st.index: i for i, st in enumerate(self.streams) if i in keep}
            self._it = self._c.demux(*[self.streams[i] for i in sorted(keep)]) if keep else iter(())
        except av.FFmpegError as e:
            self.close()
            raise InputError(f"{path}: cannot read its audio ({e})") from None
        self._path = path
        self._pending = None
        self._last: Dict[int, Fraction] = {}

    def tracks(self) -> List[ct.AudioTrack]:
        return list(self._tracks)

    def take_until(self, t: Optional[float]) -> Dict[int, List[ct.AudioPacket]]:
        """Packets (track → list, decoding order) with time < ``t`` s (all when None)."""
        import av

        out: Dict[int, List[ct.AudioPacket]] = {}
        info = {t_.track: t_ for t_ in self._tracks}
        try:
            while True:
                p = self._pending if self._pending is not None else next(self._it, None)
                self._pending = None
                if p is None:
                    return out
                if not p.size:
                    continue
                k = self._by_index[p.stream.index]
                tr = info[k]
                when = _packet_time(p, tr.start, tr.time_base, self._last.get(k, Fraction(0)))
                if t is not None and when >= t:
                    self._pending = p
                    return out
                self._last[k] = when
                out.setdefault(k, []).append(ct.AudioPacket(p.pts, p.dts, int(p.duration or 0),
                                                            bool(p.is_keyframe), bytes(p)))
        except av.FFmpegError as e:
            raise InputError(f"{self._path}: audio demuxing failed ({e})") from None

    def close(self) -> None:
        self._c.close()


def _first_packets(path, n: int) -> Dict[int, bytes]:
    """Per audio track: a Matroska file with the track's codec parameters and first packet
    (the template a decoder creates its output stream from)."""
    import av

    from .io import _open

    out: Dict[int, bytes] = {}
    c = _open(path)
    try:
        streams = list(c.streams.audio)[:n]
        for i, st in enumerate(streams):
            p0 = next((p for p in c.demux(st) if p.size), None)
            c.seek(0) if i + 1 < len(streams) else None
            if p0 is None:
                continue
            buf = _io.BytesIO()
            t = av.open(buf, "w", format="matroska")
            try:
                o = t.add_stream_from_template(st)
                p0.stream = o
                t.mux(p0)
            finally:
                t.close()
            if len(buf.getvalue()) <= ct.MAX_AUDIO_TEMPLATE:
                out[i] = buf.getvalue()
    except av.FFmpegError:
        pass  # a track whose template cannot be made is not carried (reported by the caller)
    finally:
        c.close()
    return out


def _write_audio(writer: "ct.Writer", packets: Dict[int, List[ct.AudioPacket]]) -> None:
    for track, pk in sorted(packets.items()):
        group: List[ct.AudioPacket] = []
        size = 0
        for p in pk:
            group.append(p)
            size += len(p.data) + ct.AUDIO_PACKET.size
            if size >= ct.AUDIO_RECORD_TARGET:
                writer.write_record(ct.REC_AUDIO, ct.AudioPackets(track, tuple(group)).to_payload(), False)
                group, size = [], 0
        if group:
            writer.write_record(ct.REC_AUDIO, ct.AudioPackets(track, tuple(group)).to_payload(), False)


class AudioSink:
    """Receives the AUDIO records met while a stream is decoded: :attr:`tracks` (track →
    :class:`~neuralcodec.container.AudioTrack`, all known before the first segment) and a FIFO
    :attr:`packets` of ``(track, AudioPacket)`` that a writer drains as it goes.
    ``keep=False`` only counts (:attr:`stats`: track → [packets, bytes])."""

    def __init__(self, keep: bool = True) -> None:
        self.tracks: Dict[int, ct.AudioTrack] = {}
        self.packets: deque = deque()
        self.keep = keep
        self.stats: Dict[int, List[int]] = {}

    def add(self, item) -> None:
        if item is None:  # an AUDIO kind of a later minor version: skipped
            return
        if isinstance(item, ct.AudioTrack):
            self.tracks[item.track] = item
        elif item.track in self.tracks:
            st = self.stats.setdefault(item.track, [0, 0])
            for p in item.packets:
                st[0] += 1
                st[1] += len(p.data)
                if self.keep:
                    self.packets.append((item.track, p))


# ---- input ----------------------------------------------------------------------------------
def open_video(video: VideoInput, fps: Optional[Fraction] = None) -> Tuple[VideoMeta, Iterator[np.ndarray]]:
    """A video input (path, ``T×H×W×3`` uint8 array at ``fps`` (default 25), or ``(VideoMeta,
    frames)``) → (metadata, iterator of ``H×W×3`` uint8 RGB frames) → :class:`InputError`."""
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
    y = (x[0] + 1).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)  # = clamp to [-1, 1] first
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


# ---- resources ------------------------------------------------------------------------------
def memory_budget() -> int:
    """Bytes this process may still use: the smallest of MemAvailable (/proc/meminfo), the
    address-space limit (``ulimit -v``) less what is mapped, and ``MGV_MAX_MEMORY`` (bytes,
    or with a K/M/G suffix) when set."""
    import os
    import resource

    limits = []
    env = os.environ.get("MGV_MAX_MEMORY", "").strip().upper()
    if env:
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(env[-1], 1)
        try:
            limits.append(int(float(env.rstrip("KMG")) * mult))
        except ValueError:
            pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/statm") as f:
                mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            limits.append(max(0, soft - mapped))
    except (OSError, ValueError):
        pass
    return min(limits) if limits else 1 << 62


def estimate_bytes(model: torch.nn.Module, width: int, height: int, frames: int,
                   decoder: bool = True) -> int:
    """Rough peak memory of running the decoder (or encoder) on the first frame and then a
    chunk of ``frames`` frames of ``width×height``: activations of every level plus the
    full-resolution RGB tensors, calibrated on the default and tiny configs (within ~25% at
    720p..2048², bf16 halving the activations). Used only to refuse work that cannot fit."""
    cfg = model.cfg
    ch = cfg.dec_channels if decoder else cfg.enc_channels
    px = width * height / (cfg.stem_patch ** 2)
    floats = 0.0
    for i, c in enumerate(ch):
        floats += c * px
        if i < len(cfg.spatial_down) and cfg.spatial_down[i]:
            px /= 4
    per_frame = 4 * floats / (width * height)  # bytes per pixel and frame, summed over levels
    try:
        if next(model.parameters()).dtype == torch.bfloat16:
            per_frame /= 2
    except StopIteration:
        pass
    if decoder:
        per_px = 0.85 * (10 * per_frame + frames * (per_frame + 48))
    else:
        per_px = per_frame * max(12, 7 * frames)
    return int(width * height * per_px) + (64 << 20)


def check_memory(need: int, what: str) -> None:
    budget = memory_budget()
    if need > budget:
        raise ResourceError(f"{what} needs about {need / 2**30:.1f} GiB of memory, more than the "
                            f"{budget / 2**30:.1f} GiB available")


def is_out_of_memory(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate" in msg
                                            or "Cannot allocate memory" in msg)


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


def encode_segment(model, it: Iterator[np.ndarray], meta: VideoMeta, seg_frames: int,
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


def stream_header(model: torch.nn.Module, meta: VideoMeta, *, bits: Optional[int] = None,
                  entropy: str = "context", segment_frames: Optional[int] = None) -> ct.Header:
    """The header :func:`compress_to_file` starts a stream of ``meta`` with (``frames`` is 1
    when ``meta`` does not know the count; the writer corrects it at the end) →
    :class:`InputError` when the input cannot be coded (size or rate out of range)."""
    check_encode_args(model, bits=bits, entropy=entropy, segment_frames=segment_frames)
    name, prefix = model_identity(model)
    cfg = model.cfg
    tf = cfg.temporal_factor
    seg = segment_frames or default_segment_frames(meta.fps, tf)
    pix = meta.pix_fmt if ct._PIXFMT_RE.match(meta.pix_fmt.encode("ascii", "replace")) else "rgb24"
    if meta.frames is not None and meta.frames > ct.MAX_FRAMES:
        raise InputError(f"{meta.frames} frames exceed the cap of {ct.MAX_FRAMES}")
    try:
        header = ct.Header(width=meta.width, height=meta.height, frames=max(1, meta.frames or 1),
                           fps_num=meta.fps.numerator, fps_den=meta.fps.denominator,
                           model_bits=cfg.bits, bits=cfg.bits if bits is None else bits,
                           temporal_factor=tf, spatial_factor=cfg.spatial_factor,
                           entropy=ENTROPY_MODES[entropy], segment_frames=seg,
                           model_sha256=prefix, pix_fmt=pix[:32], model_name=name)
        header.check()
    except MGVError as e:
        raise InputError(f"cannot encode this input: {e}") from None
    return header


# ---- rate control -----------------------------------------------------------------------------
RATE_TOLERANCE = 0.10  # a target rate missed by more than this fraction is reported
SEGMENT_OVERHEAD = (ct.RECORD_HEAD.size + ct.CRC.size + ct.SEGMENT_HEAD.size
                    + ct.INDEX_ENTRY.size)  # bytes a segment costs besides its data (52)
STREAM_TAIL = ct.RECORD_HEAD.size + 4 + ct.CRC.size + ct.END_RECORD_SIZE  # INDEX head + END


def rate_payload(bits: np.ndarray, entropy: int, budget: float) -> Tuple[int, int, bytes]:
    """The most bits per token whose coded payload fits ``budget`` bytes → (b, entropy mode,
    payload) for segment bits ``K×t×h×w`` uint8 {0,1} (the first b planes are coded; the
    nested code decodes them alone). b = 1 when nothing fits. Sizes grow with b, so b is found
    by bisection: about log2(K) codings of the payload, no model run."""
    k = bits.shape[0]
    coded: Dict[int, Tuple[int, bytes]] = {}

    def size(b: int) -> int:
        if b not in coded:
            coded[b] = encode_payload(np.ascontiguousarray(bits[:b]), entropy)
        return len(coded[b][1])

    if size(k) <= budget:
        lo = k
    elif k == 1 or size(1) > budget:
        lo = 1
    else:
        lo, hi = 1, k  # size(lo) fits, size(hi) does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if size(mid) <= budget:
                lo = mid
            else:
                hi = mid
    return (lo,) + coded[lo]


def parse_rate(spec: str) -> float:
    """"50k" / "1.5M" / "64000" (bits per second; k = 1000) → float → :class:`InputError`."""
    s = spec.strip()
    mult = {"k": 1e3, "m": 1e6, "g": 1e9}.get(s[-1:].lower(), 1.0)
    try:
        v = float(s[:-1] if mult != 1.0 else s) * mult
    except ValueError:
        raise InputError(f"bitrate {spec!r}: expected a number with an optional k or M suffix") from None
    if not 0 < v < float("inf"):
        raise InputError(f"bitrate {spec!r} must be positive")
    return v


def compress_to_file(model: torch.nn.Module, video: VideoInput, fo: BinaryIO, *,
                     bits: Optional[int] = None, entropy: str = "context",
                     segment_frames: Optional[int] = None, progress: Progress = None,
                     fps: Optional[Fraction] = None, audio: bool = True,
                     bitrate: Optional[float] = None, bpp: Optional[float] = None) -> EncodeResult:
    """Encode ``video`` with ``model`` into the binary file object ``fo``.

    ``video``: a path PyAV can open, a ``T×H×W×3`` uint8 RGB array (rate ``fps``, default 25)
    or ``(VideoMeta, iterable of frames)``. ``bits``: LFQ bits stored per token (1..K, default
    K). ``entropy``: "context" (entropy code where it helps) or "none". ``segment_frames``:
    1 + f·k frames per segment (default about 2 s). ``progress(n)`` is called as frames are
    encoded. The frame count is patched into the header at the end when the input did not
    declare it (needs a seekable ``fo``). ``audio``: carry the audio tracks of a file input
    through unchanged (AUDIO records interleaved with the segments by time, spec §8a).

    Rate control: ``bitrate`` (bits per second) or ``bpp`` (bits per pixel) is a target for
    the stream without its audio. Each segment then stores the most bits per token (up to
    ``bits``) whose payload keeps the stream so far within the target (the bits are recorded
    per segment: a version 1.2 stream, spec §5); :attr:`EncodeResult.rate_note` says when the
    result misses the target by more than :data:`RATE_TOLERANCE`.
    Raises :class:`MGVError` subclasses for bad input.
    """
    check_encode_args(model, bits=bits, entropy=entropy, segment_frames=segment_frames)
    if bitrate is not None and bpp is not None:
        raise InputError("give a target bitrate or bpp, not both")
    for name, v in (("bitrate", bitrate), ("bpp", bpp)):
        if v is not None and not (isinstance(v, (int, float)) and 0 < v < float("inf")):
            raise InputError(f"{name} must be a positive number, got {v!r}")
    meta, it = open_video(video, fps)
    header = stream_header(model, meta, bits=bits, entropy=entropy, segment_frames=segment_frames)
    bits, seg = header.bits, header.segment_frames
    if bpp is not None:
        bitrate = bpp * meta.width * meta.height * float(meta.fps)
    check_memory(estimate_bytes(model, meta.width, meta.height,
                                chunk_frames(meta.width * meta.height, model.cfg.temporal_factor),
                                decoder=False),
                 f"encoding {meta.width}x{meta.height} frames")
    asrc = AudioSource(video) if audio and isinstance(video, (str, Path)) else None
    try:
        return _compress(model, it, meta, header, seg, bits, fo, progress, asrc, bitrate)
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        raise ResourceError(f"out of memory encoding {meta.width}x{meta.height} frames") from None
    finally:
        if asrc is not None:
            asrc.close()


def _compress(model, it, meta, header, seg, bits, fo, progress, asrc, bitrate=None) -> EncodeResult:
    writer = ct.Writer(fo, header, segment_bits=bitrate is not None)
    video_bytes = writer.pos + STREAM_TAIL  # header, INDEX head and END; segments add theirs
    for tr in (asrc.tracks() if asrc is not None else ()):
        writer.write_record(ct.REC_AUDIO, tr.to_payload(), critical=False)
    h, w = header.latent_hw
    total = 0
    n_ctx = 0
    index = 0
    chosen: List[int] = []
    model.eval()
    while True:
        n, seg_bits = encode_segment(model, it, meta, seg, bits, progress)
        if n == 0:
            break
        if total + n > ct.MAX_FRAMES:
            raise InputError(f"input has more than {ct.MAX_FRAMES} frames")
        if seg_bits.shape[1:] != (header.latent_frames(n), h, w):
            raise MGVError(f"internal: latent shape {seg_bits.shape} for {n} frames")
        if bitrate is None:
            b, (mode, data) = 0, encode_payload(seg_bits, header.entropy)
        else:  # the stream through this segment may use the target's bytes for its duration
            budget = bitrate / 8 * float((total + n) / meta.fps) - video_bytes - SEGMENT_OVERHEAD
            b, mode, data = rate_payload(seg_bits, header.entropy, budget)
        n_ctx += mode == ct.ENTROPY_CONTEXT
        writer.write_segment(ct.Segment(index, total, n, seg_bits.shape[1], h, w, mode, data, b))
        video_bytes += SEGMENT_OVERHEAD + len(data)
        chosen.append(b or bits)
        total += n
        index += 1
        if asrc is not None:  # the audio of the same time span follows its segment
            _write_audio(writer, asrc.take_until(float(total / meta.fps)))
        if n < seg:
            break
    if total == 0:
        raise InputError("the input has no frames")
    if asrc is not None:
        _write_audio(writer, asrc.take_until(None))
    if total != header.frames:
        header = ct.replace_header(header, frames=total)
        try:
            writer.rewrite_header(header)
        except (OSError, ValueError, AttributeError):
            raise InputError("the input did not declare its frame count and the output is not "
                             "seekable") from None
    writer.close()
    note = None
    if bitrate is not None:
        got = 8 * video_bytes / float(total / meta.fps)
        if got > bitrate * (1 + RATE_TOLERANCE):
            note = (f"target {bitrate / 1000:g} kbps cannot be reached: 1 bit per token gives "
                    f"{got / 1000:.1f} kbps here (shorter segments or a smaller frame would)")
        elif got < bitrate * (1 - RATE_TOLERANCE) and min(chosen) == bits:
            note = (f"target {bitrate / 1000:g} kbps is above this video's rate at {bits} bits per "
                    f"token ({got / 1000:.1f} kbps)")
    return EncodeResult(header, writer.pos, index, n_ctx, tuple(chosen), video_bytes, note,
                        tuple(asrc.warnings) if asrc is not None else ())


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


def payload_frames(seg: ct.Segment, bits: int) -> Iterator[np.ndarray]:
    """A segment's bits one latent frame at a time (``b×h×w`` uint8): memory of one frame
    whatever the segment's length. Mode 1 raises :class:`PayloadError` only after its last
    frame (see :func:`neuralcodec.entropy.iter_decode_bits`)."""
    t, h, w = seg.latent_t, seg.latent_h, seg.latent_w
    if seg.entropy == ct.ENTROPY_CONTEXT:
        from .entropy import iter_decode_bits

        yield from iter_decode_bits(seg.data, (bits, t, h, w))
        return
    n = bits * h * w
    data = seg.data
    for f in range(t):
        lo = f * n
        raw = np.frombuffer(data[lo >> 3:(lo + n + 7) >> 3], np.uint8)
        flat = np.unpackbits(raw, bitorder="little")[lo & 7:(lo & 7) + n]
        yield np.ascontiguousarray(flat.reshape(h, w, bits).transpose(2, 0, 1))


def _decode_segment(model, header: ct.Header, seg: ct.Segment, bits, a: int, b: int,
                    progress: Progress) -> Iterator[np.ndarray]:
    """Frames ``a..b-1`` (absolute numbers) of ``seg`` as ``H×W×3`` uint8. ``bits``: the
    segment's bits, ``b×t×h×w`` uint8 (from :func:`decode_payload`) or an iterator of its
    latent frames ``b×h×w`` (:func:`payload_frames`); codes are built one chunk at a time."""
    device = _model_device(model)
    k = header.model_bits
    stored = seg.stored_bits(header)
    frames_in = iter(bits.transpose(1, 0, 2, 3)) if isinstance(bits, np.ndarray) else iter(bits)

    def codes_of(n: int) -> torch.Tensor:
        chunk = [next(frames_in) for _ in range(min(n, seg.latent_t - t))]
        codes = torch.zeros((1, k, len(chunk), seg.latent_h, seg.latent_w), dtype=torch.float32)
        codes[0, :stored] = torch.from_numpy(np.stack(chunk, axis=1)).float() * 2 - 1
        return codes

    frame = seg.first_frame
    stop = min(b, seg.first_frame + seg.frames)
    step = max(1, min(CHUNK_LATENTS, chunk_frames(header.width * header.height,
                                                  header.temporal_factor) // header.temporal_factor))
    with streaming(model):
        t = 0
        while t < seg.latent_t and frame < stop:
            n = 1 if t == 0 else step
            codes = codes_of(n)
            x = model.decode(codes.to(device), bits=stored)
            t += codes.shape[2]
            out = tensor_to_frames(x[:, :, :, :header.height, :header.width])
            for f in out:
                if frame >= stop:
                    break
                if frame >= a:
                    if progress:
                        progress(1)
                    yield f
                frame += 1


def decode_segment(model, header: ct.Header, seg: ct.Segment, bits: np.ndarray,
                   progress: Progress = None) -> Iterator[np.ndarray]:
    """The frames of segment ``seg`` (``seg.frames`` of them, ``H×W×3`` uint8 RGB) decoded from
    its bits ``b×t×h×w`` uint8 {0, 1} with b = ``seg.stored_bits(header)`` (the bits of
    :func:`decode_payload`, or tokens from elsewhere; bits b..K−1 read as 0). Only the
    segment's geometry and bit count are used, not its data. ``model``: already resolved."""
    if bits.shape != (seg.stored_bits(header), seg.latent_t, seg.latent_h, seg.latent_w):
        raise InputError(f"segment {seg.index}: bits of shape {bits.shape}, expected "
                         f"{(seg.stored_bits(header), seg.latent_t, seg.latent_h, seg.latent_w)}")
    return _decode_segment(model, header, seg, bits, seg.first_frame, seg.first_frame + seg.frames,
                           progress)


# ---- damage ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DamageReport:
    """A damaged part of a stream met while decoding.

    Frames ``first_frame .. end_frame - 1`` (absolute numbers, within the decoded range) were
    concealed because segments ``segments`` were damaged or missing; ``first_frame ==
    end_frame`` (and no segments) when the damage cost no frames (a damaged INDEX or AUDIO
    record, garbage between records)."""

    first_frame: int
    end_frame: int
    segments: Tuple[int, ...]
    reason: str

    @property
    def frames(self) -> int:
        return self.end_frame - self.first_frame

    def __str__(self) -> str:
        if not self.frames:
            return f"damaged data, no frames lost ({self.reason})"
        segs = (f"segment {self.segments[0]}" if len(self.segments) == 1
                else f"segments {self.segments[0]}-{self.segments[-1]}")
        return (f"frames {self.first_frame}-{self.end_frame - 1} concealed ({segs} damaged: "
                f"{self.reason})")


OnDamage = Optional[Callable[[DamageReport], None]]


def _segment_plan(reader: ct.Reader, header: ct.Header, first: int, last: int, use_index: bool,
                  on_damage: OnDamage, audio: Optional[AudioSink], to_end: bool
                  ) -> Iterator[Tuple[int, Optional[ct.Segment], str]]:
    """``(i, segment, "")`` or ``(i, None, reason)`` for every segment ``first..last`` in
    order. Strict (``on_damage`` None): the first damage raises. Otherwise damaged or missing
    segments come as None and damage that costs no segment is reported through
    ``on_damage``. ``to_end``: scan through END after ``last`` (trailing AUDIO records)."""
    index = None
    if use_index:
        try:
            index = reader.index()
        except StreamError as e:
            if on_damage is None:
                raise
            index = None  # an inconsistent index: report it, scan instead
            on_damage(DamageReport(header.frames, header.frames, (), str(e).splitlines()[0]))
    if index is not None:
        for i in range(first, last + 1):
            try:
                yield i, reader.segment_at(index[i].offset, i), ""
            except StreamError as e:
                if on_damage is None:
                    raise
                yield i, None, str(e).splitlines()[0]
        return
    nxt = 0  # next segment number expected
    lost = ""  # first error of damage not yet attributed to missing segments

    def note(e: StreamError) -> None:
        nonlocal lost
        if on_damage is None:
            raise e
        lost = lost or str(e).splitlines()[0]

    def flush_lost() -> None:
        nonlocal lost
        if lost and on_damage is not None:
            on_damage(DamageReport(header.frames, header.frames, (), lost))
        lost = ""

    order = ct.RecordOrder(header, reader.records_offset)
    for item in reader.scan():
        if isinstance(item, ct.Damage):
            order.complete = False
            note(item.error)
            continue
        try:
            order.check(item)
        except StreamError as e:
            note(e)
            if item.type != ct.REC_END:
                continue
        if item.type == ct.REC_SEGMENT:
            try:
                seg = ct.Segment.parse(item.payload)
                if on_damage is None:
                    seg.check(header, nxt)
                else:
                    seg.check(header)
                    if seg.index < nxt:
                        raise RecordError(f"segment {seg.index} repeated or out of order")
            except StreamError as e:
                order.drop_last_segment()
                note(e)
                continue
            if seg.index > nxt:
                for j in range(nxt, seg.index):
                    if first <= j <= last:
                        yield j, None, lost or "missing"
                lost = ""
            flush_lost()
            nxt = seg.index + 1
            if first <= seg.index <= last:
                yield seg.index, seg, ""
            if seg.index >= last and not to_end:
                return
        elif item.type == ct.REC_AUDIO:
            if audio is not None:
                try:
                    audio.add(ct.parse_audio(item.payload))
                except StreamError as e:
                    note(e)
                    flush_lost()
        elif item.type == ct.REC_END:
            try:
                reader.check_nothing_after(item)
            except StreamError as e:
                note(e)
            break
    if nxt < header.segment_count:
        note(Truncated(f"stream has {nxt} of {header.segment_count} segments"))
        for j in range(max(nxt, first), last + 1):
            yield j, None, lost
        lost = ""
    flush_lost()


def decompress_from_file(fo: BinaryIO, *, frames: Optional[Tuple[Optional[int], Optional[int]]] = None,
                         model: ModelSource = None, progress: Progress = None,
                         on_damage: OnDamage = None, audio: Optional[AudioSink] = None,
                         precision: str = "auto") -> Tuple[VideoMeta, Iterator[np.ndarray]]:
    """Open a ``.mgv`` stream → (metadata of the decoded video, iterator of ``H×W×3`` uint8 RGB
    frames). The header is read and the model resolved (and checked) before this returns;
    frames are decoded lazily, segment by segment.

    ``precision`` (:data:`~neuralcodec.model.PRECISIONS`): the floating type a model loaded
    here by name runs in (default: bfloat16 where the CPU computes it natively); a model
    given as an object runs as it is.

    ``frames=(a, b)`` decodes frames ``a..b-1`` only (either may be None), reading only the
    segments they need through the index when ``fo`` is seekable. ``model``: see
    :func:`resolve_model`.

    Damage: by default (``on_damage`` None) the first damaged or missing record raises its
    :class:`~neuralcodec.errors.StreamError`. With ``on_damage``, every intact segment is
    decoded, the frames of damaged or missing segments are concealed (the last good frame
    repeated; mid-grey before the first good one) so the frame count stays exact, and each
    damaged range is reported once through ``on_damage(DamageReport)`` (seekable streams
    resynchronize on the record sync word after damage).

    ``audio``: an :class:`AudioSink` that receives the stream's AUDIO records while the
    frames are decoded (full-range decodes only; a frame range drops audio).
    """
    reader = ct.Reader(fo)
    header = reader.header
    a, b = _frame_range(header, frames)
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    held = _segments_held(reader)
    if held is not None and held < header.segment_count:
        kept = min(header.frames, held * header.segment_frames)
        if on_damage is None or _too_much_concealment(header.frames - kept, kept):
            raise Truncated(f"the header announces {header.segment_count} segments of "
                            f"{header.frames} frames, the file's bytes can hold at most {held}")
    m = resolve_model(header, model).eval()
    if model is None:
        for_inference(m, "cpu", precision)
    tf = header.temporal_factor
    step = max(1, min(CHUNK_LATENTS, chunk_frames(header.width * header.height, tf) // tf))
    check_memory(estimate_bytes(m, header.width, header.height, tf * step),
                 f"decoding {header.width}x{header.height} frames")
    meta = VideoMeta(header.width, header.height, header.fps, b - a, header.pix_fmt)
    first_seg = a // header.segment_frames
    last_seg = (b - 1) // header.segment_frames
    full = (a, b) == (0, header.frames)
    plan = _segment_plan(reader, header, first_seg, last_seg, use_index=a > 0 and reader.seekable(),
                         on_damage=on_damage, audio=audio if full else None, to_end=full)

    def gen() -> Iterator[np.ndarray]:
        try:
            yield from frames_gen()
        except (MemoryError, RuntimeError) as e:
            if not is_out_of_memory(e):
                raise
            raise ResourceError(f"out of memory decoding {header.width}x{header.height} "
                                f"frames") from None

    def frames_gen() -> Iterator[np.ndarray]:
        last_frame: Optional[np.ndarray] = None
        run: Optional[list] = None  # [first, end, segments, reason] of concealed frames
        intact = concealed = 0

        def flush() -> None:
            if run is not None and on_damage is not None:
                on_damage(DamageReport(run[0], run[1], tuple(run[2]), run[3]))

        for i, seg, reason in plan:
            f0, n = header.segment_bounds(i)
            lo, hi = max(a, f0), min(b, f0 + n)
            bits = None
            if seg is not None:
                try:
                    sb = seg.stored_bits(header)
                    if sb * seg.latent_t * seg.latent_h * seg.latent_w <= LAZY_BITS:
                        bits = decode_payload(seg, sb)
                    else:  # a long segment: validate, then decode again frame by frame
                        if seg.entropy == ct.ENTROPY_CONTEXT:
                            for _ in payload_frames(seg, sb):
                                pass
                        bits = payload_frames(seg, sb)
                except PayloadError as e:
                    if on_damage is None:
                        raise
                    seg, reason = None, str(e).splitlines()[0]
            if seg is not None:
                intact += n
            elif _too_much_concealment(concealed + hi - lo, intact):
                raise Truncated(
                    f"damaged stream: {header.frames - intact} of its {header.frames} frames "
                    f"would have to be concealed, far more than its intact segments justify "
                    f"({intact} frames)")
            else:
                concealed += hi - lo
            if seg is None:
                if run is not None and run[1] == lo:
                    run[1] = hi
                    run[2].append(i)
                else:
                    flush()
                    run = [lo, hi, [i], reason or "missing"]
                fill = last_frame if last_frame is not None else np.full(
                    (header.height, header.width, 3), 128, np.uint8)
                for _ in range(hi - lo):
                    if progress:
                        progress(1)
                    yield fill
                continue
            flush()
            run = None
            for f in _decode_segment(m, header, seg, bits, a, b, progress):
                last_frame = f
                yield f
        flush()

    return meta, gen()


def _too_much_concealment(concealed: int, intact: int) -> bool:
    """A recovering decode conceals at most max(CONCEAL_MIN_FRAMES, CONCEAL_RATIO × intact
    frames) frames (spec §8b): a forged frame count cannot make it write hours of grey."""
    return concealed > max(CONCEAL_MIN_FRAMES, CONCEAL_RATIO * intact)


def _segments_held(reader: ct.Reader) -> Optional[int]:
    """How many SEGMENT records the bytes of a seekable file can hold at most (None: not
    seekable): a header announcing more describes a stream that is not there."""
    size = reader.stream_size()
    return None if size is None else max(0, (size - reader.records_offset) // MIN_SEGMENT_RECORD)


def decompress(data: bytes, **kw) -> Tuple[VideoMeta, np.ndarray]:
    """:func:`decompress_from_file` from memory → (meta, ``T×H×W×3`` uint8 array)."""
    meta, it = decompress_from_file(_io.BytesIO(data), **kw)
    return meta, np.stack(list(it))


def verify_stream(fo: BinaryIO) -> dict:
    """Strictly read a whole ``.mgv`` stream without a model: every record in order (spec §4),
    every SEGMENT checked and its payload decoded to bits, every AUDIO record parsed → dict
    with ``frames``, ``segments`` and ``bits_sha256`` (SHA-256 of the decoded ``b×t×h×w``
    uint8 bit arrays of all segments, in order). The first failure raises its
    :class:`~neuralcodec.errors.StreamError` (the conformance suite's reference reader)."""
    import hashlib

    reader = ct.Reader(fo)
    h = reader.header
    digest = hashlib.sha256()
    sink = AudioSink(keep=False)
    n = 0
    for _, seg, _ in _segment_plan(reader, h, 0, h.segment_count - 1, use_index=False,
                                   on_damage=None, audio=sink, to_end=True):
        digest.update(np.ascontiguousarray(decode_payload(seg, seg.stored_bits(h))).tobytes())
        n += 1
    return {"frames": h.frames, "segments": n, "bits_sha256": digest.hexdigest()}


# ---- inspection -----------------------------------------------------------------------------
def stream_info(fo: BinaryIO) -> dict:
    """Header, segment table, audio tracks and damage of a ``.mgv`` stream without decoding
    any payload (a scan of every record). Returns a JSON-friendly dict; ``damaged`` lists the
    damaged ranges (empty for an intact stream) and each segment row says ``damaged``."""
    reader = ct.Reader(fo)
    h = reader.header
    damage: List[DamageReport] = []
    sink = AudioSink(keep=False)
    rows: List[dict] = []
    run: Optional[dict] = None  # the damaged row being extended (one row per damaged range)
    for i, seg, reason in _segment_plan(reader, h, 0, h.segment_count - 1, use_index=False,
                                        on_damage=damage.append, audio=sink, to_end=True):
        first, n = h.segment_bounds(i)
        if seg is None:
            if run is not None and run["last_index"] == i - 1:
                run["last_index"] = i
                run["frames"] += n
            else:
                run = {"index": i, "last_index": i, "first_frame": first, "frames": n,
                       "damaged": True, "error": reason or "missing"}
                rows.append(run)
            continue
        run = None
        rows.append({"index": seg.index, "first_frame": seg.first_frame, "frames": seg.frames,
                     "bits": seg.stored_bits(h),
                     "latent_shape": [seg.stored_bits(h), seg.latent_t, seg.latent_h, seg.latent_w],
                     "entropy": ct.ENTROPY_NAMES[seg.entropy], "bytes": len(seg.data),
                     "bpp": 8 * len(seg.data) / (seg.frames * h.width * h.height), "damaged": False})
    for r in rows:
        if r["damaged"]:
            damage.append(DamageReport(r["first_frame"], r["first_frame"] + r["frames"],
                                       tuple(range(r["index"], r["last_index"] + 1))
                                       if r["last_index"] - r["index"] < 2 else (r["index"], r["last_index"]),
                                       r["error"]))
    damage.sort(key=lambda d: (d.first_frame, d.end_frame))
    size = fo.seek(0, 2) - reader.base if reader.seekable() else None
    packets = sink.stats
    audio = [{"track": t.track, "codec": t.codec, "sample_rate": t.sample_rate,
              "channels": t.channels, "time_base": f"{t.time_base.numerator}/{t.time_base.denominator}",
              "packets": packets.get(t.track, [0, 0])[0], "bytes": packets.get(t.track, [0, 0])[1]}
             for t in sink.tracks.values()]
    d = {"version": "%d.%d" % reader.version, "header": h.to_dict(), "segments": rows,
         "audio": audio,
         "damaged": [{"first_frame": x.first_frame, "end_frame": x.end_frame,
                      "first_segment": x.segments[0] if x.segments else None,
                      "last_segment": x.segments[-1] if x.segments else None,
                      "error": x.reason, "message": str(x)}
                     for x in damage]}
    if size is not None:
        d["file_bytes"] = size
        d["bpp"] = 8 * size / (h.frames * h.width * h.height)
        d["kbps"] = 8 * size / 1000 / float(h.frames / h.fps)
    return d
