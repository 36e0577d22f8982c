"""Audio carried through unchanged: demuxed from the input, stored in AUDIO records (spec
§8a), muxed into the decoded output by stream copy. Nothing is decoded or re-encoded.

::

    AudioSource(path)     input file → track descriptions + packets, demuxed lazily by time
    write_audio(writer)   packets → AUDIO records (after the segment of the same time span)
    AudioSink()           AUDIO records met while decoding → output streams + muxed packets

Packets are :class:`~neuralcodec.container.AudioPacket` (bytes as demuxed, timestamps in the
track's time base); the encoder interleaves them with the segments that cover the same time,
so memory stays bounded.
"""
from __future__ import annotations

import io
from collections import deque
from fractions import Fraction
from typing import Callable, Dict, List, Optional

from . import container as ct
from .errors import InputError
from .video_io import ffmpeg_message, open_container

# audio codecs the mp4 muxer takes by stream copy (mkv takes any codec FFmpeg knows)
MP4_AUDIO = {"aac", "mp3", "mp2", "opus", "ac3", "eac3", "alac", "flac", "dts", "truehd"}
I64 = (-(1 << 63) + 1, (1 << 63) - 1)  # int64 timestamps FFmpeg takes (-2^63 means "none")
MAX_AUDIO_SECONDS = 10 ** 9  # |timestamp| beyond ~31 years is forged or damaged, never muxed

Warn = Callable[[str], None]  # receives one line per dropped track or packet


def _packet_time(p, start: int, tb: Fraction, last: Fraction) -> Fraction:
    t = p.pts if p.pts is not None else p.dts
    return last if t is None else (t - start) * tb


class AudioSource:
    """The audio tracks of a video file, demuxed lazily (packets as-is, no decoding).

    :meth:`tracks` describes each track that can be carried; :attr:`warnings` says which
    were dropped and why (beyond :data:`~neuralcodec.container.MAX_AUDIO_TRACKS`, or without
    packets, codec parameters or sample rate). :meth:`take_until` returns the packets whose
    time (relative to the first video frame) is before ``t`` seconds.
    """

    def __init__(self, path) -> None:
        import av

        self._c = open_container(path)
        try:
            v = self._c.streams.video[0]
            vstart = (v.start_time or 0) * v.time_base if v.start_time is not None else Fraction(0)
            every = list(self._c.streams.audio)
            self.streams = every[:ct.MAX_AUDIO_TRACKS]
            self._tracks: List[ct.AudioTrack] = []
            self.warnings: List[str] = [
                f"audio track {i} dropped: a stream holds at most {ct.MAX_AUDIO_TRACKS} tracks"
                for i in range(ct.MAX_AUDIO_TRACKS, len(every))]
            firsts = _first_packets(path, len(self.streams)) if self.streams else {}
            for i, st in enumerate(self.streams):
                cc = st.codec_context
                tb = Fraction(st.time_base)
                name = cc.name if ct.CODEC_RE.match(cc.name.encode("ascii", "replace")) else None
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

    out: Dict[int, bytes] = {}
    c = open_container(path)
    try:
        streams = list(c.streams.audio)[:n]
        for i, st in enumerate(streams):
            p0 = next((p for p in c.demux(st) if p.size), None)
            c.seek(0) if i + 1 < len(streams) else None
            if p0 is None:
                continue
            buf = io.BytesIO()
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


def write_audio(writer: ct.Writer, packets: Dict[int, List[ct.AudioPacket]]) -> None:
    """Append ``packets`` (track → list) as AUDIO records of about
    :data:`~neuralcodec.container.AUDIO_RECORD_TARGET` bytes each, track by track."""
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
    :attr:`packets` of ``(track, AudioPacket)`` that a writer drains as it goes
    (:meth:`output_streams`, :meth:`mux_pending`). ``keep=False`` only counts (:attr:`stats`:
    track → [packets, bytes])."""

    def __init__(self, keep: bool = True) -> None:
        self.tracks: Dict[int, ct.AudioTrack] = {}
        self.packets: deque = deque()
        self.keep = keep
        self.stats: Dict[int, List[int]] = {}

    def add(self, item) -> None:
        """Take one parsed AUDIO payload (:func:`~neuralcodec.container.parse_audio`)."""
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

    def output_streams(self, c, kind: str, warn: Warn) -> dict:
        """Streams of the PyAV output container ``c`` (track → (stream, AudioTrack)) for the
        tracks an output of ``kind`` can hold by stream copy (mkv: any; mp4:
        :data:`MP4_AUDIO`); the others are dropped with one warning each."""
        import av

        out = {}
        for t in sorted(self.tracks.values(), key=lambda t: t.track):
            if kind in ("y4m", "png", "nut") or (kind == "mp4" and t.codec not in MP4_AUDIO):
                warn(f"audio track {t.track} ({t.codec}) dropped: {kind} output cannot hold it "
                     f"(use .mkv)")
                continue
            try:
                tc = av.open(io.BytesIO(t.template), "r", format="matroska")
                try:
                    out[t.track] = (c.add_stream_from_template(tc.streams.audio[0]), t)
                finally:
                    tc.close()
            except (av.FFmpegError, IndexError, ValueError) as e:
                warn(f"audio track {t.track} ({t.codec}) dropped: {ffmpeg_message(e)}")
        return out

    def mux_pending(self, c, streams: dict, warn: Warn, last: dict) -> None:
        """Mux the pending packets into ``c`` (``streams`` from :meth:`output_streams`). A
        packet FFmpeg would refuse (timestamps outside int64 after the shift by −start, a
        decoding timestamp not after the previous one of its track, or any mux error) is
        dropped with one warning per track: the video is never lost for a damaged or forged
        audio packet. ``last``: track → last dts muxed (state kept by the caller)."""
        import av

        while self.packets:
            track, p = self.packets.popleft()
            if track not in streams:
                continue
            s, t = streams[track]
            pts = None if p.pts is None else p.pts - t.start
            dts = None if p.dts is None else p.dts - t.start
            why = None
            if any(v is not None and not (I64[0] <= v <= I64[1]
                                          and abs(v * t.time_base) <= MAX_AUDIO_SECONDS)
                   for v in (pts, dts)):
                why = "timestamp out of range"
            elif dts is not None and track in last and dts <= last[track]:
                why = "out of order"
            elif pts is not None and dts is not None and pts < dts:
                why = "pts before dts"
            if why is None:
                try:
                    pkt = av.Packet(p.data)
                    pkt.pts, pkt.dts = pts, dts
                    pkt.duration = p.duration
                    pkt.time_base = t.time_base
                    pkt.is_keyframe = p.keyframe
                    pkt.stream = s
                    c.mux(pkt)
                    if dts is not None:
                        last[track] = dts
                    continue
                except (av.FFmpegError, OverflowError, ValueError) as e:
                    why = ffmpeg_message(e)
            dropped = last.setdefault(("dropped", track), 0)
            if not dropped:
                warn(f"audio track {track}: dropped a packet that cannot be muxed ({why}); "
                     f"further drops in this track are not reported")
            last[("dropped", track)] = dropped + 1
