"""Codec API: video ↔ ``.mgv`` streams (EnCodec-style layers).

::

    compress_to_file(model, video, fo)          video file / frames → .mgv file object
    decompress_from_file(fo) → (meta, frames)   .mgv file object → VideoMeta + frame iterator
    compress(model, video) → bytes              thin wrappers over the two above
    decompress(data) → (meta, T×H×W×3 array)

Encoding cuts the video into segments of ``segment_frames`` = 1 + f·k frames (default about
2 s). Each segment restarts the causal state and runs through the model a chunk at a time
(:mod:`neuralcodec.chunks`); the last segment is padded by repeating its last frame; frames are
edge-padded to the spatial factor and cropped after decoding. A segment's payload holds the
first ``bits`` LFQ bits of each token, raw-packed on the model's device by the kernels of
:mod:`neuralcodec.kernels` (``none``) or entropy coded (``context``, used only where it is
smaller): :mod:`neuralcodec.payload`. Audio is carried through unchanged
(:mod:`neuralcodec.audio`); damaged streams are decoded with concealment
(:mod:`neuralcodec.recovery`); :mod:`neuralcodec.streaminfo` inspects a stream without a model.

Frames everywhere are ``H×W×3`` uint8 RGB numpy arrays; model tensors are ``1×3×T×H×W`` float
in [-1, 1] and codes ``1×K×t×h×w`` in {-1, 0, +1} on the model's device.
"""
from __future__ import annotations

import dataclasses
import io
import itertools
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from . import container as ct
from .adapt import ADAPT_HEAD, METHOD_VARIANT, stream_decoders
from .audio import AudioSink, AudioSource, write_audio
from .chunks import Progress, chunk_frames
from .errors import InputError, MGVError, RecordError, ResourceError
from .finetune import fit_adaptations
from .jointfit import fit_joint, joint_steps
from .sampling import FrameSampler, segment_groups
from .model import PRECISIONS
from .options import ENTROPY_MODES, EncodeOptions
from .payload import RATE_TOLERANCE, SEGMENT_OVERHEAD, STREAM_TAIL, encode_payload, rate_payload
from .rdo import select_codes
from .refine import encode_refined, refine_model
from .recovery import DamageReport, OnDamage, check_stream_size, decode_plan, segment_plan
from .resources import check_memory, estimate_bytes, is_out_of_memory
from .video_io import FrameSpool, VideoMeta, frames_of, probe, read_frames
from .weights import DECODER_AUTO, ModelSource, model_identity

SEGMENT_SECONDS = 2.0  # default segment duration

VideoInput = Union[str, Path, np.ndarray, Tuple[VideoMeta, Iterable[np.ndarray]]]


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
    adaptation: Optional[dict] = None  # --adapt: gain (dB), update bytes, kept or not (finetune)

    @property
    def video_kbps(self) -> float:
        """Rate of the stream without its audio, in kbit/s."""
        return 8 * self.video_bytes / 1000 / float(self.header.frames / self.header.fps)

    @property
    def bpp(self) -> float:
        """Bits per pixel of the whole stream (header and framing included)."""
        h = self.header
        return 8 * self.bytes_written / (h.width * h.height * h.frames)


def default_segment_frames(fps: Fraction, temporal_factor: int) -> int:
    """About :data:`SEGMENT_SECONDS` of frames, rounded to 1 + f·k (e.g. 49 at 25 fps)."""
    k = max(1, round((float(fps) * SEGMENT_SECONDS - 1) / temporal_factor))
    return min(1 + k * temporal_factor, ct.MAX_SEGMENT_FRAMES - (ct.MAX_SEGMENT_FRAMES - 1) % temporal_factor)


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


# ---- encoding -------------------------------------------------------------------------------
def stream_header(model: torch.nn.Module, meta: VideoMeta,
                  options: Optional[EncodeOptions] = None) -> ct.Header:
    """The header :func:`compress_to_file` starts a stream of ``meta`` with under ``options``
    (``frames`` is 1 when ``meta`` does not know the count; the writer corrects it at the end)
    → :class:`InputError` when the options or the input cannot be coded (size or rate out of
    range)."""
    opts = (options or EncodeOptions()).checked(model)
    bits, entropy, segment_frames = opts.stored_bits(model), opts.entropy, opts.segment_frames
    name, prefix = model_identity(model)
    cfg = model.cfg
    tf = cfg.temporal_factor
    seg = segment_frames or default_segment_frames(meta.fps, tf)
    pix = meta.pix_fmt if ct.PIXFMT_RE.match(meta.pix_fmt.encode("ascii", "replace")) else "rgb24"
    if meta.frames is not None and meta.frames > ct.MAX_FRAMES:
        raise InputError(f"{meta.frames} frames exceed the cap of {ct.MAX_FRAMES}")
    try:
        header = ct.Header(width=meta.width, height=meta.height, frames=max(1, meta.frames or 1),
                           fps_num=meta.fps.numerator, fps_den=meta.fps.denominator,
                           model_bits=cfg.bits, bits=bits,
                           temporal_factor=tf, spatial_factor=cfg.spatial_factor,
                           entropy=ENTROPY_MODES[entropy], segment_frames=seg,
                           model_sha256=prefix, pix_fmt=pix[:32], model_name=name)
        header.check()
    except MGVError as e:
        raise InputError(f"cannot encode this input: {e}") from None
    return header


def adapt_steps(model: torch.nn.Module, meta: VideoMeta, options: EncodeOptions,
                frames: Optional[int]) -> Optional[int]:
    """The training steps an encode of ``frames`` frames (None: not known) of ``meta`` takes
    under ``options`` (checked): ``adapt`` per update, one update per group of
    :func:`~neuralcodec.sampling.segment_groups`, or with ``joint`` one per decoder chunk per
    pass (:func:`~neuralcodec.jointfit.joint_steps`) → steps, None when the count is not known."""
    if not (options.adapt or options.joint):
        return 0
    if frames is None:
        return None
    header = stream_header(model, dataclasses.replace(meta, frames=frames), options)
    if options.joint:
        return joint_steps(header, frames, options.joint, model.cfg.temporal_factor)
    return options.adapt * len(segment_groups(header.segment_count))


def compress_to_file(model: torch.nn.Module, video: VideoInput, fo: BinaryIO,
                     options: Optional[EncodeOptions] = None, *, progress: Progress = None,
                     fps: Optional[Fraction] = None, audio: bool = True,
                     backend: Optional[str] = None, adapt_progress: Progress = None,
                     **fields) -> EncodeResult:
    """Encode ``video`` with ``model`` into the binary file object ``fo``.

    ``video``: a path PyAV can open, a ``T×H×W×3`` uint8 RGB array (rate ``fps``, default 25)
    or ``(VideoMeta, iterable of frames)``. ``options``: an :class:`EncodeOptions` (checked
    here once; ``fields`` — ``bits=…``, ``rdo=…`` — replace its fields, so that
    ``compress_to_file(m, v, fo, bits=6)`` reads as before). Its fields: ``bits``: bits stored
    per token (1..K; default the model's, :meth:`EncodeOptions.stored_bits`). ``entropy``:
    "context" (entropy code where it helps) or "none". ``segment_frames``: 1 + f·k frames per
    segment (default about 2 s). ``progress(n)`` is called as frames are encoded. The frame
    count is patched into the header at the end when the input did not declare it (needs a
    seekable ``fo``). ``audio``: carry the audio tracks of a file input through unchanged
    (AUDIO records interleaved with the segments by time, spec §8a); tracks that cannot be carried are listed in :attr:`EncodeResult.warnings`. ``backend``: the
    kernels that pack the bits on the model's device (:func:`neuralcodec.kernels.select_backend`;
    default: Triton on CUDA, PyTorch elsewhere). ``rdo``: λ of the encoder's choice to repeat
    a token of the previous latent frame where that costs little (0 = plain quantization;
    :func:`neuralcodec.rdo.select_codes`). ``refine``: Adam steps per decoder chunk that
    optimise the codes through the decoder, each step judging the codes the RDO will store
    (0 = off; about 3 decoder passes each: :func:`neuralcodec.refine.refine_latents`); with rate control they refine for
    ``bits`` and the rate control truncates the refined codes; they are refined through the
    decoder that decodes them (:func:`neuralcodec.refine.refine_model`: with ``adapt``, the
    adapted one — the update is fitted to the encoder's codes of a first pass and the codes
    refined in a second, the frames kept meanwhile in a temporary file). ``adapt``: Adam steps fitting
    the decoder to this video once its tokens are chosen (0 = off;
    :func:`neuralcodec.finetune.fit_adaptations`: one update per group of at most
    :data:`~neuralcodec.sampling.ADAPT_SEGMENTS` consecutive segments, ``adapt`` steps each,
    ``adapt_progress(1)`` per step); each update is written as an ADAPT record before the first
    segment (a version 1.3 stream, 1.4 when it changes a decoder variant: spec §8c) when its
    measured gain pays for its bytes, and :attr:`EncodeResult.adaptation` says what happened.
    ``joint``: instead of ``adapt``, passes over the video fitting each group's update and its
    codes together, then ``refine`` steps through the fitted decoder
    (:func:`neuralcodec.jointfit.fit_joint`; ``adapt_progress(1)`` per chunk step).

    Rate control: ``bitrate`` (bits per second) or ``bpp`` (bits per pixel) is a target for
    the stream without its audio. Each segment then stores the most bits per token (up to
    ``bits``) whose payload keeps the stream so far within the target (the bits are recorded
    per segment: a version 1.2 stream, spec §5); :attr:`EncodeResult.rate_note` says when the
    result misses the target by more than :data:`~neuralcodec.payload.RATE_TOLERANCE`.
    Raises :class:`MGVError` subclasses for bad input.
    """
    opts = EncodeOptions.of(options, **fields).checked(model)
    meta, it = open_video(video, fps)
    header = stream_header(model, meta, opts)
    opts.check_frame_size(meta.width, meta.height)
    bitrate = opts.target_bitrate(meta.width, meta.height, float(meta.fps))
    check_memory(estimate_bytes(model, meta.width, meta.height,
                                chunk_frames(meta.width * meta.height, model.cfg.temporal_factor),
                                decoder=False),
                 f"encoding {meta.width}x{meta.height} frames")
    asrc = AudioSource(video) if audio and isinstance(video, (str, Path)) else None
    spool = None
    try:
        if not (opts.adapt or opts.joint):  # the codes are refined for the decoder that decodes them
            return _compress(refine_model(model) if opts.refine else model, it, meta, header, fo,
                             progress, asrc, bitrate, backend, opts.rdo, opts.refine)
        spool = FrameSpool(meta.width, meta.height, meta.frames) if opts.refine or opts.joint else None
        buf = io.BytesIO()  # the stream without its ADAPT records (its size: the compressed video)
        if opts.joint:  # the update and the codes fitted together; the frames kept meanwhile
            ads, store, summary = fit_joint(model, spool.wrap(it), spool.read, meta, header, opts,
                                            progress, adapt_progress)
            res = _compress(model, spool.replay(), meta, header, buf, None, asrc, bitrate, backend,
                            opts.rdo, 0, store)
        else:  # the update fitted to the encoder's codes of a first pass; with refine the codes
            # are then refined through the adapted decoder, the one that decodes them
            sampler = FrameSampler(header.segment_frames, meta.frames, meta.width, meta.height,
                                   model.cfg.temporal_factor)
            it = spool.wrap(it) if spool else it
            res = _compress(model, sampler.wrap(it), meta, header, buf, None if spool else progress,
                            None if spool else asrc, bitrate, backend, opts.rdo, 0)
            ads, summary = fit_adaptations(model, buf.getvalue(), sampler.samples(), opts.adapt,
                                           adapt_progress, rdo=opts.rdo)
            if spool is not None:
                nets = {id(ad): refine_model(model, ad) for ad in ads}
                plain = refine_model(model)

                def net(i: int):  # segment i is refined through the decoder that decodes it
                    return next((nets[id(ad)] for ad in ads if ad.covers(i)), plain)
                buf = io.BytesIO()
                res = _compress(net, spool.replay(), meta, res.header, buf,
                                progress, asrc, bitrate, backend, opts.rdo, opts.refine)
        if not ads:
            fo.write(buf.getvalue())
            return dataclasses.replace(res, adaptation=summary)
        size = insert_adaptation(buf.getvalue(), [ad.to_payload() for ad in ads], fo)
        return dataclasses.replace(res, bytes_written=size,
                                   video_bytes=res.video_bytes + size - res.bytes_written,
                                   adaptation=summary)
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        raise ResourceError(f"out of memory encoding {meta.width}x{meta.height} frames") from None
    finally:
        if asrc is not None:
            asrc.close()
        if spool is not None:
            spool.close()


def _compress(model, it, meta: VideoMeta, header: ct.Header, fo: BinaryIO, progress: Progress,
              asrc: Optional[AudioSource], bitrate: Optional[float],
              backend: Optional[str], rdo: float, refine: int,
              given: Optional[Sequence[torch.Tensor]] = None) -> EncodeResult:
    """Encode the frames of ``it`` into ``fo`` with ``model`` — a model, or a function giving
    the model of segment i (the same encoder, the decoder the segment is refined through);
    ``given``: each segment's latents, found already (its frames are read and not encoded)."""
    net = model if callable(model) and not isinstance(model, torch.nn.Module) else lambda i: model
    bits, seg = header.bits, header.segment_frames
    writer = ct.Writer(fo, header, segment_bits=bitrate is not None)
    video_bytes = writer.pos + STREAM_TAIL  # header, INDEX head and END; segments add theirs
    for tr in (asrc.tracks() if asrc is not None else ()):
        writer.write_record(ct.REC_AUDIO, tr.to_payload(), critical=False)
    h, w = header.latent_hw
    total = n_ctx = index = 0
    chosen: List[int] = []
    while True:
        model = net(index).eval()
        if given is None:
            n, latents = encode_refined(model, it, meta, seg, bits, refine, progress, rdo)
        else:
            n = sum(1 for _ in itertools.islice(it, seg))
            latents = given[index] if n and index < len(given) else None
        if n == 0:
            break
        if total + n > ct.MAX_FRAMES:
            raise InputError(f"input has more than {ct.MAX_FRAMES} frames")
        if tuple(latents.shape[2:]) != (header.latent_frames(n), h, w):
            raise MGVError(f"internal: latent shape {tuple(latents.shape)} for {n} frames")

        def codes_for(b: int) -> torch.Tensor:
            return select_codes(latents, model.quantizer, b, rdo)

        if bitrate is None:
            b, (mode, data) = 0, encode_payload(codes_for(bits), header.entropy, backend)
        else:  # the stream through this segment may use the target's bytes for its duration
            budget = bitrate / 8 * float((total + n) / meta.fps) - video_bytes - SEGMENT_OVERHEAD
            b, mode, data = rate_payload(codes_for, bits, header.entropy, budget, backend)
        n_ctx += mode == ct.ENTROPY_CONTEXT
        writer.write_segment(ct.Segment(index, total, n, latents.shape[2], h, w, mode, data, b))
        video_bytes += SEGMENT_OVERHEAD + len(data)
        chosen.append(b or bits)
        total += n
        index += 1
        if asrc is not None:  # the audio of the same time span follows its segment
            write_audio(writer, asrc.take_until(float(total / meta.fps)))
        if n < seg:
            break
    if total == 0:
        raise InputError("the input has no frames")
    if asrc is not None:
        write_audio(writer, asrc.take_until(None))
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


def insert_adaptation(stream: bytes, payloads: Union[bytes, Sequence[bytes]], fo: BinaryIO) -> int:
    """Write ``stream`` (a complete ``.mgv``) to ``fo`` as a version 1.3 stream (1.4 when a record
    is of method 2) with ADAPT records of ``payloads`` (one payload, or several whose segment
    ranges do not overlap, in that order) before its first SEGMENT, every other record as it
    was (the INDEX re-made for the new offsets) → bytes written."""
    if isinstance(payloads, (bytes, bytearray)):
        payloads = [bytes(payloads)]
    ranges = sorted(ADAPT_HEAD.unpack_from(p)[4:6] for p in payloads)
    if any(a + n > b for (a, n), (b, _) in zip(ranges, ranges[1:])):
        raise RecordError(f"ADAPT records whose segment ranges overlap: {ranges}")
    reader = ct.Reader(io.BytesIO(stream))
    segment_bits = reader.version[1] >= ct.MINOR_SEGMENT_BITS
    writer = ct.Writer(fo, reader.header, segment_bits=segment_bits, adapt=True,
                       adapt_variant=any(p[:1] == bytes([METHOD_VARIANT]) for p in payloads))
    pending = True
    for rec in reader.records():
        if rec.type == ct.REC_SEGMENT:
            if pending:
                for p in payloads:
                    writer.write_adapt(p)
                pending = False
            writer.write_segment(ct.Segment.parse(rec.payload))
        elif rec.type not in (ct.REC_INDEX, ct.REC_END):
            writer.write_record(rec.type, rec.payload, critical=bool(rec.flags & ct.FLAG_CRITICAL))
    writer.close()
    return writer.pos


def compress(model: torch.nn.Module, video: VideoInput, options: Optional[EncodeOptions] = None,
             **kw) -> bytes:
    """:func:`compress_to_file` into memory → the ``.mgv`` bytes."""
    buf = io.BytesIO()
    compress_to_file(model, video, buf, options, **kw)
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


def decompress_from_file(fo: BinaryIO, *, frames: Optional[Tuple[Optional[int], Optional[int]]] = None,
                         model: ModelSource = None, progress: Progress = None,
                         on_damage: OnDamage = None, audio: Optional[AudioSink] = None,
                         precision: str = "auto",
                         backend: Optional[str] = None,
                         decoder: Union[str, torch.nn.Module] = DECODER_AUTO) -> Tuple[VideoMeta, Iterator[np.ndarray]]:
    """Open a ``.mgv`` stream → (metadata of the decoded video, iterator of ``H×W×3`` uint8 RGB
    frames). The header is read and the model resolved (and checked) before this returns;
    frames are decoded lazily, segment by segment.

    ``precision`` (:data:`~neuralcodec.model.PRECISIONS`): the floating type a model loaded
    here by name runs in (default: bfloat16 where the CPU computes it natively); a model
    given as an object runs as it is. ``backend``: the kernels that unpack raw payloads on
    the model's device (as in :func:`compress_to_file`). ``decoder``: which decoder network
    decodes (``auto``, ``full`` or a decoder variant's name: :func:`~neuralcodec.adapt.stream_decoders`).

    ``frames=(a, b)`` decodes frames ``a..b-1`` only (either may be None), reading only the
    segments they need through the index when ``fo`` is seekable. ``model``: see
    :func:`~neuralcodec.weights.resolve_model`.

    Damage: by default (``on_damage`` None) the first damaged or missing record raises its
    :class:`~neuralcodec.errors.StreamError`. With ``on_damage``, every intact segment is
    decoded, the frames of damaged or missing segments are concealed (the last good frame
    repeated; mid-grey before the first good one) so the frame count stays exact, and each
    damaged range is reported once through ``on_damage(DamageReport)`` (seekable streams
    resynchronize on the record sync word after damage).

    ``audio``: an :class:`~neuralcodec.audio.AudioSink` that receives the stream's AUDIO
    records while the frames are decoded (full-range decodes only; a frame range drops audio).
    """
    reader = ct.Reader(fo)
    header = reader.header
    a, b = _frame_range(header, frames)
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    check_stream_size(reader, recover=on_damage is not None)
    adapt_records: List[ct.Record] = []
    m, decoders = stream_decoders(header, model, adapt_records, precision, decoder, None if on_damage is None else (
        lambda reason: on_damage(DamageReport(header.frames, header.frames, range(0), reason))))
    first_seg = a // header.segment_frames
    last_seg = (b - 1) // header.segment_frames
    full = (a, b) == (0, header.frames)
    plan = segment_plan(reader, header, first_seg, last_seg, use_index=a > 0 and reader.seekable(),
                        on_damage=on_damage, audio=audio if full else None, to_end=full,
                        adapt=adapt_records)
    meta = VideoMeta(header.width, header.height, header.fps, b - a, header.pix_fmt)
    frames_out = decode_plan(m, header, plan, a, b, progress, on_damage, backend, decoders)

    def gen() -> Iterator[np.ndarray]:
        try:
            yield from frames_out
        except (MemoryError, RuntimeError) as e:
            if not is_out_of_memory(e):
                raise
            raise ResourceError(f"out of memory decoding {header.width}x{header.height} "
                                f"frames") from None

    return meta, gen()


def decompress(data: bytes, **kw) -> Tuple[VideoMeta, np.ndarray]:
    """:func:`decompress_from_file` from memory → (meta, ``T×H×W×3`` uint8 array)."""
    meta, it = decompress_from_file(io.BytesIO(data), **kw)
    return meta, np.stack(list(it))
