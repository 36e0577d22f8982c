"""The ADAPT record of bitstream_spec.md §8c (version 1.3) against the spec text: the worked
example of §11 (its hex dump, its field table and its symbol table, decoded from the spec), the
order of checks, the model rules and the dequantization (W' = float32(W + v·2^e)), and the
version rules (minor 3 only for streams with an ADAPT record)."""
import hashlib
import io
import os
import re
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from neuralcodec import adapt
from neuralcodec import container as ct
from neuralcodec.errors import PayloadError, RecordError

sys.path.insert(0, os.path.dirname(__file__))
import ref_mode1  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEC = (ROOT / "bitstream_spec.md").read_text()
SHA0 = hashlib.sha256(b"").digest()[:16]


def spec_dump(label: str) -> bytes:
    block = re.search(r"```" + re.escape(label) + r"\n(.*?)```", SPEC, re.S).group(1)
    return bytes.fromhex("".join(line.split(":", 1)[1] for line in block.strip().splitlines()))


def section(start: str, end: str) -> str:
    return SPEC[SPEC.index(start):SPEC.index(end, SPEC.index(start))]


def test_spec_example_is_the_conformance_vector_and_extends_the_1_1_example():
    data = spec_dump("mgv-example-1.3")
    base = spec_dump("mgv-example")
    assert len(data) == 231 == len(base) + 56
    assert data == (ROOT / "tests" / "conformance" / "valid" / "adapt.mgv").read_bytes()
    # §11's file with minor 3 and its own header CRC, the ADAPT record, the rest 56 bytes later
    assert data[:0x4a] == base[:0x0a] + b"\x03" + base[0x0b:0x4a]
    assert data[0x4a:0x4e] == bytes.fromhex("3fddefdb")
    assert data[0x86:0xab] == base[0x4e:0x73]  # the SEGMENT record, byte for byte


def test_spec_example_decodes_to_the_table():
    data = spec_dump("mgv-example-1.3")
    r = ct.Reader(io.BytesIO(data))
    assert r.version == (1, 3) and r.header.model_sha256 == SHA0
    recs = list(r.records())
    assert [(x.type, x.flags, x.offset) for x in recs] == [
        (ct.REC_ADAPT, 0, 0x4e), (ct.REC_SEGMENT, 1, 0x86), (ct.REC_INDEX, 0, 0xab), (ct.REC_END, 1, 0xcf)]
    p = recs[0].payload
    assert len(p) == 40 and p[:4] == bytes([0, 0, 1, 0]) and p[4:20] == SHA0
    assert struct.unpack_from("<IIHbBI", p, 20) == (0, 1, 3, -4, 2, 5)
    assert p[36:] == bytes.fromhex("a074586a")
    assert data[0x82:0x86] == bytes.fromhex("c873ac95") == struct.pack("<I", zlib.crc32(data[0x4e:0x82]))
    assert r.index()[0].offset == 0x86 and ct.parse_end(recs[-1]) == 0xab
    (ad,) = adapt.read_adaptations(recs[:1], r.header)
    assert (ad.first_segment, ad.segments, len(ad.tensors)) == (0, 1, 1)
    t = ad.tensors[0]
    assert (t.index, t.exp, t.vmax) == (3, -4, 2) and t.values.tolist() == [0, 1, -2, 0, 1]
    assert t.delta().tolist() == [0, 0.0625, -0.125, 0, 0.0625]
    # the dependency-free reader, from §8c's text
    assert ref_mode1.parse_adapt(p, 1, SHA0) == (0, 1, [(3, -4, 2, [0, 1, -2, 0, 1])])


def test_spec_example_symbol_table():
    """The symbols §11 lists are those the decoder reads, all at p16 32768, and the word's 27
    most significant bits."""
    text = section("**Version 1.3 variant**", "## Appendix A")
    rows = re.findall(r"^\| (pass Z|signs|pass l = 1|check bits) +\|[^|]*\| `([01 ]+)`", text, re.M)
    assert [name for name, _ in rows] == ["pass Z", "signs", "pass l = 1", "check bits"]
    listed = [int(c) for _, syms in rows for c in syms.split()]
    trace = []
    assert ref_mode1.decode_adapt_ints(bytes.fromhex("a074586a"), [(5, 2)], trace) == [[0, 1, -2, 0, 1]]
    assert [s for s, _ in trace] == listed and len(listed) == 27
    assert {p for _, p in trace} == {32768}
    assert listed[-16:] == [(0xA5C3 >> i) & 1 for i in range(16)]
    word = struct.unpack("<I", bytes.fromhex("a074586a"))[0]
    assert [(word >> (31 - i)) & 1 for i in range(27)] == listed
    bits = re.search(r"`([01 ]{30,})`, are these symbols", text).group(1).replace(" ", "")
    assert [int(c) for c in bits] == listed


def test_payload_table_offsets_match_the_implementation():
    text = section("## 8c. ADAPT records", "**Caps.**")
    offsets = re.findall(r"^\| ([0-9+ 8jn]+) \| (u8|u16|u32|i8|16 B|D) \| (\w+) \|", text, re.M)
    assert [o for o, _, _ in offsets] == ["0", "1", "2", "4", "20", "24", "28 + 8j", "30 + 8j",
                                          "31 + 8j", "32 + 8j", "28 + 8n",  # method 0
                                          "28", "44 + 8n"]  # method 2: decoder_sha256, data
    assert adapt.ADAPT_HEAD.size == 28 and adapt.ADAPT_ENTRY.size == 8
    assert adapt.ADAPT_HEAD.size + adapt.VARIANT_SHA.size == 44
    assert (adapt.METHOD_ADDITIVE, adapt.METHOD_VARIANT) == (0, 2)
    assert (adapt.MAX_TENSORS, adapt.MAX_NUMBERS, adapt.MAX_SYMBOL_WORK) == (1024, 1 << 20, 1 << 23)
    assert (adapt.MIN_EXP, adapt.MAX_EXP, adapt.MAX_VMAX, adapt.CONTEXTS) == (-64, 0, 255, 16)
    assert ct.REC_ADAPT == 4 and ct.MINOR_ADAPT == 3
    assert ct.MINOR_ADAPT_VARIANT == 4 == ct.MINOR_KNOWN


def test_spec_1_4_example_is_the_conformance_vector_and_decodes_to_its_table():
    """§11's 1.4 variant: the 1.3 example's record as method 2, 16 bytes longer."""
    data = spec_dump("mgv-example-1.4")
    old = spec_dump("mgv-example-1.3")
    assert len(data) == 247 == len(old) + 16
    assert data == (ROOT / "tests" / "conformance" / "valid" / "adapt_variant.mgv").read_bytes()
    assert data[:0x4a] == old[:0x0a] + b"\x04" + old[0x0b:0x4a]
    assert data[0x4a:0x4e] == bytes.fromhex("561186c0")
    assert data[0x96:0xbb] == old[0x86:0xab]  # the SEGMENT record, byte for byte
    r = ct.Reader(io.BytesIO(data))
    assert r.version == (1, 4)
    recs = list(r.records())
    assert [(x.type, x.offset) for x in recs] == [
        (ct.REC_ADAPT, 0x4e), (ct.REC_SEGMENT, 0x96), (ct.REC_INDEX, 0xbb), (ct.REC_END, 0xdf)]
    p = recs[0].payload
    variant = hashlib.sha256(b"example decoder").digest()[:16]
    assert len(p) == 56 and p[:4] == bytes([2, 0, 1, 0]) and p[4:20] == SHA0 and p[28:44] == variant
    assert struct.unpack_from("<IIHbBI", p, 20)[:2] == (0, 1)
    assert struct.unpack_from("<HbBI", p, 44) == (3, -4, 2, 5) and p[52:] == bytes.fromhex("a074586a")
    assert data[0x92:0x96] == bytes.fromhex("63b8ab10") == struct.pack("<I", zlib.crc32(data[0x4e:0x92]))
    (ad,) = adapt.read_adaptations(recs[:1], r.header)
    assert ad.decoder_sha256 == variant and ad.tensors[0].values.tolist() == [0, 1, -2, 0, 1]
    assert ad.to_payload() == p
    assert ref_mode1.parse_adapt(p, 1, SHA0) == (0, 1, [(3, -4, 2, [0, 1, -2, 0, 1])])
    # a 1.3 reader skips it (rule 2): decoding it needs the variant's file, which no reader has
    assert adapt.Adaptation.parse(bytes([1]) + p[1:], r.header) is None


def _header(segments: int = 1) -> ct.Header:
    return ct.Header(width=8, height=8, frames=segments, fps_num=25, fps_den=1, model_bits=2, bits=2,
                     temporal_factor=1, spatial_factor=8, entropy=0, segment_frames=1,
                     model_sha256=SHA0, pix_fmt="rgb24", model_name="example")


def _payload(entries, n=None, sha=SHA0, first=0, segments=1, reserved=0, data=None) -> bytes:
    head = adapt.ADAPT_HEAD.pack(0, reserved, len(entries) if n is None else n, sha, first, segments)
    body = b"".join(adapt.ADAPT_ENTRY.pack(*e) for e in entries)
    if data is None:
        data = adapt.encode_ints([(np.zeros(c, np.int32), vm) for _, _, vm, c in entries])
    return head + body + data


def _flipped_check_bits() -> bytes:
    data = bytearray(adapt.encode_ints([(np.array([0, 1, -2, 0, 1]), 2)]))
    data[1] ^= 1  # within the check bits
    return bytes(data)


# (payload, the rule of §8c's list that must be reported, its error class, words of the
# library's message, words of the dependency-free reader's): each case breaks that rule and a
# later one, so the reported rule shows the order
ORDER_CASES = [
    (b"\x00" * 27, 3, RecordError, "too short", "head"),  # short head (and n = 0, the sha)
    (_payload([(3, 0, 1, 4)], reserved=1, n=0), 4, RecordError, "reserved", "reserved"),
    (_payload([(3, 0, 1, 4)], n=0, sha=b"\1" * 16), 5, RecordError, "tensors, outside", "tensor count"),
    (_payload([(3, 0, 1, 4)], n=2, sha=b"\1" * 16), 6, RecordError, "cannot hold", "entries"),
    (_payload([(3, 0, 1, 4)], sha=b"\1" * 16, segments=2), 7, RecordError, "adapts model", "model_sha256"),
    (_payload([(3, 1, 1, 4)], segments=2), 8, RecordError, "covers segments", "segment range"),
    # entry 0's count before entry 1's index; an index before its exponent; entries before caps
    (_payload([(3, 0, 1, 0), (2, 0, 1, 4)]), 9, RecordError, "count 0", "count 0"),
    (_payload([(3, 0, 1, 4), (2, 1, 1, 4)]), 9, RecordError, "increasing", "increasing"),
    (_payload([(3, -65, 1, 1 << 21)]), 9, RecordError, "exponent", "exponent"),
    (_payload([(3, 0, 0, (1 << 20) + 1), (4, 0, 255, 1 << 15)], data=b"\0"), 10, RecordError,
     "numbers, over", "numbers over"),  # Σ count first, and both caps before the data
    (_payload([(3, 0, 255, 1 << 15), (4, 0, 0, 1)], data=b"\0"), 10, RecordError, "count·(vmax",
     "symbols over"),
    (_payload([(3, 0, 1, 4)], data=b"\0" * 5), 11, PayloadError, "multiple of 4", "multiple of 4"),
    (_payload([(3, 0, 1, 4)], data=b"\xff" * 8), 12, PayloadError, "does not decode", "invalid data"),
    (_payload([(3, -4, 2, 5)], data=_flipped_check_bits()), 12, PayloadError, "end check", "end check"),
]


@pytest.mark.parametrize("payload,rule,error,lib_words,ref_words", ORDER_CASES,
                         ids=[f"rule{c[1]}-{i}" for i, c in enumerate(ORDER_CASES)])
def test_order_of_checks(payload, rule, error, lib_words, ref_words):
    """§8c "Checks, in order": the library and the dependency-free reader report the same
    first rule (their messages differ: each is told by its words)."""
    with pytest.raises(error) as ei:
        adapt.Adaptation.parse(payload, _header())
    assert lib_words in str(ei.value)
    with pytest.raises(ref_mode1.RefError) as ri:
        ref_mode1.parse_adapt(payload, 1, SHA0)
    assert ri.value.error == error.__name__ and ref_words in str(ri.value)


def test_empty_unknown_method_and_overlap():
    h = _header(3)
    with pytest.raises(RecordError):
        adapt.Adaptation.parse(b"", h)
    for p in (b"\x01", b"\xff garbage of a later method"):  # skipped unread
        assert adapt.Adaptation.parse(p, h) is None and ref_mode1.parse_adapt(p, 3, SHA0) is None
    ok = _payload([(3, -4, 2, 5)], first=0, segments=2)
    rec = [ct.Record(ct.REC_ADAPT, 0, 0, x) for x in
           (ok, b"\x01", _payload([(0, 0, 1, 1)], first=2, segments=1))]
    assert [a.first_segment for a in adapt.read_adaptations(rec, h)] == [0, 2]
    over = rec + [ct.Record(ct.REC_ADAPT, 0, 0, _payload([(0, 0, 1, 1)], first=1, segments=1))]
    with pytest.raises(RecordError, match="overlap"):
        adapt.read_adaptations(over, h)
    with pytest.raises(ref_mode1.RefError):
        ref_mode1.read_adapt([r.payload for r in over], 3, SHA0)


@pytest.fixture(scope="module")
def model():
    from neuralcodec.configs import CONFIGS
    from neuralcodec.model import Tokenizer

    torch.manual_seed(0)
    return Tokenizer(CONFIGS["tiny"]).eval()


def test_model_rules(model):
    """§8c "The model": indices count the sorted tensor names; only floating `decoder.` tensors,
    with count = their element count."""
    sd = model.state_dict()
    names = sorted(sd)
    assert adapt.tensor_names(model) == names == sorted(names, key=lambda n: n.encode())
    dec = [i for i, n in enumerate(names) if n.startswith("decoder.")]
    enc = [i for i, n in enumerate(names) if not n.startswith("decoder.")]
    assert dec and enc

    def ad(index, count):
        return adapt.Adaptation(SHA0, 0, 1, (adapt.TensorUpdate(index, -8, 1, np.ones(count, np.int32)),))

    i = dec[3]
    adapt.check_against(ad(i, sd[names[i]].numel()), model)
    for bad in (ad(i, sd[names[i]].numel() + 1), ad(enc[0], sd[names[enc[0]]].numel()),
                ad(len(names), 1)):
        with pytest.raises(RecordError):
            adapt.check_against(bad, model)


def test_dequantization_is_float32_addition_of_the_file_values(model):
    """W' = W ⊕ v·2^e in binary32 (round to nearest even), row-major, from the weights file's W
    (here the model's own float32 values), whatever dtype the decoder then runs in."""
    names = adapt.tensor_names(model)
    i = next(j for j, n in enumerate(names) if n.startswith("decoder.") and model.state_dict()[n].dim() > 1)
    w = model.state_dict()[names[i]].detach().clone()
    rng = np.random.default_rng(0)
    v = rng.integers(-255, 256, w.numel()).astype(np.int32)
    for e in (-64, -24, -4, 0):
        a = adapt.Adaptation(SHA0, 0, 1, (adapt.TensorUpdate(i, e, 255, v),))
        got = adapt.adapted_model(model, a).state_dict()[names[i]]
        want = (w.numpy().reshape(-1) + (v.astype(np.float32) * np.float32(2.0 ** e))).astype(np.float32)
        assert got.dtype == torch.float32
        np.testing.assert_array_equal(got.numpy().reshape(-1), want)
        assert np.array_equal(got.numpy(), want.reshape(w.shape))  # row-major
    # the base is the file's W even when the model runs in bfloat16
    base = adapt.file_weights(model)
    m16 = type(model)(model.cfg).eval()
    m16.load_state_dict(model.state_dict())
    m16 = m16.to(torch.bfloat16)
    got = adapt.adapted_model(m16, a, base).state_dict()[names[i]]
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, torch.from_numpy(want.reshape(w.shape)).to(torch.bfloat16))


def test_writer_minor_versions():
    """§10: minor 3 only with an ADAPT record (written before SEGMENT 0); 1 or 2 otherwise."""
    h = _header()
    seg = ct.Segment(0, 0, 1, 1, 1, 1, ct.ENTROPY_NONE, b"\x01")
    out = {}
    for name, kw in (("plain", {}), ("bits", {"segment_bits": True}), ("adapt", {"adapt": True})):
        fo = io.BytesIO()
        w = ct.Writer(fo, h, **kw)
        if name == "adapt":
            w.write_adapt(_payload([(3, -4, 2, 5)]))
        w.write_segment(seg)
        with pytest.raises(RecordError):
            w.write_adapt(_payload([(3, -4, 2, 5)]))  # never after a SEGMENT
        w.close()
        out[name] = ct.Reader(io.BytesIO(fo.getvalue())).version
    assert out == {"plain": (1, 1), "bits": (1, 2), "adapt": (1, 3)}
    with pytest.raises(RecordError):
        ct.Writer(io.BytesIO(), h).write_adapt(_payload([(3, -4, 2, 5)]))
