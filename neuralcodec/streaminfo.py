"""Stream inspection without a model: what ``mgv info`` shows, and the strict reference read of
the conformance suite.

::

    stream_info(fo) → StreamInfo        header, segment table, audio tracks, damage (no decoding)
    StreamInfo.to_dict() / .lines()     ``mgv info --json`` / ``mgv info``
    verify_stream(fo) → Verified        every record read strictly, every payload decoded to bits
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import BinaryIO, List, Optional, Tuple

import numpy as np

from . import container as ct
from .adapt import Adaptation, read_adaptations
from .audio import AudioSink
from .errors import StreamError
from .payload import decode_payload
from .recovery import DamageReport, DamageRuns, segment_plan
from .weights import registry


@dataclass(frozen=True)
class SegmentInfo:
    """One row of the segment table: an intact segment, or a run of damaged ones."""

    index: int  # segment number (the first of the run for a damaged row)
    first_frame: int  # its first frame
    frames: int  # frames it covers (the whole run for a damaged row)
    damaged: bool = False  # True: segments index..last_index are damaged or missing
    last_index: Optional[int] = None  # damaged rows: the last segment of the run
    error: str = ""  # damaged rows: the first error met (one line)
    bits: int = 0  # intact rows: bits per token stored
    latent_shape: Tuple[int, ...] = ()  # intact rows: (bits, t, h, w)
    entropy: str = ""  # intact rows: payload coding, "none" or "context"
    bytes: int = 0  # intact rows: payload bytes
    bpp: float = 0.0  # intact rows: payload bits per pixel

    def to_dict(self) -> dict:
        if self.damaged:
            return {"index": self.index, "last_index": self.last_index,
                    "first_frame": self.first_frame, "frames": self.frames, "damaged": True,
                    "error": self.error}
        return {"index": self.index, "first_frame": self.first_frame, "frames": self.frames,
                "bits": self.bits, "latent_shape": list(self.latent_shape),
                "entropy": self.entropy, "bytes": self.bytes, "bpp": self.bpp, "damaged": False}


@dataclass(frozen=True)
class AudioInfo:
    """An audio track carried in the stream."""

    track: int  # track number (0..15)
    codec: str  # FFmpeg codec name
    sample_rate: int  # Hz
    channels: int  # channel count
    time_base: str  # unit of the packet timestamps, "num/den"
    packets: int  # packets stored
    bytes: int  # bytes of those packets

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class AdaptInfo:
    """An ADAPT record (spec §8c): a coded change of the decoder for some segments."""

    first_segment: int  # first segment it applies to
    segments: int  # how many segments
    tensors: int  # decoder tensors it changes
    numbers: int  # numbers it changes
    bytes: int  # record size, framing included
    decoder: str = "own"  # the network it changes: "own" (the model's decoder, method 0) or, for
    #   method 2, the decoder variant's registered name, else its file's SHA-256 prefix (hex)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class StreamInfo:
    """Everything :func:`stream_info` finds in a stream (``mgv info`` prints it, ``mgv info
    --json`` serialises :meth:`to_dict`)."""

    version: Tuple[int, int]  # (major, minor) of the stream
    header: ct.Header  # the decoded header
    segments: Tuple[SegmentInfo, ...]  # segment table, one row per damaged run
    audio: Tuple[AudioInfo, ...]  # audio tracks
    damaged: Tuple[DamageReport, ...]  # damaged ranges in frame order (empty: intact stream)
    file_bytes: Optional[int] = None  # stream size (None for an unseekable input)
    adapt: Tuple[AdaptInfo, ...] = ()  # ADAPT records (decoder adaptation, versions 1.3 and 1.4)

    @property
    def bpp(self) -> Optional[float]:
        """Bits per pixel of the whole stream (None without :attr:`file_bytes`)."""
        h = self.header
        return None if self.file_bytes is None else 8 * self.file_bytes / (h.frames * h.width * h.height)

    @property
    def kbps(self) -> Optional[float]:
        """Rate of the whole stream in kbit/s (None without :attr:`file_bytes`)."""
        h = self.header
        return None if self.file_bytes is None else 8 * self.file_bytes / 1000 / float(h.frames / h.fps)

    def to_dict(self) -> dict:
        """JSON-friendly form (the output of ``mgv info --json``)."""
        d = {"version": "%d.%d" % self.version, "header": self.header.to_dict(),
             "segments": [s.to_dict() for s in self.segments],
             "audio": [a.to_dict() for a in self.audio],
             "adapt": [a.to_dict() for a in self.adapt],
             "damaged": [{"first_frame": x.first_frame, "end_frame": x.end_frame,
                          "first_segment": x.segments[0] if x.segments else None,
                          "last_segment": x.segments[-1] if x.segments else None,
                          "error": x.reason, "message": str(x)}
                         for x in self.damaged]}
        if self.file_bytes is not None:
            d.update(file_bytes=self.file_bytes, bpp=self.bpp, kbps=self.kbps)
        return d

    def lines(self, name: str) -> List[str]:
        """Text form (the output of ``mgv info``), ``name`` naming the stream."""
        h = self.header
        out = [f"{name}: .mgv version {'%d.%d' % self.version}"]
        out += [f"  {n:<16} {value:<34} {doc}" for n, value, doc in h.describe()]
        out.append(f"  {'fps':<16} {h.fps_num}/{h.fps_den} ({float(h.fps_num) / h.fps_den:.3f})")
        out.append(f"  {'duration':<16} {float(h.frames / h.fps):.3f} s")
        if self.file_bytes is not None:
            out.append(f"  {'size':<16} {self.file_bytes} bytes, {self.bpp:.4f} bpp, {self.kbps:.1f} kbps")
        out.append(f"  segments: {len(self.segments)}")
        out.append(f"    {'#':>5} {'first':>8} {'frames':>6} {'bits':>4} {'entropy':>8} {'bytes':>10} {'bpp':>8}")
        for s in self.segments:
            if s.damaged:
                last = f"-{s.last_index}" if s.last_index != s.index else ""
                out.append(f"    {str(s.index) + last:>5} {s.first_frame:>8} {s.frames:>6} "
                           f"DAMAGED: {s.error}")
                continue
            out.append(f"    {s.index:>5} {s.first_frame:>8} {s.frames:>6} {s.bits:>4} {s.entropy:>8} "
                       f"{s.bytes:>10} {s.bpp:>8.4f}")
        for a in self.adapt:
            last = a.first_segment + a.segments - 1
            net = "" if a.decoder == "own" else f" of decoder {a.decoder}"
            out.append(f"  decoder adaptation{net}: segments {a.first_segment}-{last}, {a.tensors} "
                       f"tensors, {a.numbers} numbers, {a.bytes} bytes")
        for a in self.audio:
            out.append(f"  audio track {a.track}: {a.codec} {a.sample_rate} Hz "
                       f"{a.channels} ch, {a.packets} packets, {a.bytes} bytes (carried as-is)")
        if self.damaged:
            out.append(f"  damaged: {len(self.damaged)} range(s)")
            out += [f"    {x}" for x in self.damaged]
        return out


def stream_info(fo: BinaryIO) -> StreamInfo:
    """Header, segment table, audio tracks and damage of a ``.mgv`` stream without decoding
    any payload (a scan of every record) → :class:`StreamInfo`."""
    reader = ct.Reader(fo)
    h = reader.header
    damage: List[DamageReport] = []  # damage that cost no segment (reported by the plan)
    reports: List[DamageReport] = []  # damaged runs of segments
    sink = AudioSink(keep=False)
    rows: List[SegmentInfo] = []
    runs = DamageRuns()
    adapt: List[ct.Record] = []

    def close_run() -> None:
        done = runs.close()
        if done is not None:
            reports.append(done)
            rows.append(_damaged_row(done))

    for i, seg, reason in segment_plan(reader, h, 0, h.segment_count - 1, use_index=False,
                                       on_damage=damage.append, audio=sink, to_end=True,
                                       adapt=adapt):
        first, n = h.segment_bounds(i)
        if seg is None:
            done = runs.add(i, first, first + n, reason)
            if done is not None:
                reports.append(done)
                rows.append(_damaged_row(done))
            continue
        close_run()
        b = seg.stored_bits(h)
        rows.append(SegmentInfo(seg.index, seg.first_frame, seg.frames, bits=b,
                                latent_shape=(b, seg.latent_t, seg.latent_h, seg.latent_w),
                                entropy=ct.ENTROPY_NAMES[seg.entropy], bytes=len(seg.data),
                                bpp=8 * len(seg.data) / (seg.frames * h.width * h.height)))
    close_run()
    size = reader.stream_size()
    adapts = []
    for rec in adapt:
        try:
            ad = Adaptation.parse(rec.payload, h)
        except StreamError as e:
            damage.append(DamageReport(h.frames, h.frames, range(0),
                                       f"ADAPT record not used ({str(e).splitlines()[0]})"))
            continue
        if ad is not None:
            adapts.append(AdaptInfo(ad.first_segment, ad.segments, len(ad.tensors), ad.numbers,
                                    rec.size, _network(h, ad)))
    audio = tuple(AudioInfo(t.track, t.codec, t.sample_rate, t.channels,
                            f"{t.time_base.numerator}/{t.time_base.denominator}",
                            *sink.stats.get(t.track, [0, 0]))
                  for t in sink.tracks.values())
    return StreamInfo(reader.version, h, tuple(rows), audio,
                      tuple(sorted(damage + reports, key=lambda d: (d.first_frame, d.end_frame))),
                      size, tuple(adapts))


def _damaged_row(d: DamageReport) -> SegmentInfo:
    return SegmentInfo(d.segments[0], d.first_frame, d.frames, damaged=True,
                       last_index=d.segments[-1], error=d.reason)


@dataclass(frozen=True)
class Verified:
    """What :func:`verify_stream` read."""

    frames: int  # frames of the stream
    segments: int  # segments read
    bits_sha256: str  # SHA-256 of the decoded b×t×h×w uint8 bits of all segments, in order
    adapt_sha256: Optional[str] = None  # SHA-256 of the ADAPT records' integers (int32 LE, in
    #   record and tensor order); None when the stream has no ADAPT record


def verify_stream(fo: BinaryIO) -> Verified:
    """Strictly read a whole ``.mgv`` stream without a model: every record in order (spec §4),
    every SEGMENT checked and its payload decoded to bits, every AUDIO record parsed →
    :class:`Verified`. The first failure raises its :class:`~neuralcodec.errors.StreamError`
    (the conformance suite's reference reader)."""
    reader = ct.Reader(fo)
    h = reader.header
    digest = hashlib.sha256()
    sink = AudioSink(keep=False)
    adapt: List[ct.Record] = []
    n = 0
    ints = None
    for _, seg, _ in segment_plan(reader, h, 0, h.segment_count - 1, use_index=False,
                                  on_damage=None, audio=sink, to_end=True, adapt=adapt):
        if ints is None:  # ADAPT records precede SEGMENT 0: all of them are read by now
            ints = _adapt_digest(read_adaptations(adapt, h)) if adapt else ""
        digest.update(np.ascontiguousarray(decode_payload(seg, seg.stored_bits(h))).tobytes())
        n += 1
    return Verified(h.frames, n, digest.hexdigest(), ints or None)


def _network(h: ct.Header, ad: Adaptation) -> str:
    """:attr:`AdaptInfo.decoder` of ``ad`` in a stream of header ``h``."""
    if ad.decoder_sha256 is None:
        return "own"
    e = registry().get(h.model_name)
    found = next((d.name for d in (e.decoders if e is not None else ())
                  if bytes.fromhex(d.sha256)[:16] == ad.decoder_sha256), None)
    return found or ad.decoder_sha256.hex()


def _adapt_digest(ads: List[Adaptation]) -> str:
    d = hashlib.sha256()
    for ad in ads:
        for t in ad.tensors:
            d.update(np.ascontiguousarray(t.values, dtype="<i4").tobytes())
    return d.hexdigest()
