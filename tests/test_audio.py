"""Audio is not lost: the input's audio packets travel through the .mgv file unchanged (AUDIO
records interleaved with the segments by time) and are muxed back by stream copy; outputs that
cannot hold the codec drop it with one warning line; --frames drops audio."""
import io
import json
from fractions import Fraction

import av
import numpy as np
import pytest

from neuralcodec import audio, cli, codec
from neuralcodec import container as ct


def make_av(path, acodec="aac", frames=30, rate=25, sr=44100, w=24, h=16):
    """Video (FFV1 / MPEG-4) plus a 440 Hz sine track encoded with ``acodec``."""
    c = av.open(str(path), "w")
    v = c.add_stream("ffv1" if str(path).endswith(".mkv") else "mpeg4", rate=rate)
    v.width, v.height, v.pix_fmt = w, h, "yuv420p"
    a = c.add_stream(acodec, rate=sr)
    a.layout = "stereo" if acodec == "aac" else "mono"
    fmt = a.codec_context.format.name
    ch = a.codec_context.layout.nb_channels
    fs = a.codec_context.frame_size or 1024
    sig = 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(sr * frames / rate)) / sr)
    for i in range(frames):
        f = av.VideoFrame.from_ndarray(np.full((h, w, 3), i * 8 % 256, np.uint8), format="rgb24")
        f.pts = i
        for p in v.encode(f):
            c.mux(p)
    for s0 in range(0, len(sig) - fs + 1, fs):
        x = sig[s0:s0 + fs]
        if fmt == "fltp":
            arr = np.tile(x, (ch, 1)).astype(np.float32)
        elif fmt == "s16":
            arr = (np.repeat(x, ch) * 32767).astype(np.int16).reshape(1, -1)
        elif fmt == "s16p":
            arr = (np.tile(x, (ch, 1)) * 32767).astype(np.int16)
        else:
            raise AssertionError(fmt)
        af = av.AudioFrame.from_ndarray(arr, format=fmt, layout=a.codec_context.layout.name)
        af.sample_rate, af.pts = sr, s0
        for p in a.encode(af):
            c.mux(p)
    for p in list(a.encode()) + list(v.encode()):
        c.mux(p)
    c.close()
    return path


def audio_packets(path):
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return None
        s = c.streams.audio[0]
        return s.codec_context.name, [bytes(p) for p in c.demux(s) if p.size]


@pytest.mark.parametrize("src_ext, acodec, out_ext", [
    (".mkv", "aac", ".mkv"), (".mkv", "aac", ".mp4"), (".mkv", "flac", ".mkv"),
    (".mkv", "pcm_s16le", ".mkv"), (".mp4", "aac", ".mkv")])
def test_audio_packets_survive_bit_exact(runner, tmp_path, src_ext, acodec, out_ext):
    src = make_av(tmp_path / f"in{src_ext}", acodec)
    name, ref = audio_packets(src)
    assert len(ref) > 5
    mgv = tmp_path / "a.mgv"
    r = runner.invoke(cli.main, ["encode", str(src), "-o", str(mgv), "--segment-frames", "9", "-q"])
    assert r.exit_code == 0, r.output
    out = tmp_path / f"out{out_ext}"
    r = runner.invoke(cli.main, ["decode", str(mgv), "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert r.stderr == ""
    assert audio_packets(out) == (name, ref)
    with av.open(str(out)) as c:  # and it decodes
        assert sum(f.samples for f in c.decode(audio=0)) > 0
    d = json.loads(runner.invoke(cli.main, ["info", str(mgv), "--json"]).stdout)
    assert d["audio"][0]["codec"] == name and d["audio"][0]["packets"] == len(ref)
    assert d["audio"][0]["bytes"] == sum(map(len, ref)) and d["version"] == "1.1"


def test_audio_records_interleaved_and_skippable(tiny, tmp_path):
    src = make_av(tmp_path / "in.mkv", "aac", frames=30)
    buf = io.BytesIO()
    codec.compress_to_file(tiny, src, buf, segment_frames=9)
    data = buf.getvalue()
    r = ct.Reader(io.BytesIO(data))
    order = [rec.type for rec in r.records()]
    # track description first, then each segment followed by the audio of its time span
    assert order[0] == ct.REC_AUDIO and order[-2:] == [ct.REC_INDEX, ct.REC_END]
    seg_pos = [i for i, t in enumerate(order) if t == ct.REC_SEGMENT]
    assert len(seg_pos) == 4 and all(order[i + 1] == ct.REC_AUDIO for i in seg_pos[:-1])
    # a reader that ignores audio sees the plain segment sequence
    assert len(list(ct.Reader(io.BytesIO(data)).segments())) == 4
    # packets written before segment k+1 end before that segment starts (bounded buffering)
    r = ct.Reader(io.BytesIO(data))
    track = None
    end_time = 0.0
    for rec in r.records():
        if rec.type == ct.REC_SEGMENT:
            end_time = (ct.Segment.parse(rec.payload).first_frame + ct.Segment.parse(rec.payload).frames) / 25
        elif rec.type == ct.REC_AUDIO:
            a = ct.parse_audio(rec.payload)
            if isinstance(a, ct.AudioTrack):
                track = a
                continue
            for p in a.packets:
                assert (p.pts - track.start) * track.time_base < end_time + 1e-9 or end_time >= 30 / 25
    # audio=False leaves it out
    buf2 = io.BytesIO()
    codec.compress_to_file(tiny, src, buf2, segment_frames=9, audio=False)
    assert all(rec.type != ct.REC_AUDIO for rec in ct.Reader(io.BytesIO(buf2.getvalue())).records())


def test_outputs_without_audio_warn_and_frames_drop_audio(runner, tmp_path):
    src = make_av(tmp_path / "in.mkv", "flac", frames=10)
    mgv = tmp_path / "a.mgv"
    assert runner.invoke(cli.main, ["encode", str(src), "-o", str(mgv), "-q"]).exit_code == 0
    r = runner.invoke(cli.main, ["decode", str(mgv), "-o", str(tmp_path / "o.y4m"), "-q"])
    assert r.exit_code == 0
    assert r.stderr.strip() == "mgv: warning: audio track 0 (flac) dropped: y4m output cannot hold it (use .mkv)"
    r = runner.invoke(cli.main, ["decode", str(mgv), "-o", str(tmp_path / "p.mkv"), "--frames", "2:6", "-q"])
    assert r.exit_code == 0 and audio_packets(tmp_path / "p.mkv") is None


def test_damaged_audio_record_is_reported(tiny, tmp_path):
    src = make_av(tmp_path / "in.mkv", "aac", frames=10)
    data = bytearray(codec.compress(tiny, src, segment_frames=5))
    recs = [rec for rec in ct.Reader(io.BytesIO(bytes(data))).records() if rec.type == ct.REC_AUDIO]
    data[recs[1].offset + 40] ^= 0xFF  # a packets record
    reports = []
    sink = audio.AudioSink()
    _, it = codec.decompress_from_file(io.BytesIO(bytes(data)), model=tiny, on_damage=reports.append,
                                       audio=sink)
    assert len(list(it)) == 10
    assert len(reports) == 1 and reports[0].frames == 0
    assert 0 < len(sink.packets) < sum(len(ct.parse_audio(r.payload).packets) for r in recs[1:])
