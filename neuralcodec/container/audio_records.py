"""AUDIO records (version 1.1, spec §8a): audio track descriptions and packets, carried
as-is."""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional, Tuple, Union

from ..errors import RecordError
from .header import MAX_AUDIO_TEMPLATE, MAX_AUDIO_TRACKS, MAX_TIME_BASE_TERM

__all__ = ["AUDIO_TRACK", "AUDIO_PACKETS", "AUDIO_TRACK_HEAD", "AUDIO_TRACK_FIXED",
           "AUDIO_PACKETS_HEAD", "AUDIO_PACKET", "NO_PTS", "CODEC_RE", "AudioTrack", "AudioPacket",
           "AudioPackets", "parse_audio"]

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
    this version does not define (skipped whatever follows its kind byte, spec §8a) →
    :class:`RecordError` when malformed (an empty payload included); every length is checked
    against the payload."""
    if payload[:1] and payload[0] not in (AUDIO_TRACK, AUDIO_PACKETS):
        return None  # a kind from a later minor version: its layout is not ours to check
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
        else:  # AUDIO_PACKETS: other kinds were skipped above
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
    except (struct.error, IndexError):
        raise RecordError("AUDIO record is too short") from None
