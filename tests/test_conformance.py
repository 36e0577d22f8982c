"""The conformance suite (tests/conformance, bitstream_spec.md appendix A): every vector is
listed in expected.json and in the spec, is rebuilt byte for byte by tools/make_conformance.py,
and gets its expected outcome from the reference reader, which also reads every vector's ADAPT
records strictly (spec §8c); the mode-1 segments and the ADAPT records of the vectors decode
identically with the dependency-free decoders (tests/ref_mode1.py)."""
import hashlib
import importlib.util
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from neuralcodec import adapt, codec, payload, streaminfo
from neuralcodec import container as ct
from neuralcodec import errors

sys.path.insert(0, os.path.dirname(__file__))
import ref_mode1  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SUITE = Path(__file__).parent / "conformance"
TABLE = json.loads((SUITE / "expected.json").read_text())["vectors"]


def _generator():
    spec = importlib.util.spec_from_file_location("make_conformance", ROOT / "tools" / "make_conformance.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_suite_is_complete_and_listed_in_the_spec():
    files = sorted(str(p.relative_to(SUITE)) for p in SUITE.rglob("*.mgv"))
    assert files == sorted(r["file"] for r in TABLE)
    assert {r["outcome"] for r in TABLE if r["file"].startswith("invalid/")} <= {
        c.__name__ for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, errors.StreamError)}
    assert all(r["outcome"] == "ok" for r in TABLE if r["file"].startswith("valid/"))
    spec = (ROOT / "bitstream_spec.md").read_text()
    appendix = spec[spec.index("## Appendix A"):]
    for r in TABLE:
        assert f"`{r['file']}`" in appendix and r["outcome"] in appendix, r["file"]


def test_committed_vectors_are_what_the_generator_builds():
    built = _generator().vectors()
    assert sorted(built) == sorted(r["file"] for r in TABLE)
    for name, (data, outcome, _) in built.items():
        assert (SUITE / name).read_bytes() == data, name


def adapt_records(data: bytes):
    """The header and the records before the first SEGMENT of a stream, read by the strict
    reader (framing, CRCs, order) → the first StreamError."""
    rd = ct.Reader(io.BytesIO(data))
    recs = []
    for rec in rd.records():
        if rec.type in (ct.REC_SEGMENT, ct.REC_END):
            break
        recs.append(rec)
    return rd.header, recs


def strict_read(data: bytes):
    """The strict reading of appendix A: the ADAPT records of spec §8c (read when SEGMENT 0 is
    met: each payload checked against the header, then their ranges; no model), then every
    record and segment (``streaminfo.verify_stream``) → (Verified, adaptations)."""
    h, recs = adapt_records(data)
    ads = adapt.read_adaptations([r for r in recs if r.type == ct.REC_ADAPT], h)
    return streaminfo.verify_stream(io.BytesIO(data)), ads


def ints_digest(ads) -> str:
    """Appendix A's digest: every tensor's integers, int32 little-endian, in record order."""
    d = hashlib.sha256()
    for ad in ads:
        for t in ad.tensors:
            d.update(np.asarray(t.values, "<i4").tobytes())
    return d.hexdigest()


@pytest.mark.parametrize("row", TABLE, ids=[r["file"] for r in TABLE])
def test_vector_outcome(row):
    data = (SUITE / row["file"]).read_bytes()
    if row["outcome"] == "ok":
        r, ads = strict_read(data)
        assert (r.frames, r.bits_sha256) == (row["frames"], row["bits_sha256"])
        has_adapt = any(rec.type == ct.REC_ADAPT for rec in ct.Reader(io.BytesIO(data)).records())
        assert has_adapt == ("adaptations" in row)
        if has_adapt:
            assert (len(ads), ints_digest(ads)) == (row["adaptations"], row["ints_sha256"])
            assert r.adapt_sha256 == row["ints_sha256"]  # the reference reader agrees
        else:
            assert ads == [] and r.adapt_sha256 is None
        # the seeking path agrees: the index (when present) names the same segments
        rd = ct.Reader(io.BytesIO(data))
        idx = rd.index()
        if idx is not None:
            assert [rd.segment_at(e.offset, i) for i, e in enumerate(idx)] == list(
                ct.Reader(io.BytesIO(data)).segments())
    else:
        with pytest.raises(getattr(errors, row["outcome"])) as ei:
            strict_read(data)
        assert type(ei.value).__name__ == row["outcome"]  # exactly this class, not a subclass
        # the reference reader alone (it checks the ADAPT records when it meets SEGMENT 0) agrees
        with pytest.raises(getattr(errors, row["outcome"])) as ei:
            streaminfo.verify_stream(io.BytesIO(data))
        assert type(ei.value).__name__ == row["outcome"]


@pytest.mark.parametrize("row", [r for r in TABLE if r["outcome"] == "ok"], ids=lambda r: r["file"])
def test_valid_vectors_mode1_with_reference_decoder(row):
    data = (SUITE / row["file"]).read_bytes()
    rd = ct.Reader(io.BytesIO(data))
    h = rd.header
    digest = hashlib.sha256()
    for seg in rd.segments():
        shape = (seg.stored_bits(h), seg.latent_t, seg.latent_h, seg.latent_w)
        bits = payload.decode_payload(seg, seg.stored_bits(h))
        if seg.entropy == ct.ENTROPY_CONTEXT:
            np.testing.assert_array_equal(np.array(ref_mode1.decode(seg.data, *shape), np.uint8), bits)
        digest.update(bits.tobytes())
    assert digest.hexdigest() == row["bits_sha256"]


ADAPT_ROWS = [r for r in TABLE if "adapt" in r["file"]]


@pytest.mark.parametrize("row", ADAPT_ROWS, ids=[r["file"] for r in ADAPT_ROWS])
def test_adapt_vectors_with_reference_decoder(row):
    """§8c read by the dependency-free decoder (its checks and integers, from the spec text)
    gives every ADAPT vector its expected outcome and integers; the strict reader only frames
    the records and checks their order (an error there is the outcome)."""
    data = (SUITE / row["file"]).read_bytes()
    try:
        rd = ct.Reader(io.BytesIO(data))
        recs = list(rd.records())
        first = next(i for i, r in enumerate(recs) if r.type == ct.REC_SEGMENT)
        parsed = ref_mode1.read_adapt([r.payload for r in recs[:first] if r.type == ct.REC_ADAPT],
                                      rd.header.segment_count, rd.header.model_sha256)
        outcome = "ok"
    except errors.StreamError as e:
        outcome = type(e).__name__
    except ref_mode1.RefError as e:
        outcome = e.error
    assert outcome == row["outcome"]
    if outcome == "ok":
        d = hashlib.sha256()
        for _, _, tensors in parsed:
            for *_, ints in tensors:
                d.update(np.array(ints, "<i4").tobytes())
        assert (len(parsed), d.hexdigest()) == (row["adaptations"], row["ints_sha256"])


def test_adapt_integers_agree_with_reference_coder():
    """Random updates (several tensors; vmax 0, 1, 2, small, 15-17, 255; counts 1..5000):
    ``neuralcodec.adapt.encode_ints`` writes exactly the dependency-free encoder's bytes, and
    both decoders give the integers back (decode_ints, ref_mode1.decode_adapt_ints)."""
    rng = np.random.default_rng(2026)
    n = 0
    for _ in range(12):
        tensors = []
        for _ in range(int(rng.integers(1, 6))):
            vmax = int(rng.choice([0, 1, 2, 3, 7, 15, 16, 17, 40, 255]))
            count = int(rng.choice([1, 2, 15, 16, 17, 33]) if rng.random() < 0.4 else rng.integers(1, 5001))
            mag = np.minimum(rng.geometric(rng.uniform(0.05, 0.9), count) - 1, vmax)
            mag[rng.random(count) < 0.02] = vmax  # the extremes
            tensors.append(((mag * rng.choice([-1, 1], count)).astype(np.int32), vmax))
        data = adapt.encode_ints(tensors)
        assert data == ref_mode1.encode_adapt_ints([(v.tolist(), vm) for v, vm in tensors])
        shape = [(v.size, vm) for v, vm in tensors]
        for got, (v, _) in zip(adapt.decode_ints(data, shape), tensors):
            np.testing.assert_array_equal(got, v)
        assert ref_mode1.decode_adapt_ints(data, shape) == [v.tolist() for v, _ in tensors]
        n += sum(v.size for v, _ in tensors)
    assert n > 10000
    # a flipped bit, or words cut off, never decodes silently to other integers in both
    for bad in (data[:-4] or b"\0\0\0\0", data[:3] + bytes([data[3] ^ 0x40]) + data[4:]):
        try:
            lib = adapt.decode_ints(bad, shape)
        except errors.PayloadError:
            lib = "PayloadError"
        try:
            ref = ref_mode1.decode_adapt_ints(bad, shape)
        except ref_mode1.RefError as e:
            ref = e.error
        assert lib == ref if isinstance(lib, str) else [x.tolist() for x in lib] == ref


def test_reference_decoder_on_real_codec_streams(make_tiny):
    """Every mode-1 segment of real streams (tiny model: several segments, a per-segment bit
    count from rate control, the fuzzer's seeds) decodes identically without constriction."""
    from tools import fuzz_mgv

    m = make_tiny(0.05)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:24, 0:40]
    v = np.stack([np.stack([(x * 7 + i * 5) % 256, (y * 9 + i * 3) % 256, (x + y) * 4 % 256], -1)
                  for i in range(17)]).astype(np.int16) + rng.integers(-6, 7, (17, 24, 40, 3))
    v = np.clip(v, 0, 255).astype(np.uint8)
    streams = [codec.compress(m, v, segment_frames=9, entropy="context"),
               codec.compress(m, v, segment_frames=5, entropy="context", bits=4),
               codec.compress(m, v, segment_frames=5, entropy="context", bitrate=20000)]
    streams += fuzz_mgv.seed_streams(fuzz_mgv.tiny_model())
    n = 0
    for data in streams:
        rd = ct.Reader(io.BytesIO(data))
        for seg in rd.segments():
            if seg.entropy != ct.ENTROPY_CONTEXT:
                continue
            sb = seg.stored_bits(rd.header)
            ref = np.array(ref_mode1.decode(seg.data, sb, seg.latent_t, seg.latent_h, seg.latent_w), np.uint8)
            np.testing.assert_array_equal(ref, payload.decode_payload(seg, sb))
            n += 1
    assert n >= 8


def test_golden_vector_2_is_checkable_from_the_spec_text():
    """§7 golden vector 2: the formula, the 412 bytes printed in the spec and their SHA-256
    agree with the coder, the dependency-free decoder and the conformance vector."""
    import re

    from neuralcodec.entropy import encode_bits

    spec = (ROOT / "bitstream_spec.md").read_text()
    part = spec[spec.index("2. K×T×H×W = 18×4×6×10"):spec.index("## 8. INDEX")]
    printed = bytes.fromhex("".join(re.search(r"```\n(.*?)```", part, re.S).group(1).split()))
    sha = re.search(r"SHA-256 `([0-9a-f]{64})`", part).group(1)
    k, t, y, x = np.meshgrid(*(np.arange(n) for n in (18, 4, 6, 10)), indexing="ij")
    bits = (((k * k + 3 * y + 5 * x + 7 * ((k * y) % 4)) % 11 < 5)  # the formula, as printed
            ^ ((t >= 1) & ((x + 2 * y + t) % 3 == 0) & ((k + t) % 5 < 2))).astype(np.uint8)
    assert np.array_equal(bits, _generator().golden_vector_2())
    assert len(printed) == 412 and hashlib.sha256(printed).hexdigest() == sha
    assert encode_bits(bits) == printed
    np.testing.assert_array_equal(np.array(ref_mode1.decode(printed, 18, 4, 6, 10), np.uint8), bits)
    r = ct.Reader(io.BytesIO((SUITE / "valid" / "mode1_golden2.mgv").read_bytes()))
    assert [s.data for s in r.segments()] == [printed]


def test_unknown_audio_kinds_are_skipped_whatever_follows_their_kind_byte():
    """§8a: kinds other than 0 and 1 are skipped unread; an empty payload, or a bad track byte
    in kind 0 or 1, is still a RecordError."""
    assert ct.parse_audio(bytes([9, 200, 1, 2])) is None and ct.parse_audio(bytes([255])) is None
    for bad in (b"", bytes([0, 16]) + b"\x03aac", bytes([1, 200, 0, 0, 0, 0])):
        with pytest.raises(errors.RecordError):
            ct.parse_audio(bad)
