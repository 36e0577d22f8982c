"""Tokens for generative models (``neuralcodec.tokens``, ``mgv tokens`` / ``mgv detokenize``)
and ``mgv`` as a Unix filter (``encode -``, ``decode -o - --format``), on a tiny model: tokens
equal the stored bits of a stream, tokens → detokenize equals ``mgv decode``, the safetensors
file loads with safetensors alone, bad token files fail with one line, and pipe round trips
equal file round trips byte for byte (CliRunner and real OS pipes)."""
import io
import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from neuralcodec import cli, codec, payload
from neuralcodec import container as ct
from neuralcodec import video_io as vio
from neuralcodec import video_out as vout
from neuralcodec import tokens as tk
from neuralcodec.errors import InputError

from test_cli import leftovers, make_video, one_error_line, runner, RUNNER, tiny_file  # noqa: E402,F401
from test_codec import clip  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RATE = Fraction(30000, 1001)


@pytest.fixture(scope="module")
def tiny(make_tiny):
    return make_tiny(0.05)


def stored_bits(data: bytes):
    r = ct.Reader(io.BytesIO(data))
    return r.header, [payload.decode_payload(s, r.header.bits) for s in r.segments()]


# ---- API -------------------------------------------------------------------------------------
def test_tokens_equal_the_stored_bits(tiny):
    v = clip(t=13)
    data = codec.compress(tiny, v, segment_frames=5, fps=RATE, bits=6)
    header, bits = stored_bits(data)
    tok = tk.tokens_from_stream(io.BytesIO(data))
    assert len(tok.segments) == header.segment_count == 3 and tok.bits == (6, 6, 6)
    for b, t in zip(bits, tok.segments):
        assert t.shape == b.shape[1:] and t.dtype == np.int64
        # the token index of bitstream_spec.md §5, written out: Σ_k 2^k·B[k]
        want = sum((b[k].astype(np.int64) << k) for k in range(6))
        assert np.array_equal(t, want)
    assert 0 <= min(t.min() for t in tok.segments) and max(t.max() for t in tok.segments) < 64
    assert len({int(x) for t in tok.segments for x in t.ravel()}) > 4  # not a constant code
    # encoding the video gives the same tokens without writing a stream
    direct = tk.tokenize(tiny, v, segment_frames=5, fps=RATE, bits=6)
    assert direct.header == tok.header
    assert all(np.array_equal(a, b) for a, b in zip(direct.segments, tok.segments))
    # a stream's first bits: the nested code at a lower rate
    low = tk.tokens_from_stream(io.BytesIO(data), bits=2)
    assert low.header.bits == 2 and all(np.array_equal(a, b & 3) for a, b in zip(low.segments, tok.segments))
    with pytest.raises(InputError):
        tk.tokens_from_stream(io.BytesIO(data), bits=7)


def test_detokenize_equals_decode_and_edits_change_the_video(tiny):
    v = clip(t=13)
    data = codec.compress(tiny, v, segment_frames=9, fps=RATE)
    _, want = codec.decompress(data, model=tiny)
    tok = tk.tokens_from_stream(io.BytesIO(data))
    got = tk.detokenize(tiny, tok)
    assert got.shape == want.shape == v.shape and np.array_equal(got, want)
    shifted = tk.Tokens(tok.header, tuple(np.roll(t, 1, axis=2) for t in tok.segments), tok.bits)
    assert not np.array_equal(tk.detokenize(tiny, shifted), want)


def test_file_loads_with_safetensors_alone_and_round_trips(tiny, tmp_path):
    v = clip(t=13)
    tok = tk.tokenize(tiny, v, segment_frames=9, fps=RATE)
    k = tiny.cfg.bits
    path = tmp_path / "t.safetensors"
    tok.save(path, split=(k // 2, k - k // 2))
    arrays = load_file(str(path))
    assert sorted(arrays) == ["subtokens.0.0", "subtokens.0.1", "subtokens.1.0", "subtokens.1.1",
                              "tokens.0", "tokens.1"]
    for i, t in enumerate(tok.segments):
        a = arrays[f"tokens.{i}"]
        assert a.dtype == np.int32 and np.array_equal(a, t)
        lo, hi = arrays[f"subtokens.{i}.0"], arrays[f"subtokens.{i}.1"]
        assert lo.max() < 1 << (k // 2) and np.array_equal(lo + (hi << (k // 2)), t)
    from safetensors import safe_open
    with safe_open(str(path), framework="numpy") as f:
        md = json.loads(f.metadata()["mgv"])
    assert (md["model"], md["bits"], md["width"], md["height"], md["fps"], md["frames"],
            md["segment_frames"]) == ("tiny-test", k, 42, 30, "30000/1001", 13, 9)
    back = tk.Tokens.load(path)
    assert back.header == ct.replace_header(tok.header, entropy=0) and back.bits == tok.bits
    assert all(np.array_equal(a, b) for a, b in zip(back.segments, tok.segments))
    # a generative model may write sub-tokens only
    only_sub = {n: a for n, a in arrays.items() if n.startswith("subtokens.")}
    save_file(only_sub, str(tmp_path / "s.safetensors"), metadata={"format": tk.FORMAT, "mgv": json.dumps(md)})
    sub = tk.Tokens.load(tmp_path / "s.safetensors")
    assert all(np.array_equal(a, b) for a, b in zip(sub.segments, tok.segments))


def test_bad_token_files(tiny, tmp_path):
    tok = tk.tokenize(tiny, clip(t=5), segment_frames=5, fps=RATE, bits=4)
    good = tok.tensors()
    md = tok.metadata()

    def write(arrays, meta=md, fmt=tk.FORMAT):
        p = tmp_path / f"bad{len(list(tmp_path.iterdir()))}.safetensors"
        save_file(arrays, str(p), metadata={"format": fmt, "mgv": json.dumps(meta)})
        return p

    cases = [
        (write({"tokens.0": good["tokens.0"] + 16}), "outside 0..15"),
        (write({"tokens.0": good["tokens.0"] - 100}), "outside 0..15"),
        (write({"tokens.0": good["tokens.0"][:, :1]}), "shape"),
        (write({"tokens.1": good["tokens.0"]}), "unexpected tensor tokens.1"),
        (write({"other": good["tokens.0"]}), "unexpected tensor"),
        (write({"tokens.0": good["tokens.0"].astype(np.float32)}), "integer"),
        (write(good, dict(md, width=0)), "header"),
        (write(good, dict(md, segment_bits=[9])), "segment_bits"),
        (write(good, fmt="other"), "not an mgv tokens file"),
    ]
    for p, msg in cases:
        with pytest.raises(InputError, match=msg):
            tk.Tokens.load(p)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(InputError, match="not a safetensors file"):
        tk.Tokens.load(tmp_path / "junk.safetensors")


# ---- CLI -------------------------------------------------------------------------------------
def test_cli_tokens_detokenize(runner, tmp_path):
    src = make_video(tmp_path / "in.mkv")
    mgv = tmp_path / "a.mgv"
    r = runner.invoke(cli.main, ["encode", str(src), "-o", str(mgv), "--segment-frames", "5", "-q",
                                 "--bits", "6"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli.main, ["tokens", str(mgv), "-o", str(tmp_path / "s.safetensors"), "--split", "3,3"])
    assert r.exit_code == 0, r.output
    assert "2 segments" in r.stdout
    r = runner.invoke(cli.main, ["tokens", str(src), "-o", str(tmp_path / "v.safetensors"), "-q",
                                 "--segment-frames", "5", "--bits", "6"])
    assert r.exit_code == 0, r.output
    s, vt = load_file(str(tmp_path / "s.safetensors")), load_file(str(tmp_path / "v.safetensors"))
    _, bits = stored_bits(mgv.read_bytes())
    assert sorted(vt) == ["tokens.0", "tokens.1"] and "subtokens.1.1" in s
    for i, b in enumerate(bits):
        assert np.array_equal(s[f"tokens.{i}"], tk.bits_to_tokens(b))
        assert np.array_equal(vt[f"tokens.{i}"], s[f"tokens.{i}"])
    # tokens → detokenize gives the frames of mgv decode (y4m: byte for byte)
    r = runner.invoke(cli.main, ["decode", str(mgv), "-o", str(tmp_path / "d.y4m"), "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli.main, ["detokenize", str(tmp_path / "s.safetensors"), "-o",
                                 str(tmp_path / "t.y4m"), "-q"])
    assert r.exit_code == 0, r.output
    assert "9 frames 48x40 @ 30000/1001" in r.stdout
    assert (tmp_path / "t.y4m").read_bytes() == (tmp_path / "d.y4m").read_bytes()
    # one-line errors, nothing left behind
    r = runner.invoke(cli.main, ["tokens", str(mgv), "-o", str(tmp_path / "x.safetensors"), "--split", "4,4"])
    assert "split" in one_error_line(r, 3)
    r = runner.invoke(cli.main, ["tokens", str(mgv), "-o", str(tmp_path / "x.safetensors"), "--model", "m"])
    one_error_line(r, 3)
    r = runner.invoke(cli.main, ["tokens", str(mgv), "-o", str(tmp_path / "s.safetensors")])
    assert "exists" in one_error_line(r, 4)
    r = runner.invoke(cli.main, ["detokenize", str(mgv), "-o", str(tmp_path / "x.mkv")])
    assert "safetensors" in one_error_line(r, 3)
    r = runner.invoke(cli.main, ["detokenize", str(tmp_path / "s.safetensors"), "-o", "-"])
    assert "--format" in one_error_line(r, 4)
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "x.mkv").exists()
    assert leftovers(tmp_path) == []


def y4m_bytes(path: Path, t=9, w=48, h=40) -> bytes:
    src = make_video(path.with_suffix(".mkv"), t=t, w=w, h=h)
    n = vout.write_video(path, vio.probe(src), vio.read_frames(src))
    assert n == t
    return path.read_bytes()


@pytest.mark.parametrize("fmt", ["y4m", "nut", "mkv"])
def test_cli_pipes_equal_files(runner, tmp_path, fmt):
    data = y4m_bytes(tmp_path / "in.y4m")
    r = runner.invoke(cli.main, ["encode", str(tmp_path / "in.y4m"), "-o", str(tmp_path / "f.mgv"), "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli.main, ["encode", "-", "-o", str(tmp_path / "p.mgv"), "-q"], input=data)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "p.mgv").read_bytes() == (tmp_path / "f.mgv").read_bytes()
    out = tmp_path / f"f.{fmt}"
    r = runner.invoke(cli.main, ["decode", str(tmp_path / "f.mgv"), "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli.main, ["decode", str(tmp_path / "f.mgv"), "-o", "-", "--format", fmt])
    assert r.exit_code == 0, r.output
    assert b"9 frames" in r.stderr_bytes and b"frames" not in r.stdout_bytes[-200:]
    same_as_file(r.stdout_bytes, out, fmt)
    # the stream itself from stdin
    r = runner.invoke(cli.main, ["decode", "-", "-o", "-", "--format", fmt, "-q"],
                      input=(tmp_path / "f.mgv").read_bytes())
    assert r.exit_code == 0, r.output
    same_as_file(r.stdout_bytes, out, fmt)


def same_as_file(data: bytes, path: Path, fmt: str) -> None:
    """y4m and nut: byte for byte. mkv: Matroska writes random UIDs (two file writes differ
    too) and a pipe gets no cues, so the decoded frames are compared."""
    if fmt != "mkv":
        assert data == path.read_bytes()
        return
    meta, it = vio.open_pipe(io.BytesIO(data))
    assert (meta.width, meta.height, meta.fps) == (48, 40, RATE)
    got, want = list(it), list(vio.read_frames(path))
    assert len(got) == len(want) == 9 and all(np.array_equal(a, b) for a, b in zip(got, want))


def test_cli_pipe_errors(runner, tmp_path):
    r = runner.invoke(cli.main, ["encode", "-", "-o", str(tmp_path / "p.mgv"), "-q"], input=b"not a video")
    assert "stdin" in one_error_line(r, 3)
    r = runner.invoke(cli.main, ["encode", "-", "-o", str(tmp_path / "p.mgv"), "-q"], input=b"")
    one_error_line(r, 3)
    r = runner.invoke(cli.main, ["decode", "-", "-o", "-", "--format", "y4m"], input=b"garbage!" * 4)
    assert "magic" in one_error_line(r, 2)
    assert leftovers(tmp_path) == [] and not (tmp_path / "p.mgv").exists()


def real_mgv(tiny_file, cwd, args, stdin=None):
    """``mgv ARGS`` in a real process (tiny model) with real OS pipes: ``stdin`` bytes fed
    through a pipe (not seekable), stdout captured from a pipe."""
    script = cwd / "run_mgv.py"
    script.write_text(RUNNER)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, str(script), str(tiny_file[0]), tiny_file[1], *args],
                          cwd=cwd, env=env, input=stdin, capture_output=True, timeout=300)


def test_real_pipes_equal_files(tiny_file, tmp_path):
    data = y4m_bytes(tmp_path / "in.y4m", t=6)
    r = real_mgv(tiny_file, tmp_path, ["encode", "in.y4m", "-o", "f.mgv", "-q"])
    assert r.returncode == 0, r.stderr
    r = real_mgv(tiny_file, tmp_path, ["encode", "-", "-o", "p.mgv", "-q"], stdin=data)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "p.mgv").read_bytes() == (tmp_path / "f.mgv").read_bytes()
    r = real_mgv(tiny_file, tmp_path, ["decode", "f.mgv", "-o", "f.y4m", "-q"])
    assert r.returncode == 0, r.stderr
    r = real_mgv(tiny_file, tmp_path, ["decode", "-", "-o", "-", "--format", "y4m"],
                 stdin=(tmp_path / "f.mgv").read_bytes())
    assert r.returncode == 0, r.stderr
    assert r.stdout == (tmp_path / "f.y4m").read_bytes() and b"6 frames" in r.stderr


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="no ffmpeg binary")
def test_ffmpeg_pipeline(tiny_file, tmp_path):
    make_video(tmp_path / "in.mkv", t=6)
    ff = subprocess.run(["ffmpeg", "-v", "error", "-i", "in.mkv", "-f", "yuv4mpegpipe", "-"],
                        cwd=tmp_path, capture_output=True, check=True).stdout
    r = real_mgv(tiny_file, tmp_path, ["encode", "-", "-o", "x.mgv", "-q"], stdin=ff)
    assert r.returncode == 0, r.stderr
    r = real_mgv(tiny_file, tmp_path, ["decode", "x.mgv", "-o", "-", "--format", "y4m", "-q"])
    assert r.returncode == 0, r.stderr
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", "-", "-c:v", "ffv1", "out.mkv"],
                         cwd=tmp_path, input=r.stdout, capture_output=True)
    assert out.returncode == 0, out.stderr
    assert sum(1 for _ in vio.read_frames(tmp_path / "out.mkv")) == 6


def test_32_bit_tokens_are_int64(tmp_path):
    import hashlib
    h = ct.Header(width=16, height=8, frames=5, fps_num=25, fps_den=1, model_bits=32, bits=32,
                  temporal_factor=4, spatial_factor=8, entropy=0, segment_frames=5,
                  model_sha256=hashlib.sha256(b"").digest()[:16], pix_fmt="rgb24", model_name="m32")
    seg = np.array([[[0, (1 << 32) - 1]], [[1 << 31, 12345]]], dtype=np.int64)  # t=2, h=1, w=2
    tok = tk.Tokens(h, (seg,), (32,))
    bits = tok.segment_bits(0)
    assert bits.shape == (32, 2, 1, 2) and bits[:, 0, 0, 1].sum() == 32 and bits[31, 1, 0, 0] == 1
    assert np.array_equal(tk.bits_to_tokens(bits), seg)
    tok.save(tmp_path / "t.safetensors", split=(16, 16))
    a = load_file(str(tmp_path / "t.safetensors"))
    assert a["tokens.0"].dtype == np.int64 and np.array_equal(a["tokens.0"], seg)
    assert a["subtokens.0.1"][0, 0, 1] == 0xFFFF and a["subtokens.0.1"][1, 0, 0] == 1 << 15
    back = tk.Tokens.load(tmp_path / "t.safetensors")
    assert np.array_equal(back.segments[0], seg) and back.header.model_name == "m32"


# ---- hostile token files (issue 35): one InputError / ResourceError, before any data is read -
def raw_file(path: Path, table: dict, md, data: bytes = b"", md_text: str = None) -> Path:
    """A safetensors file written byte by byte: ``table`` (tensor entries), ``md`` (the
    ``mgv`` metadata, or its JSON text ``md_text``) and ``data``."""
    t = dict(table, __metadata__={"format": tk.FORMAT, "version": "1",
                                  "mgv": md_text if md_text is not None else json.dumps(md)})
    text = json.dumps(t).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


@pytest.fixture(scope="module")
def small_tokens(tiny):
    return tk.tokenize(tiny, clip(t=5), segment_frames=5, fps=RATE, bits=4)


def entry(shape, dtype="I32", begin=0):
    n = int(np.prod(shape)) * {"I32": 4, "I64": 8}.get(dtype, 2)
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, begin + n]}


@pytest.mark.parametrize("field, value", [
    ("fps", "1/0"), ("fps", "0/0"), ("fps", "1e999999999"), ("fps", "9" * 5000), ("fps", 25),
    ("fps", "Infinity"), ("width", "@Infinity"), ("width", "@NaN"), ("height", "@-Infinity"),
    ("width", 1e300), ("frames", 10 ** 40), ("frames", "@" + "9" * 5000), ("bits", True),
    ("segment_frames", 0), ("segment_bits", [0]), ("segment_bits", [10 ** 30]),
    ("segment_bits", "@Infinity"), ("segment_bits", [1] * 3), ("split", [0, 4]), ("split", [5]),
    ("split", "@[1e999]"), ("split", [1] * 1000), ("model", "x" * 10 ** 6), ("model_sha256", "00"),
    ("pix_fmt", None), ("extra", "@" + "[" * 100000 + "]" * 100000),
    ("split", "@" + "[" * 3000 + "]" * 3000), ("latent_hw", [1, 1]), ("segments", 2),
])
def test_metadata_schema_refuses_before_arithmetic(small_tokens, tmp_path, field, value):
    """Non-finite, degenerate, huge or deeply nested metadata values: one InputError in
    bounded time (an fps with a nine-digit exponent used to spin for minutes, 1/0 and
    Infinity to end in ZeroDivisionError / OverflowError, nesting in RecursionError)."""
    import time

    tok = small_tokens
    md = tok.metadata()
    arrays = tok.tensors()
    text = json.dumps(dict(md, **{field: "@@"}))
    lit = value[1:] if isinstance(value, str) and value.startswith("@") else json.dumps(value)
    p = raw_file(tmp_path / "m.safetensors", {"tokens.0": entry(arrays["tokens.0"].shape)}, None,
                 arrays["tokens.0"].tobytes(), md_text=text.replace('"@@"', lit))
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="metadata|JSON|nested|header fields|segment_bits"):
        tk.Tokens.load(p)
    assert time.perf_counter() - t0 < 2


@pytest.mark.parametrize("dtype", ["BF16", "F8_E4M3", "F8_E5M2", "F16", "F32", "BOOL", 7, None])
def test_non_integer_dtypes_are_one_error(small_tokens, tmp_path, dtype):
    arrays = small_tokens.tensors()
    shape = arrays["tokens.0"].shape
    n = int(np.prod(shape)) * 2
    p = raw_file(tmp_path / "d.safetensors",
                 {"tokens.0": {"dtype": dtype, "shape": list(shape), "data_offsets": [0, n]}},
                 small_tokens.metadata(), b"\0" * n)
    with pytest.raises(InputError, match="not an integer dtype"):
        tk.Tokens.load(p)


def test_sizes_are_checked_before_data_is_read(small_tokens, tmp_path, monkeypatch):
    """Shapes, offsets and the file size are checked from the header alone: a 4 GiB sparse
    file whose shape contradicts its header, offsets past the end, overlapping tensors; and a
    consistent file whose tokens cannot fit in memory is refused before it is read."""
    tok = small_tokens
    md = tok.metadata()
    shape = tok.tensors()["tokens.0"].shape
    big = (shape[0], 4096, 4096)
    p = raw_file(tmp_path / "s.safetensors", {"tokens.0": entry(big)}, md)
    os.truncate(p, 1 << 32)  # sparse: the data "exists"
    reads = []
    monkeypatch.setattr(tk.TokensFile, "_array", lambda *a: reads.append(a))
    with pytest.raises(InputError, match="shape"):
        tk.Tokens.load(p)
    n = int(np.prod(shape)) * 4
    cases = [
        ({"tokens.0": entry(shape, begin=8)}, b"\0" * n, "outside the file"),
        ({"tokens.0": {"dtype": "I32", "shape": list(shape), "data_offsets": [0, n - 4]}}, b"\0" * n, "needs"),
        ({"tokens.0": entry(shape), "subtokens.0.0": entry(shape)}, b"\0" * n, "overlap|split"),
        ({"tokens.0": {"dtype": "I32", "shape": list(shape)[:2], "data_offsets": [0, n]}}, b"\0" * n, "t×h×w"),
        ({"tokens.0": {"dtype": "I32", "shape": [-1, 1, 1], "data_offsets": [0, n]}}, b"\0" * n, "t×h×w"),
        ({"tokens.0": {"dtype": "I32", "shape": list(shape), "data_offsets": [n, 0]}}, b"\0" * n, "outside"),
    ]
    for table, data, msg in cases:
        with pytest.raises(InputError, match=msg):
            tk.Tokens.load(raw_file(tmp_path / "c.safetensors", table, md, data))
    assert reads == []
    # consistent with its header (8192×4096 frames) but too large for the memory allowed
    md = dict(md, width=8192, height=4096, latent_hw=None, segment_bits=None)
    hw = (1024, 2048)
    p = raw_file(tmp_path / "b.safetensors", {"tokens.0": entry((shape[0],) + hw)}, md)
    os.truncate(p, p.stat().st_size + shape[0] * hw[0] * hw[1] * 4)
    monkeypatch.setenv("MGV_MAX_MEMORY", "16M")
    from neuralcodec.errors import ResourceError
    with pytest.raises(ResourceError, match="GiB"):
        tk.Tokens.load(p)
    assert reads == []


def test_detokenize_refuses_a_frame_size_the_decoder_cannot_hold(runner, small_tokens,
                                                                  tmp_path, monkeypatch):
    """The up-front refusal of `mgv decode`, from the tokens file's header alone."""
    md = dict(small_tokens.metadata(), width=8192, height=4096, latent_hw=None)
    t = small_tokens.segments[0].shape[0]
    p = raw_file(tmp_path / "b.safetensors", {"tokens.0": entry((t, 1024, 2048))}, md)
    os.truncate(p, p.stat().st_size + t * 1024 * 2048 * 4)
    monkeypatch.setenv("MGV_MAX_MEMORY", "64M")
    r = runner.invoke(cli.main, ["detokenize", str(p), "-o", str(tmp_path / "o.y4m")])
    assert "decoding 8192x4096 frames needs about" in one_error_line(r, 1)
    assert leftovers(tmp_path) == [] and not (tmp_path / "o.y4m").exists()


def test_a_header_too_large_for_its_segments_is_refused_before_it_is_built():
    """2^20 one-frame segments would need an 80 MB safetensors header: refused from the count."""
    h = ct.Header(width=16, height=16, frames=1 << 20, fps_num=25, fps_den=1, model_bits=6,
                  bits=6, temporal_factor=4, spatial_factor=4, entropy=0, segment_frames=1,
                  model_sha256=bytes(16), pix_fmt="rgb24", model_name="x")
    with pytest.raises(InputError, match="1048576 tensors"):
        tk.FileLayout(h, [6] * h.segment_count)
