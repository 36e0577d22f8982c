"""The .mgv container: golden bytes, the spec's worked example, writer → reader round trips on
random token streams, and the strict reader's typed errors."""
import hashlib
import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from neuralcodec import container as ct
from neuralcodec.errors import (BadMagic, CRCMismatch, HeaderError, RecordError, StreamError,
                                Truncated, UnsupportedVersion)

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"


def example_header(**kw) -> ct.Header:
    d = dict(width=8, height=8, frames=1, fps_num=25, fps_den=1, model_bits=2, bits=2,
             temporal_factor=4, spatial_factor=8, entropy=0, segment_frames=1,
             model_sha256=hashlib.sha256(b"").digest()[:16], pix_fmt="rgb24", model_name="example")
    d.update(kw)
    return ct.Header(**d)


def example_stream() -> bytes:
    buf = io.BytesIO()
    w = ct.Writer(buf, example_header())
    w.write_segment(ct.Segment(0, 0, 1, 1, 1, 1, ct.ENTROPY_NONE, b"\x01"))
    w.close()
    return buf.getvalue()


def spec_example() -> bytes:
    text = (ROOT / "bitstream_spec.md").read_text()
    block = re.search(r"```mgv-example\n(.*?)```", text, re.S).group(1)
    return bytes.fromhex("".join(line.split(":", 1)[1] for line in block.strip().splitlines()))


# ---- golden bytes ----------------------------------------------------------------------------
def test_golden_bytes_match_committed_file_and_spec():
    data = example_stream()
    assert data == (DATA / "example.mgv").read_bytes()
    assert data == spec_example()
    assert len(data) == 175
    # layout pinned field by field
    assert data[:8] == b"\x89MGV\r\n\x1a\n"
    assert struct.unpack_from("<HHI", data, 8) == (1, ct.MINOR, 58) and ct.MINOR == 1
    assert struct.unpack_from("<HHIII", data, 16) == (8, 8, 1, 25, 1)
    assert struct.unpack_from("<I", data, 74)[0] == zlib.crc32(data[:74])
    assert data[78:82] == b"MGVR" and data[-24:-20] == b"MGVR" and data[-20] == ct.REC_END


def test_spec_example_decodes():
    r = ct.Reader(io.BytesIO(spec_example()))
    h = r.header
    assert (h.width, h.height, h.frames, h.fps, h.model_name, h.pix_fmt) == (8, 8, 1, 25, "example", "rgb24")
    assert (h.model_bits, h.bits, h.temporal_factor, h.spatial_factor) == (2, 2, 4, 8)
    segs = list(r.segments())
    assert len(segs) == 1 and segs[0].data == b"\x01" and segs[0].entropy == ct.ENTROPY_NONE
    idx = r.index()
    assert idx == [ct.IndexEntry(0x4E, 0, 1)]
    # the data byte is token index 1: bit 0 set, bit 1 clear
    from neuralcodec.kernels import unpack_bits
    import torch
    codes = unpack_bits(torch.tensor([1], dtype=torch.uint8), (1, 2, 1, 1, 1))
    assert codes.flatten().tolist() == [1.0, -1.0]


# ---- round trips -----------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_round_trip_random_token_streams(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 33))
    b = int(rng.integers(1, k + 1))
    tf = int(rng.choice([1, 2, 4, 8]))
    s = int(rng.choice([1, 4, 8, 16]))
    seg = 1 + tf * int(rng.integers(0, 5))
    frames = int(rng.integers(1, 60))
    hdr = ct.Header(width=int(rng.integers(1, 200)), height=int(rng.integers(1, 200)),
                    frames=frames, fps_num=30000, fps_den=1001, model_bits=k, bits=b,
                    temporal_factor=tf, spatial_factor=s, entropy=1, segment_frames=seg,
                    model_sha256=rng.bytes(16), pix_fmt="yuv420p10le", model_name="m-1.x_y")
    buf = io.BytesIO()
    w = ct.Writer(buf, hdr)
    written = []
    for i in range(hdr.segment_count):
        first, n = hdr.segment_bounds(i)
        t = hdr.latent_frames(n)
        lh, lw = hdr.latent_hw
        raw = hdr.raw_bytes(t)
        mode = int(rng.integers(0, 2))
        data = rng.bytes(raw if mode == 0 else int(rng.integers(1, raw + 1)))
        seg_ = ct.Segment(i, first, n, t, lh, lw, mode, data)
        w.write_segment(seg_)
        if rng.random() < 0.3:  # an unknown, non-critical record (e.g. a future AUDIO packet)
            w.write_record(ct.REC_AUDIO, rng.bytes(int(rng.integers(0, 50))), critical=False)
        written.append(seg_)
    w.close()
    data = buf.getvalue()
    r = ct.Reader(io.BytesIO(data))
    assert r.header == hdr
    assert list(r.segments()) == written
    idx = r.index()
    assert [r.segment_at(e.offset, i) for i, e in enumerate(idx)] == written
    # a non-seekable stream reads the same
    class Pipe(io.RawIOBase):
        def __init__(self, b):
            self.b = io.BytesIO(b)

        def readable(self):
            return True

        def seekable(self):
            return False

        def readinto(self, m):
            d = self.b.read(min(len(m), 7))  # short reads too
            m[:len(d)] = d
            return len(d)

    rp = ct.Reader(io.BufferedReader(Pipe(data)))
    assert list(rp.segments()) == written and rp.index() is None


def test_header_describe_and_dict():
    h = example_header()
    names = [r[0] for r in h.describe()]
    assert names == [f.name for f in ct.FIELDS]
    d = h.to_dict()
    assert d["fps"] == "25/1" and d["model_sha256"] == hashlib.sha256(b"").hexdigest()[:32]


def test_rewrite_header_patches_frame_count():
    buf = io.BytesIO()
    w = ct.Writer(buf, example_header(frames=5, segment_frames=5))
    w.write_segment(ct.Segment(0, 0, 3, 2, 1, 1, 0, b"\x00"))
    w.rewrite_header(ct.replace_header(w.header, frames=3))
    w.close()
    r = ct.Reader(io.BytesIO(buf.getvalue()))
    assert r.header.frames == 3 and len(list(r.segments())) == 1


# ---- strict reader -------------------------------------------------------------------------
def _fix_header_crc(data: bytearray) -> bytearray:
    hlen = struct.unpack_from("<I", data, 12)[0]
    struct.pack_into("<I", data, 16 + hlen, zlib.crc32(bytes(data[:16 + hlen])))
    return data


def _read_all(data: bytes):
    r = ct.Reader(io.BytesIO(data))
    r.index()
    return list(r.segments())


@pytest.mark.parametrize("mutate, err", [
    (lambda d: b"", Truncated),
    (lambda d: d[:5], Truncated),
    (lambda d: b"GIF89a" + d[6:], BadMagic),
    (lambda d: d[:8] + b"\x02\x00" + d[10:], UnsupportedVersion),
    (lambda d: d[:12] + struct.pack("<I", 1 << 30) + d[16:], HeaderError),
    (lambda d: d[:20], Truncated),
    (lambda d: d[:17] + b"\x01" + d[18:], CRCMismatch),
])
def test_prelude_and_header_errors(mutate, err):
    with pytest.raises(err):
        _read_all(mutate(example_stream()))


@pytest.mark.parametrize("field, value", [
    ("width", 65535), ("height", 0), ("frames", 10**9), ("fps_den", 0), ("bits", 3),
    ("bit_order", 1), ("sign_convention", 1), ("segment_frames", 2), ("entropy", 7),
])
def test_out_of_range_header_refused_before_allocation(field, value):
    data = bytearray(example_stream())
    off = {"width": 16, "height": 18, "frames": 20, "fps_den": 28, "bits": 33, "bit_order": 34,
           "sign_convention": 35, "segment_frames": 40, "entropy": 38}[field]
    fmt = {"width": "<H", "height": "<H", "frames": "<I", "fps_den": "<I", "segment_frames": "<I"}.get(field, "<B")
    struct.pack_into(fmt, data, off, value)
    with pytest.raises(HeaderError):
        ct.Reader(io.BytesIO(bytes(_fix_header_crc(data))))


def test_hostile_huge_header_refused():
    with pytest.raises(HeaderError):
        example_header(width=65535, height=65535, frames=10**9).to_bytes()
    # 8192×8192 is within the side caps but not the pixel cap
    with pytest.raises(HeaderError):
        example_header(width=8192, height=8192).check()


def test_record_errors():
    data = example_stream()
    bad_crc = bytearray(data)
    bad_crc[0x6E] ^= 0xFF
    with pytest.raises(CRCMismatch):
        _read_all(bytes(bad_crc))
    bad_sync = bytearray(data)
    bad_sync[0x4E] = ord("X")
    with pytest.raises(RecordError):
        list(ct.Reader(io.BytesIO(bytes(bad_sync))).segments())
    # a record announcing 2 GiB is refused before reading it
    huge = bytearray(data)
    struct.pack_into("<I", huge, 0x4E + 8, 1 << 31)
    with pytest.raises(RecordError):
        list(ct.Reader(io.BytesIO(bytes(huge))).segments())
    # truncations anywhere after the header are Truncated (or RecordError via the END check)
    for cut in range(0x4E, len(data)):
        with pytest.raises(StreamError):
            _read_all(data[:cut])


def _rebuild(segments, hdr=None, extra=None):
    buf = io.BytesIO()
    hdr = hdr or example_header()
    buf.write(hdr.to_bytes())
    w = ct.Writer.__new__(ct.Writer)
    w.fo, w.header, w.base, w.pos, w.entries, w.closed = buf, hdr, 0, buf.tell(), [], False
    for s in segments:
        w.write_record(ct.REC_SEGMENT, s.to_payload(), critical=True)
    if extra:
        w.write_record(*extra)
    w.write_record(ct.REC_END, ct.END_PAYLOAD.pack(0), critical=True)
    return buf.getvalue()


def test_segment_consistency_checks():
    good = ct.Segment(0, 0, 1, 1, 1, 1, 0, b"\x01")
    assert list(ct.Reader(io.BytesIO(_rebuild([good]))).segments()) == [good]
    for bad in (ct.Segment(1, 0, 1, 1, 1, 1, 0, b"\x01"), ct.Segment(0, 0, 2, 1, 1, 1, 0, b"\x01"),
                ct.Segment(0, 0, 1, 1, 2, 1, 0, b"\x01"), ct.Segment(0, 0, 1, 1, 1, 1, 0, b"\x01\x00"),
                ct.Segment(0, 0, 1, 1, 1, 1, 1, b"")):
        with pytest.raises(RecordError):
            list(ct.Reader(io.BytesIO(_rebuild([bad]))).segments())
    with pytest.raises(Truncated):  # END before the segment the header announces
        list(ct.Reader(io.BytesIO(_rebuild([]))).segments())


def test_unknown_records_skipped_or_refused():
    good = ct.Segment(0, 0, 1, 1, 1, 1, 0, b"\x01")
    data = _rebuild([good], extra=(99, b"future", False))
    assert list(ct.Reader(io.BytesIO(data)).segments()) == [good]
    data = _rebuild([good], extra=(99, b"future", True))
    with pytest.raises(UnsupportedVersion):
        list(ct.Reader(io.BytesIO(data)).segments())


def test_newer_minor_with_extra_header_fields_is_read():
    h = example_header()
    body = h.pack_fields() + b"\x07\x07"  # a field appended by a later minor version
    later = ct.MINOR_KNOWN + 1
    head = ct.PRELUDE.pack(ct.MAGIC, 1, later, len(body)) + body
    data = head + struct.pack("<I", zlib.crc32(head)) + example_stream()[78:]
    r = ct.Reader(io.BytesIO(data))
    assert r.version == (1, later) and r.header == h
    # the same extra bytes in a 1.0 stream are an error
    head0 = ct.PRELUDE.pack(ct.MAGIC, 1, 0, len(body)) + body
    with pytest.raises(HeaderError):
        ct.Reader(io.BytesIO(head0 + struct.pack("<I", zlib.crc32(head0))))


def test_index_inconsistency_detected():
    data = bytearray(example_stream())
    struct.pack_into("<Q", data, 0x7F + 4, 0x10)  # segment offset inside the header
    struct.pack_into("<I", data, 0x93, zlib.crc32(bytes(data[0x73:0x93])))
    with pytest.raises(RecordError):
        ct.Reader(io.BytesIO(bytes(data))).index()
