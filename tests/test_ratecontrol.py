"""Rate control (``encode --bitrate`` / ``--bpp``) and the version 1.2 format change it needs:
segments carry their own bit count (spec §5, §10). Conformance: the spec's 1.2 dump decodes
and equals the writer's bytes, 1.1 streams are still written byte for byte as before, a
segment's bit count above the header's or a payload of the wrong length is refused. Codec:
the target is met within 10 % on a test clip (or the miss is reported), the accounting equals
the file size, and rate-controlled streams decode and tokenize like any other."""
import io
import json
import re
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from neuralcodec import cli, codec, payload, streaminfo
from neuralcodec import container as ct
from neuralcodec import tokens as tk
from neuralcodec.errors import InputError, RecordError

from test_cli import leftovers, make_video, one_error_line  # noqa: E402
from test_codec import clip  # noqa: E402
from test_container import example_header  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RATE = Fraction(25)


@pytest.fixture(scope="module")
def tiny(make_tiny):
    return make_tiny(0.05)


# ---- format: version 1.2 ------------------------------------------------------------------------
def spec_dump(tag: str) -> bytes:
    text = (ROOT / "bitstream_spec.md").read_text()
    block = re.search(r"```" + re.escape(tag) + r"\n(.*?)```", text, re.S).group(1)
    return bytes.fromhex("".join(line.split(":", 1)[1] for line in block.strip().splitlines()))


def stream_12(seg_bits=1, data=b"\x01", header_bits=2) -> bytes:
    buf = io.BytesIO()
    w = ct.Writer(buf, example_header(bits=header_bits), segment_bits=True)
    w.write_segment(ct.Segment(0, 0, 1, 1, 1, 1, ct.ENTROPY_NONE, data, seg_bits))
    w.close()
    return buf.getvalue()


def test_spec_12_example_is_the_writers_and_decodes():
    data = spec_dump("mgv-example-1.2")
    assert data == stream_12()
    assert struct.unpack_from("<HH", data, 8) == (1, ct.MINOR_SEGMENT_BITS) == (1, 2)
    old = spec_dump("mgv-example")  # the 1.1 example: only minor, bits byte and CRCs differ
    assert [i for i in range(len(data)) if data[i] != old[i]] == [10, 74, 75, 76, 77, 109, 111, 112, 113, 114]
    r = ct.Reader(io.BytesIO(data))
    assert r.version == (1, 2)
    (seg,) = list(r.segments())
    assert seg.bits == 1 and seg.stored_bits(r.header) == 1 and r.header.bits == 2
    bits = payload.decode_payload(seg, seg.stored_bits(r.header))
    assert bits.shape == (1, 1, 1, 1) and bits.ravel().tolist() == [1]
    assert streaminfo.stream_info(io.BytesIO(data)).segments[0].bits == 1


def test_writers_keep_11_unless_segments_carry_bits():
    buf = io.BytesIO()
    w = ct.Writer(buf, example_header())
    with pytest.raises(RecordError):  # a 1.1 writer cannot store a segment's own bit count
        w.write_segment(ct.Segment(0, 0, 1, 1, 1, 1, ct.ENTROPY_NONE, b"\x01", 1))
    w.write_segment(ct.Segment(0, 0, 1, 1, 1, 1, ct.ENTROPY_NONE, b"\x01"))
    w.close()
    assert buf.getvalue() == spec_dump("mgv-example")  # minor 1, byte for byte as before
    # a segment whose bits byte is 0 in a 1.2 stream stores the header's bits
    data = stream_12(seg_bits=0, data=b"\x01")
    (seg,) = list(ct.Reader(io.BytesIO(data)).segments())
    assert seg.stored_bits(ct.Reader(io.BytesIO(data)).header) == 2


def patch_segment(data: bytes, bits_byte: int, payload: bytes = b"\x01") -> bytes:
    """The 1.2 example with its SEGMENT's bits byte and data replaced (CRCs fixed)."""
    body = bytearray(data[0x5A:0x6E]) + payload
    body[19] = bits_byte
    rec = bytearray(ct.RECORD_HEAD.pack(ct.RECORD_SYNC, ct.REC_SEGMENT, 1, 0, len(body))) + body
    rec += struct.pack("<I", zlib.crc32(bytes(rec)))
    return data[:0x4E] + bytes(rec) + data[0x73:]


def test_bad_segment_bits_refused():
    data = stream_12()
    assert list(ct.Reader(io.BytesIO(patch_segment(data, 1))).segments())  # the patcher is exact
    with pytest.raises(RecordError, match="more than the header"):
        list(ct.Reader(io.BytesIO(patch_segment(data, 3))).segments())
    # 2 bits of 1 token still fit 1 byte; 2 bits of a header with more tokens do not
    h = example_header(width=32, height=8, bits=2)  # 4 tokens: 1 bit → 1 byte, 2 bits → 1 byte
    buf = io.BytesIO()
    w = ct.Writer(buf, h, segment_bits=True)
    with pytest.raises(RecordError, match="raw payload"):
        w.write_segment(ct.Segment(0, 0, 1, 1, 1, 4, ct.ENTROPY_NONE, b"\x01\x02", 1))
    h = example_header(width=64, height=8, bits=2)  # 8 tokens: 1 bit → 1 byte, 2 bits → 2 bytes
    buf = io.BytesIO()
    w = ct.Writer(buf, h, segment_bits=True)
    w.write_segment(ct.Segment(0, 0, 1, 1, 1, 8, ct.ENTROPY_NONE, b"\xff", 1))
    w.close()
    (seg,) = list(ct.Reader(io.BytesIO(buf.getvalue())).segments())
    assert payload.decode_payload(seg, 1).sum() == 8


# ---- codec --------------------------------------------------------------------------------------
def uniform_kbps(model, v, bits):
    d = codec.compress(model, v, bits=bits, segment_frames=5, fps=RATE)
    return 8 * len(d) / 1000 / (len(v) / float(RATE))


def test_bitrate_within_10_percent_and_accounting_exact(tiny):
    v = clip(t=41, h=40, w=48)
    lo, hi = uniform_kbps(tiny, v, 1), uniform_kbps(tiny, v, tiny.cfg.bits)
    assert hi > 1.5 * lo  # the bits per token span a real range of rates
    for target in (lo * 1.25, (lo + hi) / 2, hi * 0.95):
        buf = io.BytesIO()
        res = codec.compress_to_file(tiny, v, buf, segment_frames=5, fps=RATE, bitrate=target * 1000)
        data = buf.getvalue()
        assert res.video_bytes == len(data) == res.bytes_written  # no audio: everything counted
        got = 8 * len(data) / 1000 / (41 / 25)
        assert abs(got - target) <= 0.10 * target, (got, target, res.segment_bits)
        assert res.rate_note is None
        r = ct.Reader(io.BytesIO(data))
        assert r.version == (1, 2)
        assert tuple(s.bits for s in r.segments()) == res.segment_bits
        assert len(set(res.segment_bits)) > 1 or target > hi * 0.9
        # decodes like a stream whose segments were coded at those bits
        _, frames = codec.decompress(data, model=tiny)
        tok = tk.tokens_from_stream(io.BytesIO(data))
        assert tok.bits == res.segment_bits
        assert all(t.max() < 1 << b for t, b in zip(tok.segments, tok.bits))
        assert np.array_equal(tk.detokenize(tiny, tok), frames)
    # bpp is the same target in other units
    bpp = (lo + hi) / 2 * 1000 / (48 * 40 * 25)
    a = codec.compress(tiny, v, segment_frames=5, fps=RATE, bpp=bpp)
    b = codec.compress(tiny, v, segment_frames=5, fps=RATE, bitrate=(lo + hi) / 2 * 1000)
    assert a == b


def test_bitrate_targets_out_of_reach_are_reported(tiny):
    v = clip(t=21, h=40, w=48)
    res = codec.compress_to_file(tiny, v, io.BytesIO(), segment_frames=5, fps=RATE, bitrate=100)
    assert set(res.segment_bits) == {1} and "cannot be reached" in res.rate_note
    res = codec.compress_to_file(tiny, v, io.BytesIO(), segment_frames=5, fps=RATE, bitrate=10e6)
    assert set(res.segment_bits) == {tiny.cfg.bits} and "above" in res.rate_note
    res = codec.compress_to_file(tiny, v, io.BytesIO(), segment_frames=5, fps=RATE, bits=3, bitrate=10e6)
    assert set(res.segment_bits) == {3}  # --bits is the ceiling
    for bad in (dict(bitrate=0), dict(bitrate=-5), dict(bpp=float("nan")), dict(bitrate=1e3, bpp=0.1)):
        with pytest.raises(InputError):
            codec.compress(tiny, v, fps=RATE, **bad)
    assert payload.parse_rate("50k") == 50000 and payload.parse_rate("1.5M") == 1.5e6
    assert payload.parse_rate("64000") == 64000
    for bad in ("", "k", "fast", "-3k", "0"):
        with pytest.raises(InputError):
            payload.parse_rate(bad)


def test_cli_bitrate(runner, tmp_path):
    src = make_video(tmp_path / "in.mkv", t=41)
    r = runner.invoke(cli.main, ["encode", str(src), "-o", str(tmp_path / "full.mgv"), "-q",
                                 "--segment-frames", "5"])
    assert r.exit_code == 0, r.output
    full = json.loads(runner.invoke(cli.main, ["info", str(tmp_path / "full.mgv"), "--json"]).stdout)["kbps"]
    target = 0.8 * full
    r = runner.invoke(cli.main, ["encode", str(src), "-o", str(tmp_path / "a.mgv"), "-q",
                                 "--segment-frames", "5", "--bitrate", f"{target:.3f}k"])
    assert r.exit_code == 0, r.output
    assert "rate control" in r.stdout and r.stderr == ""
    d = json.loads(runner.invoke(cli.main, ["info", str(tmp_path / "a.mgv"), "--json"]).stdout)
    assert abs(d["kbps"] - target) <= 0.1 * target and d["version"] == "1.2"
    assert len({s["bits"] for s in d["segments"]}) > 1
    r = runner.invoke(cli.main, ["decode", str(tmp_path / "a.mgv"), "-o", str(tmp_path / "a.mkv"), "-q"])
    assert r.exit_code == 0, r.output
    # out of reach: written, with one warning line
    r = runner.invoke(cli.main, ["encode", str(src), "-o", str(tmp_path / "b.mgv"), "-q",
                                 "--bitrate", "50"])
    assert r.exit_code == 0, r.output
    assert r.stderr.startswith("mgv: warning: target 0.05 kbps cannot be reached")
    assert len(r.stderr.strip().splitlines()) == 1
    r = runner.invoke(cli.main, ["encode", str(src), "-o", str(tmp_path / "c.mgv"), "--bitrate", "fast"])
    assert "bitrate" in one_error_line(r, 3)
    r = runner.invoke(cli.main, ["encode", str(src), "-o", str(tmp_path / "c.mgv"), "--bitrate", "5k",
                                 "--bpp", "0.1"])
    one_error_line(r, 3)
    assert not (tmp_path / "c.mgv").exists() and leftovers(tmp_path) == []
