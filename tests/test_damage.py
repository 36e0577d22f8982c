"""Damaged streams lose only what was damaged: flipped bytes in the first, a middle and the
last segment, in a record length, in the INDEX, and cut files. Every intact segment decodes
exactly as in the undamaged stream, lost frames are concealed (last good frame, mid-grey before
the first), the frame count stays exact, each damaged range is reported once, the library's
default is strict, and the CLI exits 2 unless --recover is given."""
import io
import json
import struct
from fractions import Fraction

import numpy as np
import pytest

from neuralcodec import cli, codec
from neuralcodec import container as ct
from neuralcodec import video_io as vio
from neuralcodec.errors import CRCMismatch, StreamError, Truncated

SEG = 5
T = 18  # segments of 5, 5, 5, 3 frames


@pytest.fixture(scope="module")
def tiny(make_tiny):
    return make_tiny(0.05)


def clip(t=T, h=16, w=24):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([np.stack([(x * 9 + i * 13) % 256, (y * 11 + i * 7) % 256, (x * y + i) % 256], -1)
                     for i in range(t)]).astype(np.uint8)


@pytest.fixture(scope="module")
def stream(tiny):
    data = codec.compress(tiny, clip(), segment_frames=SEG, entropy="none", fps=Fraction(25))
    ref = codec.decompress(data, model=tiny)[1]
    r = ct.Reader(io.BytesIO(data))
    return data, ref, r.index()


def decode(tiny, data, **kw):
    reports = []
    meta, it = codec.decompress_from_file(io.BytesIO(data), model=tiny, on_damage=reports.append, **kw)
    return np.stack(list(it)), reports


def flip(data: bytes, off: int) -> bytes:
    b = bytearray(data)
    b[off] ^= 0x5A
    return bytes(b)


def payload_byte(index, i):
    return index[i].offset + ct.RECORD_HEAD.size + ct.SEGMENT_HEAD.size + 3


@pytest.mark.parametrize("seg", [0, 1, 3])
def test_flipped_segment_is_concealed_others_exact(tiny, stream, seg):
    data, ref, index = stream
    bad = flip(data, payload_byte(index, seg))
    with pytest.raises(CRCMismatch):  # the library default is strict
        codec.decompress(bad, model=tiny)
    out, reports = decode(tiny, bad)
    assert out.shape == ref.shape
    first, n = seg * SEG, min(SEG, T - seg * SEG)
    lost = np.zeros(T, bool)
    lost[first:first + n] = True
    np.testing.assert_array_equal(out[~lost], ref[~lost])
    fill = np.full_like(ref[0], 128) if seg == 0 else ref[first - 1]
    for f in out[lost]:
        np.testing.assert_array_equal(f, fill)
    assert [(d.first_frame, d.end_frame, tuple(d.segments)) for d in reports] == [(first, first + n, (seg,))]
    assert "CRC" in reports[0].reason and str(reports[0]).startswith(f"frames {first}-{first + n - 1} concealed")


def test_damaged_length_field_resynchronizes(tiny, stream):
    data, ref, index = stream
    b = bytearray(data)
    struct.pack_into("<I", b, index[1].offset + 8, 0x0FFFFFFF)  # length far past the end
    out, reports = decode(tiny, bytes(b))
    assert [(d.first_frame, d.end_frame) for d in reports] == [(5, 10)]
    np.testing.assert_array_equal(out[:5], ref[:5])
    np.testing.assert_array_equal(out[10:], ref[10:])
    # two damaged neighbours form one range
    b2 = bytearray(flip(flip(data, payload_byte(index, 1)), payload_byte(index, 2)))
    out, reports = decode(tiny, bytes(b2))
    assert [(d.first_frame, d.end_frame, tuple(d.segments)) for d in reports] == [(5, 15, (1, 2))]
    np.testing.assert_array_equal(out[5:15], np.broadcast_to(ref[4], (10,) + ref.shape[1:]))


def test_damaged_index_loses_no_frames(tiny, stream):
    data, ref, index = stream
    idx_off = struct.unpack("<Q", data[-12:-4])[0]
    bad = flip(data, idx_off + ct.RECORD_HEAD.size + 6)
    out, reports = decode(tiny, bad)
    np.testing.assert_array_equal(out, ref)
    assert len(reports) == 1 and reports[0].frames == 0 and "no frames lost" in str(reports[0])
    # random access falls back to a scan and still decodes exactly
    out, _ = decode(tiny, bad, frames=(7, 12))
    np.testing.assert_array_equal(out, ref[7:12])
    with pytest.raises(StreamError):
        codec.decompress(bad, model=tiny)


@pytest.mark.parametrize("cut", ["in_last", "in_second", "before_end"])
def test_cut_files_keep_frame_count(tiny, stream, cut):
    data, ref, index = stream
    end = {"in_last": index[3].offset + 30, "in_second": index[1].offset + 7,
           "before_end": len(data) - ct.END_RECORD_SIZE}[cut]
    bad = data[:end]
    with pytest.raises(Truncated):
        codec.decompress(bad, model=tiny)
    out, reports = decode(tiny, bad)
    assert out.shape == ref.shape
    good = {"in_last": 15, "in_second": 5, "before_end": 18}[cut]
    np.testing.assert_array_equal(out[:good], ref[:good])
    for f in out[good:]:
        np.testing.assert_array_equal(f, ref[good - 1])
    if good < T:
        assert [(d.first_frame, d.end_frame) for d in reports] == [(good, T)]
    else:  # only INDEX/END lost
        assert len(reports) == 1 and reports[0].frames == 0


def test_frame_range_with_damage(tiny, stream):
    data, ref, index = stream
    bad = flip(data, payload_byte(index, 2))
    out, reports = decode(tiny, bad, frames=(8, 13))
    np.testing.assert_array_equal(out[:2], ref[8:10])
    np.testing.assert_array_equal(out[2:], np.broadcast_to(ref[9], (3,) + ref.shape[1:]))
    assert [(d.first_frame, d.end_frame) for d in reports] == [(10, 13)]




def test_cli_reports_and_exit_codes(runner, stream, tmp_path):
    data, ref, index = stream
    bad = flip(flip(data, payload_byte(index, 0)), payload_byte(index, 2))
    src = tmp_path / "bad.mgv"
    src.write_bytes(bad)
    out = tmp_path / "o.mkv"
    r = runner.invoke(cli.main, ["decode", str(src), "-o", str(out), "-q"])
    assert r.exit_code == 2, r.output
    err = r.stderr.strip().splitlines()
    assert [e.split(" (")[0] for e in err[:2]] == ["mgv: damaged: frames 0-4 concealed",
                                                   "mgv: damaged: frames 10-14 concealed"]
    assert err[2].startswith("mgv: error: damaged stream: 10 of 18 frames concealed") and len(err) == 3
    assert sum(1 for _ in vio.read_frames(out)) == T  # the output is written either way
    r = runner.invoke(cli.main, ["decode", str(src), "-o", str(out), "-q", "-y", "--recover"])
    assert r.exit_code == 0, r.output
    assert len(r.stderr.strip().splitlines()) == 2 and "10 frames concealed" in r.stdout
    r = runner.invoke(cli.main, ["info", str(src), "--json"])
    assert r.exit_code == 2
    d = json.loads(r.stdout)
    assert [s["damaged"] for s in d["segments"]] == [True, False, True, False]
    assert [(x["first_frame"], x["end_frame"]) for x in d["damaged"]] == [(0, 5), (10, 15)]
    r = runner.invoke(cli.main, ["info", str(src)])
    assert r.exit_code == 2 and r.stdout.count("DAMAGED") == 2
    # the intact stream: no damage, exit 0
    good = tmp_path / "good.mgv"
    good.write_bytes(data)
    r = runner.invoke(cli.main, ["info", str(good), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["damaged"] == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_unreadable_header_is_still_an_error(runner, stream, tmp_path):
    data, _, _ = stream
    src = tmp_path / "h.mgv"
    src.write_bytes(flip(data, 20))
    r = runner.invoke(cli.main, ["decode", str(src), "-o", str(tmp_path / "o.mkv"), "-q", "--recover"])
    assert r.exit_code == 2 and r.stderr.strip() == "mgv: error: header CRC mismatch"
    assert not (tmp_path / "o.mkv").exists()


def _with_crc(data: bytearray, rec_off: int) -> None:
    """Recompute the CRC of the record at ``rec_off`` (a forged record that checks)."""
    import zlib
    (length,) = struct.unpack_from("<I", data, rec_off + 8)
    end = rec_off + ct.RECORD_HEAD.size + length
    struct.pack_into("<I", data, end, zlib.crc32(bytes(data[rec_off:end])))


def test_index_into_a_hidden_segment_is_refused_and_reported(tiny, stream):
    """Issue 16 #3: an INDEX naming a SEGMENT record hidden inside a non-critical record (valid
    CRCs everywhere) made --frames decode other pictures than a full decode, exit 0."""
    data, ref, index = stream
    # a copy of segment 0 renumbered as segment 1, hidden in an unknown non-critical record
    r0 = ct.Reader(io.BytesIO(data))
    seg0 = r0.segment_at(index[0].offset, 0)
    fake_seg = ct.Segment(1, SEG, SEG, seg0.latent_t, seg0.latent_h, seg0.latent_w, seg0.entropy,
                          seg0.data)
    buf = io.BytesIO()
    w = ct.Writer(buf, r0.header)
    inner = io.BytesIO()
    wi = ct.Writer.__new__(ct.Writer)
    wi.fo, wi.pos = inner, 0
    wi.write_record(ct.REC_SEGMENT, fake_seg.to_payload(), critical=True)
    for i, e in enumerate(index):
        seg = r0.segment_at(e.offset, i)
        w.write_segment(seg)
        if i == 0:
            hidden = w.write_record(9, inner.getvalue(), critical=False)
    w.entries[1] = ct.IndexEntry(hidden + ct.RECORD_HEAD.size, SEG, SEG)
    w.close()
    forged = buf.getvalue()
    out, reports = decode(tiny, forged)  # full decode: every segment, the INDEX reported
    np.testing.assert_array_equal(out, ref)
    assert len(reports) == 1 and reports[0].frames == 0
    with pytest.raises(StreamError):  # strict: the index is refused, not trusted
        codec.decompress(forged, model=tiny, frames=(5, 10))
    out, reports = decode(tiny, forged, frames=(5, 10))  # recovery: reported, same pictures
    np.testing.assert_array_equal(out, ref[5:10])
    assert reports and "INDEX" in reports[0].reason


def test_inconsistent_index_and_end_are_reported(tiny, stream):
    """Issue 16 #3: an INDEX / END with valid CRCs but wrong contents was silently ignored."""
    data, ref, index = stream
    idx_off = struct.unpack("<Q", data[-12:-4])[0]
    bad = bytearray(data)
    struct.pack_into("<Q", bad, idx_off + ct.RECORD_HEAD.size + 4 + 16, index[1].offset + 1)
    _with_crc(bad, idx_off)
    out, reports = decode(tiny, bytes(bad))
    np.testing.assert_array_equal(out, ref)
    assert len(reports) == 1 and reports[0].frames == 0
    out, reports = decode(tiny, bytes(bad), frames=(7, 12))
    np.testing.assert_array_equal(out, ref[7:12])
    assert len(reports) == 1 and reports[0].frames == 0
    bad = bytearray(data)
    struct.pack_into("<Q", bad, len(bad) - 12, index[0].offset)  # END names a SEGMENT
    _with_crc(bad, len(bad) - 24)
    out, reports = decode(tiny, bytes(bad))
    np.testing.assert_array_equal(out, ref)
    assert len(reports) == 1 and "END" in reports[0].reason
    with pytest.raises(StreamError):
        codec.decompress(bytes(bad), model=tiny)
    with pytest.raises(StreamError):
        codec.decompress(data + b"\0", model=tiny)


def test_runs_of_three_damaged_segments_reported_alike(tiny, stream):
    """One merger of damaged runs (neuralcodec.recovery.DamageRuns): segments 0-2 damaged
    give one report naming all three, the same from the decoder and from stream_info."""
    from neuralcodec.streaminfo import stream_info

    data, ref, index = stream
    bad = data
    for seg in (0, 1, 2):
        bad = flip(bad, payload_byte(index, seg))
    out, reports = decode(tiny, bad)
    np.testing.assert_array_equal(out[15:], ref[15:])
    assert [(d.first_frame, d.end_frame, tuple(d.segments)) for d in reports] == [(0, 15, (0, 1, 2))]
    info = stream_info(io.BytesIO(bad))
    assert info.damaged == tuple(reports)
    row = info.segments[0]
    assert (row.damaged, row.index, row.last_index, row.frames) == (True, 0, 2, 15)
    assert str(reports[0]).startswith("frames 0-14 concealed (segments 0-2 damaged")
