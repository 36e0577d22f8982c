"""The conformance suite (tests/conformance, bitstream_spec.md appendix A): every vector is
listed in expected.json and in the spec, is rebuilt byte for byte by tools/make_conformance.py,
and gets its expected outcome from the reference reader; the mode-1 segments of the valid
vectors decode identically with the dependency-free decoder (tests/ref_mode1.py)."""
import hashlib
import importlib.util
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from neuralcodec import codec, payload, streaminfo
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
        c.__name__ for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.StreamError)}
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


@pytest.mark.parametrize("row", TABLE, ids=[r["file"] for r in TABLE])
def test_vector_outcome(row):
    data = (SUITE / row["file"]).read_bytes()
    if row["outcome"] == "ok":
        r = streaminfo.verify_stream(io.BytesIO(data))
        assert (r.frames, r.bits_sha256) == (row["frames"], row["bits_sha256"])
        # the seeking path agrees: the index (when present) names the same segments
        rd = ct.Reader(io.BytesIO(data))
        idx = rd.index()
        if idx is not None:
            assert [rd.segment_at(e.offset, i) for i, e in enumerate(idx)] == list(
                ct.Reader(io.BytesIO(data)).segments())
    else:
        with pytest.raises(getattr(errors, row["outcome"])) as ei:
            streaminfo.verify_stream(io.BytesIO(data))
        assert type(ei.value).__name__ == row["outcome"]  # exactly this class, not a subclass


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
