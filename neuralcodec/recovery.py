"""Damage: which segments of a stream can be decoded, and what is reported for the others.

:func:`segment_plan` walks a stream's segments in order (through the INDEX, or by a
resynchronizing scan of every record) and says for each one whether it is intact;
:class:`DamageRuns` merges consecutive damaged segments into one :class:`DamageReport`, the
single merger used by the decoder (frames it conceals) and by :mod:`neuralcodec.streaminfo`
(the ranges ``mgv info`` lists). :func:`decode_plan` decodes the intact segments and
conceals the others (the last good frame repeated), as much as spec §8b allows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np

from . import container as ct
from .audio import AudioSink
from .chunks import Progress, decode_frames, model_device
from .errors import PayloadError, RecordError, StreamError, Truncated
from .payload import check_payload, decode_codes, payload_frames

CONCEAL_MIN_FRAMES = 1000  # a recovering decode may always conceal this many frames …
CONCEAL_RATIO = 8  # … or this many per frame of the intact segments it found
MIN_SEGMENT_RECORD = 16 + 20 + 1  # bytes of the smallest SEGMENT record (framing, head, data)
LAZY_BITS = 1 << 26  # segments with more bits than this are decoded one latent frame at a time


@dataclass(frozen=True)
class DamageReport:
    """A damaged part of a stream met while decoding.

    Frames ``first_frame .. end_frame - 1`` (absolute numbers, within the decoded range) were
    concealed because segments ``segments`` were damaged or missing; ``first_frame ==
    end_frame`` (and no segments) when the damage cost no frames (a damaged INDEX or AUDIO
    record, garbage between records)."""

    first_frame: int  # first concealed frame
    end_frame: int  # one past the last concealed frame
    segments: range  # the damaged segments of the range, consecutive (O(1) memory for any run)
    reason: str  # first error met in the range (one line)

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


class DamageRuns:
    """Merges damaged segments, met in order, into one :class:`DamageReport` per run of
    consecutive segments (the first segment's reason names the run)."""

    def __init__(self) -> None:
        self._run: Optional[list] = None  # [first frame, end frame, first segment, end segment, reason]

    def add(self, segment: int, first: int, end: int, reason: str) -> Optional[DamageReport]:
        """Segment ``segment`` (frames ``first..end-1``) is damaged → the report of the run it
        ends, when it does not continue the current one."""
        run = self._run
        if run is not None and run[3] == segment and run[1] == first:
            run[1] = end
            run[3] = segment + 1
            return None
        done = self.close()
        self._run = [first, end, segment, segment + 1, reason or "missing"]
        return done

    def close(self) -> Optional[DamageReport]:
        """An intact segment or the end: → the report of the current run, if any."""
        run, self._run = self._run, None
        return None if run is None else DamageReport(run[0], run[1], range(run[2], run[3]), run[4])


def too_much_concealment(concealed: int, intact: int) -> bool:
    """A recovering decode conceals at most max(CONCEAL_MIN_FRAMES, CONCEAL_RATIO × intact
    frames) frames (spec §8b): a forged frame count cannot make it write hours of grey."""
    return concealed > max(CONCEAL_MIN_FRAMES, CONCEAL_RATIO * intact)


def segments_held(reader: ct.Reader) -> Optional[int]:
    """How many SEGMENT records the bytes of a seekable file can hold at most (None: not
    seekable): a header announcing more describes a stream that is not there."""
    size = reader.stream_size()
    return None if size is None else max(0, (size - reader.records_offset) // MIN_SEGMENT_RECORD)


def check_stream_size(reader: ct.Reader, recover: bool = False) -> None:
    """Spec §8b: a seekable file whose bytes cannot hold the header's S segments is
    :class:`Truncated` at once for a strict reader (``recover`` False), and for a recovering
    one when the frames it would have to conceal exceed :func:`too_much_concealment`. The one
    check of every strict reader of segments (``mgv decode``, ``mgv tokens``)."""
    header = reader.header
    held = segments_held(reader)
    if held is None or held >= header.segment_count:
        return
    kept = min(header.frames, held * header.segment_frames)
    if not recover or too_much_concealment(header.frames - kept, kept):
        raise Truncated(f"the header announces {header.segment_count} segments of "
                        f"{header.frames} frames, the file's bytes can hold at most {held}")


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0]


def segment_plan(reader: ct.Reader, header: ct.Header, first: int, last: int, use_index: bool,
                  on_damage: OnDamage, audio: Optional[AudioSink], to_end: bool,
                  adapt: Optional[List[ct.Record]] = None
                  ) -> Iterator[Tuple[int, Optional[ct.Segment], str]]:
    """``(i, segment, "")`` or ``(i, None, reason)`` for every segment ``first..last`` in
    order. Strict (``on_damage`` None): the first damage raises. Otherwise damaged or missing
    segments come as None and damage that costs no segment is reported through
    ``on_damage``. ``to_end``: scan through END after ``last`` (trailing AUDIO records).
    ``adapt``: receives the ADAPT records (spec §8c), all of them before the first segment
    is yielded."""
    index = None
    if use_index:
        try:
            index = reader.index()
        except StreamError as e:
            if on_damage is None:
                raise
            index = None  # an inconsistent index: report it, scan instead
            on_damage(DamageReport(header.frames, header.frames, range(0), _first_line(e)))
    if index is not None:
        if adapt is not None and index:
            try:
                adapt.extend(r for r in reader.records_before(index[0].offset)
                             if r.type == ct.REC_ADAPT)
            except StreamError as e:
                if on_damage is None:
                    raise
                on_damage(DamageReport(header.frames, header.frames, range(0), _first_line(e)))
        for i in range(first, last + 1):
            try:
                yield i, reader.segment_at(index[i].offset, i), ""
            except StreamError as e:
                if on_damage is None:
                    raise
                yield i, None, _first_line(e)
        return
    nxt = 0  # next segment number expected
    lost = ""  # first error of damage not yet attributed to missing segments

    def note(e: StreamError) -> None:
        nonlocal lost
        if on_damage is None:
            raise e
        lost = lost or _first_line(e)

    def flush_lost() -> None:
        nonlocal lost
        if lost and on_damage is not None:
            on_damage(DamageReport(header.frames, header.frames, range(0), lost))
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
        elif item.type == ct.REC_ADAPT:
            if adapt is not None:
                adapt.append(item)
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


def decode_plan(m, header: ct.Header, plan, a: int, b: int, progress: Progress,
                 on_damage: OnDamage, backend: Optional[str],
                 decoders: Optional[Callable[[int], object]] = None) -> Iterator[np.ndarray]:
    """The frames ``a..b-1`` (``H×W×3`` uint8) of the segments of ``plan`` (from
    :func:`segment_plan`): intact ones decoded with the resolved model ``m`` (or
    ``decoders(i)``, the model of segment i: :class:`neuralcodec.adapt.SegmentDecoders`), damaged ones
    concealed (the last good frame repeated; mid-grey before the first) and reported through
    ``on_damage``, one :class:`DamageReport` per run of damaged segments. ``backend``: the
    kernels that unpack raw payloads on the model's device."""
    device, dtype = model_device(m), m.dtype
    last_frame: Optional[np.ndarray] = None
    runs = DamageRuns()
    intact = concealed = 0

    def report(d) -> None:
        if d is not None and on_damage is not None:
            on_damage(d)

    for i, seg, reason in plan:
        f0, n = header.segment_bounds(i)
        lo, hi = max(a, f0), min(b, f0 + n)
        codes = None
        if seg is not None:
            try:
                sb = seg.stored_bits(header)
                if sb * seg.latent_t * seg.latent_h * seg.latent_w <= LAZY_BITS:
                    codes = decode_codes(seg, sb, device, dtype, backend)
                else:  # a long segment: validate, then decode again frame by frame
                    check_payload(seg, sb)
                    codes = payload_frames(seg, sb, device, dtype, backend)
            except PayloadError as e:
                if on_damage is None:
                    raise
                seg, reason = None, _first_line(e)
        if seg is not None:
            intact += n
        elif too_much_concealment(concealed + hi - lo, intact):
            raise Truncated(
                f"damaged stream: {header.frames - intact} of its {header.frames} frames "
                f"would have to be concealed, far more than its intact segments justify "
                f"({intact} frames)")
        else:
            concealed += hi - lo
        if seg is None:
            report(runs.add(i, lo, hi, reason))
            fill = last_frame if last_frame is not None else np.full(
                (header.height, header.width, 3), 128, np.uint8)
            for _ in range(hi - lo):
                if progress:
                    progress(1)
                yield fill
            continue
        report(runs.close())
        for f in decode_frames(m if decoders is None else decoders(i), header, seg, codes, a, b,
                               progress):
            last_frame = f
            yield f
    report(runs.close())
