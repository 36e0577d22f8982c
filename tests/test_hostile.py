"""Hostile inputs of issue 16: resource bombs from spec-legal headers, forged AUDIO records,
odd outputs and usage errors. Each test pins one promise (one-line error, non-zero exit, no
traceback, no half-written output) that was broken before."""
import io
import os
import resource
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from neuralcodec import codec, payload, recovery, weights
from neuralcodec import container as ct
from neuralcodec.errors import MGVError, ResourceError, StreamError, Truncated

ROOT = Path(__file__).resolve().parents[1]
needs_default = pytest.mark.skipif(weights.DEFAULT_MODEL not in weights.registry(),
                                   reason="default model not registered")


@pytest.fixture(scope="module")
def tiny(make_tiny):
    return make_tiny(0.05)


def header_for(model_name, sha_hex, cfg, **kw) -> ct.Header:
    d = dict(width=64, height=64, frames=1, fps_num=25, fps_den=1, model_bits=cfg.bits,
             bits=cfg.bits, temporal_factor=cfg.temporal_factor, spatial_factor=cfg.spatial_factor,
             entropy=1, segment_frames=1, model_sha256=bytes.fromhex(sha_hex)[:16],
             pix_fmt="rgb24", model_name=model_name)
    d.update(kw)
    return ct.Header(**d)


def stream(h: ct.Header, segments=True) -> bytes:
    """A valid stream for header ``h`` whose segments hold constant bits (mode 1: tiny)."""
    buf = io.BytesIO()
    w = ct.Writer(buf, h)
    lh, lw = h.latent_hw
    for i in range(h.segment_count if segments else 0):
        first, n = h.segment_bounds(i)
        t = h.latent_frames(n)
        mode, data = payload.encode_payload(torch.zeros((1, h.bits, t, lh, lw)), ct.ENTROPY_CONTEXT)
        w.write_segment(ct.Segment(i, first, n, t, lh, lw, mode, data))
    if segments:
        w.close()
    return buf.getvalue()


def mgv(*args, cwd, limit_as=None, env_extra=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **(env_extra or {}))

    def lim():
        if limit_as:
            resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))
    return subprocess.run([sys.executable, "-m", "neuralcodec", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, preexec_fn=lim)


def one_line_error(p) -> str:
    assert p.returncode not in (0, None), p
    assert "Traceback" not in p.stderr, p.stderr
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("mgv: error:"), p.stderr
    return lines[0]


# ---- resource bombs ------------------------------------------------------------------------
@needs_default
def test_huge_frame_bomb_is_refused_in_one_line(tmp_path):
    """A few hundred bytes declaring 8192×4096 frames made the decoder allocate tens of GB and
    die with a torch traceback (under a 3 GB address-space limit here)."""
    e = weights.registry()[weights.DEFAULT_MODEL]
    cfg = weights.load_model(weights.DEFAULT_MODEL).cfg  # the header must match its geometry
    h = header_for(weights.DEFAULT_MODEL, e.sha256, cfg, width=8192, height=4096)
    data = stream(h)
    assert len(data) < 4096
    (tmp_path / "bomb.mgv").write_bytes(data)
    p = mgv("decode", "bomb.mgv", "-o", "out.y4m", "-q", cwd=tmp_path, limit_as=3 << 30)
    assert "memory" in one_line_error(p)
    assert sorted(os.listdir(tmp_path)) == ["bomb.mgv"]


def test_huge_frame_refused_before_work(tiny, monkeypatch):
    monkeypatch.setenv("MGV_MAX_MEMORY", "1G")
    h = header_for("tiny-test", tiny.sha256, tiny.cfg, width=8192, height=4096)
    data = stream(h)
    calls = []
    monkeypatch.setattr(tiny, "decode", lambda *a, **k: calls.append(1))
    with pytest.raises(ResourceError, match="memory"):
        codec.decompress_from_file(io.BytesIO(data), model=tiny)
    assert not calls


def test_out_of_memory_is_a_one_line_error(tiny, monkeypatch):
    data = stream(header_for("tiny-test", tiny.sha256, tiny.cfg, width=16, height=16))

    def oom(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 68719476736 bytes.\nmore")
    monkeypatch.setattr(tiny, "decode", oom)
    with pytest.raises(ResourceError, match="out of memory"):
        codec.decompress(data, model=tiny)
    monkeypatch.setattr(tiny, "encode_latents", oom)
    with pytest.raises(ResourceError, match="out of memory"):
        codec.compress(tiny, np.zeros((1, 16, 16, 3), np.uint8))


def test_long_segment_codes_are_built_per_chunk(tiny, monkeypatch):
    """One 8193-frame segment: the decoder used to allocate the codes of the whole segment
    (float32, K×t×h×w) before decoding its first frame; now one chunk at a time, and long
    segments' bits are decoded one latent frame at a time."""
    h = header_for("tiny-test", tiny.sha256, tiny.cfg, width=32, height=32, frames=8193,
                   segment_frames=8193)
    data = stream(h)
    assert len(data) < 600
    k, (lh, lw) = h.model_bits, h.latent_hw
    full = k * h.latent_frames(8193) * lh * lw
    sizes = []
    real_zeros = torch.zeros

    def spy(*a, **kw):
        out = real_zeros(*a, **kw)
        sizes.append(out.numel())
        return out
    monkeypatch.setattr(torch, "zeros", spy)
    monkeypatch.setattr(recovery, "LAZY_BITS", 1 << 16)
    monkeypatch.setattr(recovery, "decode_codes", lambda *a: pytest.fail("eager bits"))
    meta, it = codec.decompress_from_file(io.BytesIO(data), model=tiny)
    frames = [next(it) for _ in range(30)]
    assert len(frames) == 30 and frames[0].shape == (32, 32, 3)
    assert max(sizes) < full / 100


def test_lazy_and_eager_segment_decodes_agree(tiny, monkeypatch):
    rng = np.random.default_rng(0)
    v = rng.integers(0, 256, (13, 24, 40, 3), dtype=np.uint8)
    for entropy in ("none", "context"):
        data = codec.compress(tiny, v, segment_frames=9, entropy=entropy, bits=5)
        ref = codec.decompress(data, model=tiny)[1]
        with monkeypatch.context() as mp:
            mp.setattr(recovery, "LAZY_BITS", 0)
            mp.setattr(recovery, "decode_codes", lambda *a: pytest.fail("eager bits"))
            np.testing.assert_array_equal(codec.decompress(data, model=tiny)[1], ref)


def test_frame_count_bomb_without_segments(tiny, tmp_path):
    """A ~100-byte stream declaring 2^24 frames and no segments "concealed" for hundreds of
    hours; now it is refused at once, strict or recovering."""
    h = header_for("tiny-test", tiny.sha256, tiny.cfg, width=16, height=16, frames=1 << 24,
                   segment_frames=65537)
    data = stream(h, segments=False) + ct.RECORD_HEAD.pack(ct.RECORD_SYNC, ct.REC_END, 1, 0, 8)
    assert len(data) < 150
    with pytest.raises(Truncated):
        codec.decompress_from_file(io.BytesIO(data), model=tiny)
    with pytest.raises(Truncated):
        codec.decompress_from_file(io.BytesIO(data), model=tiny, on_damage=lambda d: None)


def test_concealment_is_bounded_on_pipes_too(tiny):
    """Non-seekable input: the cap applies while decoding (max(1000, 8 × intact frames))."""
    h = header_for("tiny-test", tiny.sha256, tiny.cfg, width=16, height=16, frames=5000,
                   segment_frames=5)
    data = stream(h)

    class Pipe(io.RawIOBase):
        def __init__(self, b):
            self.b = io.BytesIO(b)

        def readable(self):
            return True

        def readinto(self, m):
            d = self.b.read(len(m))
            m[:len(d)] = d
            return len(d)
    cut = data[:data.index(ct.RECORD_SYNC, 200)]  # header + the first few SEGMENTs
    meta, it = codec.decompress_from_file(io.BufferedReader(Pipe(cut)), model=tiny,
                                          on_damage=lambda d: None)
    n = 0
    with pytest.raises(Truncated, match="concealed"):
        for _ in it:
            n += 1
    assert 1000 < n <= 1100


def test_mode1_payload_too_short_for_its_shape(tiny):
    """A few bytes of mode-1 data cannot code millions of symbols (spec §7 payload length)."""
    from neuralcodec.entropy import decode_bits, min_payload_bytes
    from neuralcodec.errors import PayloadError

    shape = (18, 16384, 32, 32)
    assert min_payload_bytes(shape) == 512
    with pytest.raises(PayloadError, match="too short"):
        decode_bits(b"\0" * 508, shape)


# ---- forged AUDIO records --------------------------------------------------------------------
def rewrite_audio(data: bytes, fn) -> bytes:
    """Copy a stream, passing every parsed AUDIO item through ``fn`` (which returns the item
    to write)."""
    r = ct.Reader(io.BytesIO(data))
    out = io.BytesIO()
    w = ct.Writer(out, r.header)
    for rec in r.records():
        if rec.type == ct.REC_SEGMENT:
            w.write_segment(ct.Segment.parse(rec.payload))
        elif rec.type == ct.REC_AUDIO:
            w.write_record(ct.REC_AUDIO, fn(ct.parse_audio(rec.payload)).to_payload(), critical=False)
    w.close()
    return out.getvalue()


@pytest.fixture
def av_stream(tiny, tmp_path):
    from test_audio import make_av

    src = make_av(tmp_path / "in.mkv", "aac", frames=10)
    return codec.compress(tiny, src, segment_frames=5)


def decode_cli(runner, tmp_path, data, *extra):
    from neuralcodec import cli

    (tmp_path / "f.mgv").write_bytes(data)
    out = tmp_path / "o.mkv"
    r = runner.invoke(cli.main, ["decode", str(tmp_path / "f.mgv"), "-o", str(out), "-q", "-y", *extra])
    return r, out


def test_forged_audio_time_base_is_damage_not_a_traceback(runner, tmp_path, av_stream):
    """A time base of 3·10^9 ended in an OverflowError traceback; FFmpeg's time bases are
    int32, and the spec now says so (1..2^31−1): the record is damage, the video survives."""
    import dataclasses

    def forge(a):
        return dataclasses.replace(a, time_base=Fraction(3 * 10**9, 1)) if isinstance(a, ct.AudioTrack) else a
    r, out = decode_cli(runner, tmp_path, rewrite_audio(av_stream, forge), "--recover")
    assert r.exit_code == 0 and r.exception is None or isinstance(r.exception, SystemExit), r.output
    assert "Traceback" not in r.output and out.exists()
    assert "damaged" in r.stderr


@pytest.mark.parametrize("forge", ["pts_max", "out_of_order"])
def test_forged_audio_packets_drop_with_a_warning(runner, tmp_path, av_stream, forge):
    """A pts of 2^63−1 ended in an OverflowError; one out-of-order packet made the decode fail
    with no output at all. Now the packet is dropped with a warning and the video is kept."""
    import dataclasses

    import av

    state = {"done": False}

    def fn(a):
        if isinstance(a, ct.AudioTrack) or state["done"] or len(a.packets) < 3:
            return a
        state["done"] = True
        pk = list(a.packets)
        if forge == "pts_max":
            pk[1] = dataclasses.replace(pk[1], pts=(1 << 63) - 1, dts=(1 << 63) - 1)
        else:
            pk[1], pk[2] = pk[2], pk[1]
        return ct.AudioPackets(a.track, tuple(pk))
    data = rewrite_audio(av_stream, fn)
    assert state["done"]
    r, out = decode_cli(runner, tmp_path, data)
    assert r.exit_code == 0, r.output
    assert "mgv: warning: audio track 0: dropped a packet" in r.stderr
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 10
    with av.open(str(out)) as c:
        got = sum(1 for p in c.demux(audio=0) if p.size)
    sent = sum(len(a.packets) for a in map(ct.parse_audio, (rec.payload for rec in ct.Reader(
        io.BytesIO(data)).records() if rec.type == ct.REC_AUDIO)) if isinstance(a, ct.AudioPackets))
    assert got == sent - 1  # only the forged packet is lost


def test_seventeenth_audio_track_is_reported(runner, tmp_path):
    """Only 16 tracks fit a stream; the 17th was dropped without a word."""
    import av

    from neuralcodec import cli

    path = tmp_path / "many.mkv"
    c = av.open(str(path), "w")
    v = c.add_stream("ffv1", rate=25)
    v.width, v.height, v.pix_fmt = 16, 16, "yuv420p"
    tracks = []
    for _ in range(17):
        a = c.add_stream("pcm_s16le", rate=8000)
        a.layout = "mono"
        tracks.append(a)
    for i in range(2):
        f = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        f.pts = i
        for p in v.encode(f):
            c.mux(p)
        for a in tracks:
            af = av.AudioFrame.from_ndarray(np.zeros((1, 320), np.int16), format="s16", layout="mono")
            af.sample_rate, af.pts = 8000, 320 * i
            for p in a.encode(af):
                c.mux(p)
    for s in [v] + tracks:
        for p in s.encode():
            c.mux(p)
    c.close()
    r = runner.invoke(cli.main, ["encode", str(path), "-o", str(tmp_path / "m.mgv"), "-q"])
    assert r.exit_code == 0, r.output
    assert "mgv: warning: audio track 16 dropped: a stream holds at most 16 tracks" in r.stderr


# ---- documented outputs on real inputs, frame rates, usage errors ------------------------------
@pytest.mark.parametrize("w, h, kind, pix", [(47, 33, "mp4", "yuv420p"), (1, 64, "mkv", "yuv420p"),
                                             (1, 1, "mp4", "yuv420p"), (3, 3, "mkv", "yuv420p"),
                                             (2, 64, "mkv", "rgb24")])
def test_odd_sizes_write_every_documented_output(tmp_path, w, h, kind, pix):
    """47×33 to .mp4 failed with "Generic error in an external library"; 1×64 to .mkv failed
    (FFV1 refuses narrow frames with its default slices)."""
    import av

    from neuralcodec import video_io as vio

    from neuralcodec import video_out as vout

    meta = vio.VideoMeta(w, h, Fraction(25), 3, pix)
    frames = [np.full((h, w, 3), 40 * i, np.uint8) for i in range(3)]
    out = tmp_path / f"o.{kind}"
    assert vout.write_video(out, meta, frames) == 3
    with av.open(str(out)) as c:
        got = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(got) == 3 and got[0].shape == (h, w, 3)


@pytest.mark.parametrize("rate", [Fraction(2000), Fraction(1, 2000)])
def test_frame_rates_outside_the_header_range_are_refused(runner, tmp_path, rate):
    """Rates above 1000 or below 1/1000 fps were silently stored as 25 fps."""
    import av

    from neuralcodec import cli

    p = tmp_path / "in.mkv"
    c = av.open(str(p), "w")
    s = c.add_stream("ffv1", rate=rate)
    s.width = s.height = 16
    s.pix_fmt = "yuv420p"
    for i in range(2):
        f = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        f.pts = i
        for q in s.encode(f):
            c.mux(q)
    for q in s.encode():
        c.mux(q)
    c.close()
    r = runner.invoke(cli.main, ["encode", str(p), "-o", str(tmp_path / "o.mgv"), "-q"])
    assert r.exit_code == 3
    assert r.stderr.startswith("mgv: error:") and "1/1000..1000 fps" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.mgv").exists()


@pytest.mark.parametrize("args", [["encode", "x.mkv", "--bits", "abc", "-o", "y.mgv"],
                                  ["encode", "x.mkv"], ["decode"], ["nosuch"],
                                  ["decode", "a.mgv", "-o", "b.mkv", "--bogus"]])
def test_usage_errors_are_one_line_exit_3(tmp_path, args):
    """Click usage errors exited 2 (the code of a damaged stream) with four lines of usage."""
    p = mgv(*args, cwd=tmp_path)
    assert p.returncode == 3
    line = one_line_error(p)
    assert "--help" in line


def test_no_arguments_and_help_still_print_usage(tmp_path):
    for args in ([], ["--help"], ["decode", "--help"]):
        p = mgv(*args, cwd=tmp_path)
        assert p.returncode == 0 and p.stdout.startswith("Usage: mgv"), (args, p.stderr)


# ---- outputs ----------------------------------------------------------------------------------
@pytest.fixture
def small_mgv(tiny, tmp_path):
    data = codec.compress(tiny, np.random.default_rng(0).integers(0, 256, (3, 16, 24, 3), dtype=np.uint8))
    p = tmp_path / "s.mgv"
    p.write_bytes(data)
    return p


def test_y_writes_into_a_fifo_never_replaces_it(runner, tmp_path, small_mgv):
    """-y replaced a device node or FIFO with a regular file (as root, -o /dev/null -y would
    have deleted /dev/null)."""
    import stat
    import threading

    from neuralcodec import cli

    fifo = tmp_path / "pipe.y4m"
    os.mkfifo(fifo)
    got = []
    t = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    t.start()
    r = runner.invoke(cli.main, ["decode", str(small_mgv), "-o", str(fifo), "-y", "-q"])
    t.join(30)
    assert r.exit_code == 0, r.output
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert got and got[0].startswith(b"YUV4MPEG2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.y4m", "s.mgv"]


def test_output_is_created_exclusively_without_y(tmp_path):
    """Two commands writing the same new path without -y both succeeded and one output was
    lost; now the second to finish fails with "exists" and the first output is kept."""
    from neuralcodec import cli

    target = tmp_path / "a.mgv"
    with pytest.raises(MGVError, match="exists"):
        with cli.atomic_output(target, False) as tmp:
            tmp.write_bytes(b"mine")
            target.write_bytes(b"the other command's")  # it finished first
    assert target.read_bytes() == b"the other command's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mgv"]
    with cli.atomic_output(tmp_path / "b.mgv", False) as tmp:
        tmp.write_bytes(b"x")
    assert (tmp_path / "b.mgv").read_bytes() == b"x"


@pytest.mark.parametrize("pattern", ["%d%d.png", "100%_%05d.png", "x_%s.png", "%0100d.png"])
def test_bad_png_patterns_are_one_line_errors(runner, tmp_path, small_mgv, pattern):
    """PNG patterns such as %d%d.png or 100%_%05d.png ended in tracebacks."""
    from neuralcodec import cli

    r = runner.invoke(cli.main, ["decode", str(small_mgv), "-o", str(tmp_path / pattern), "-q"])
    assert r.exit_code == 4, r.output
    assert r.stderr.startswith("mgv: error:") and len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.mgv"]


def test_percent_written_twice_is_a_literal(runner, tmp_path, small_mgv):
    from neuralcodec import cli

    r = runner.invoke(cli.main, ["decode", str(small_mgv), "-o", str(tmp_path / "100%%_%02d.png"), "-q"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["100%_01.png", "100%_02.png", "100%_03.png", "s.mgv"]


def test_png_sequence_failing_midway_leaves_nothing(runner, tmp_path, small_mgv):
    """A PNG sequence that failed midway left its first frames."""
    from neuralcodec import cli

    (tmp_path / "f_2.png").mkdir()  # the second name cannot be replaced
    r = runner.invoke(cli.main, ["decode", str(small_mgv), "-o", str(tmp_path / "f_%d.png"), "-y", "-q"])
    assert r.exit_code == 4, r.output
    assert len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f_2.png", "s.mgv"]


def test_exit_4_messages_name_the_target_not_the_temp_file(tmp_path):
    from neuralcodec import cli
    from neuralcodec.errors import OutputError

    target = tmp_path / "o.mkv"
    with pytest.raises(OutputError) as ei:
        with cli.atomic_output(target, False) as tmp:
            raise OutputError(f"{tmp}: writing failed (File too large)")
    assert str(ei.value) == f"{target}: writing failed (File too large)"
    with pytest.raises(OSError) as ei:
        with cli.atomic_output(target, False) as tmp:
            raise OSError(27, "File too large", str(tmp))
    assert ei.value.filename == str(target)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("sig", ["SIGHUP", "SIGQUIT"])
def test_sighup_and_sigquit_remove_the_part_file(tmp_path, sig):
    """SIGHUP (a closed terminal) and SIGQUIT left the hidden .part file behind."""
    import signal
    import time

    script = tmp_path / "run.py"
    script.write_text(
        "import sys, time\n"
        "from pathlib import Path\n"
        "from neuralcodec import cli\n"
        "def slow(*a, **k):\n"
        "    with cli.atomic_output(Path('out.mgv'), False) as tmp:\n"
        "        tmp.write_bytes(b'partial')\n"
        "        print('ready', flush=True)\n"
        "        time.sleep(60)\n"
        "cli._encode = slow\n"
        "sys.argv = ['mgv', 'encode', 'in.mkv', '-o', 'out.mgv']\n"
        "cli.main()\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        p.send_signal(getattr(signal, sig))
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    assert err.strip() == "mgv: error: interrupted"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["run.py"]


@needs_default
def test_encoding_a_huge_picture_is_refused_in_one_line(tmp_path):
    """Encoding an 8192×4096 PNG died with a traceback under 4 GB."""
    import av

    c = av.open(str(tmp_path / "big.png"), "w", format="image2")
    s = c.add_stream("png", rate=1)
    s.width, s.height, s.pix_fmt = 8192, 4096, "rgb24"
    f = av.VideoFrame.from_ndarray(np.zeros((4096, 8192, 3), np.uint8), format="rgb24")
    for p in list(s.encode(f)) + list(s.encode()):
        c.mux(p)
    c.close()
    p = mgv("encode", "big.png", "-o", "big.mgv", "-q", cwd=tmp_path, limit_as=4 << 30)
    assert "memory" in one_line_error(p)
    assert sorted(os.listdir(tmp_path)) == ["big.png"]


# ---- issue 35: mgv tokens bounded, closed standard streams ------------------------------------
def test_tokens_of_a_long_segment_are_written_in_bounded_memory(tiny, tmp_path):
    """A small stream of one 1,025-latent-frame segment at 1 bit expands to 1 M tokens; the
    file is written one latent frame at a time (the issue's 26 KB stream of 16,385 latent
    frames of 1920x1088 asked for ~5 GB at once)."""
    import tracemalloc

    from safetensors.numpy import load_file

    from neuralcodec import tokens as tk

    h = header_for("tiny-test", tiny.sha256, tiny.cfg, width=128, height=128, frames=4097,
                   segment_frames=4097, bits=1)
    data = stream(h)
    assert len(data) < 2000
    out = tmp_path / "t.safetensors"
    tracemalloc.start()
    try:
        with open(out, "wb") as fo:
            layout = tk.write_stream_tokens(io.BytesIO(data), fo)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    tokens = 1025 * 32 * 32
    assert layout.entries[0][0].shape == (1025, 32, 32)
    assert peak < tokens * 8 / 8, peak  # an eighth of the int64 tokens it would hold at once
    got = load_file(str(out))["tokens.0"]
    want = tk.tokens_from_stream(io.BytesIO(data)).segments[0]
    assert got.dtype == np.int32 and np.array_equal(got, want)
    assert tk.Tokens.load(out).segments[0].shape == (1025, 32, 32)


def test_tokens_apply_the_strict_truncation_rule(tiny, tmp_path):
    """Spec §8b: a file too short for the segments its header announces is Truncated at once
    by every strict reader, `mgv tokens` as `mgv decode`."""
    from neuralcodec import tokens as tk

    h = header_for("tiny-test", tiny.sha256, tiny.cfg, width=16, height=16, frames=1 << 24,
                   segment_frames=65537)
    data = stream(h, segments=False) + ct.RECORD_HEAD.pack(ct.RECORD_SYNC, ct.REC_END, 1, 0, 8)
    for fn in (tk.tokens_from_stream, tk.plan_stream_tokens):
        with pytest.raises(Truncated, match="can hold at most 0"):
            fn(io.BytesIO(data))
    (tmp_path / "b.mgv").write_bytes(data)
    p = mgv("tokens", "b.mgv", "-o", "t.safetensors", cwd=tmp_path)
    assert p.returncode == 2 and "can hold at most" in one_line_error(p)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["b.mgv"]


@pytest.mark.parametrize("cmd", ["decode - -o o.y4m", "encode - -o o.mgv",
                                 "decode x.mgv -o - --format y4m",
                                 "detokenize x.safetensors -o - --format y4m"])
def test_closed_standard_streams_are_usage_errors(tmp_path, cmd):
    """`<&-` / `>&-`: Python has no sys.stdin / sys.stdout; one line, exit 3, no output."""
    (tmp_path / "x.mgv").write_bytes(b"")
    (tmp_path / "x.safetensors").write_bytes(b"")
    closed = "<&-" if " - -o" in cmd else ">&-"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run(["bash", "-c", f'"{sys.executable}" -m neuralcodec {cmd} {closed}'],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 3 and "is closed" in one_line_error(p)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["x.mgv", "x.safetensors"]
