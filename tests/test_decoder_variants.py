"""Decoder variants (neuralcodec.weights.decoder_variant, `mgv decode --decoder`): another decoder
network for a registered model's tokens — saved, registered, checked against its model, chosen
per segment (the model's own decoder where an ADAPT record covers a segment), deterministic."""
from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
import torch

from neuralcodec import adapt, codec, finetune, weights
from neuralcodec import container as ct
from neuralcodec import tokens as tk
from neuralcodec.configs import TINY
from neuralcodec.errors import ModelError
from neuralcodec.model import Tokenizer
from neuralcodec.weights import WeightsError

# the tiny model's decoder made lighter: what a fast variant changes
LIGHT = dataclasses.replace(TINY, dec_channels=(4, 8, 8), dec_blocks=(0, 1, 1))


@pytest.fixture(scope="module")
def video():
    rng = np.random.default_rng(1)
    x = (rng.random((20, 12, 16, 3)) * 255).astype(np.uint8)
    return np.repeat(np.repeat(x, 4, 1), 4, 2)


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    """(models folder with model "m" and its variant "fast" registered as default, the model,
    the variant as a model)."""
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    m = Tokenizer(TINY)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    sha = weights.save_weights(m, d / "m.safetensors", "m")
    weights.register("m", "m.safetensors", sha, d)
    base = weights.load_model("m", d)
    light = Tokenizer(LIGHT)
    light.encoder.load_state_dict(base.encoder.state_dict())
    light.quantizer.load_state_dict(base.quantizer.state_dict())
    with torch.no_grad():
        for p in light.decoder.parameters():
            p.add_(0.3 * torch.randn_like(p))
    vsha = weights.save_decoder(light, d / "m-fast.safetensors", base, "fast")
    weights.register_decoder("m", "fast", "m-fast.safetensors", vsha, d, default=True)
    return d, base, weights.decoder_variant(base, "fast", d)


def test_registry_lists_and_chooses_the_variant(reg):
    d, base, fast = reg
    e = weights.registry(d)["m"]
    assert [v.name for v in e.decoders] == ["fast"] and e.default_decoder == "fast"
    assert weights.decoder_variant(base, "full", d) is None
    auto = weights.decoder_variant(base, "auto", d)
    assert auto.variant == "fast" and auto.cfg == LIGHT
    # the identity a stream names stays the model's; the encoder is shared, not copied
    assert (auto.name, auto.sha256) == (base.name, base.sha256) and auto.encoder is base.encoder
    with pytest.raises(WeightsError, match="no decoder 'tiny'.*auto, full, fast"):
        weights.decoder_variant(base, "tiny", d)
    # a model the registry does not know with these weights has no variants; auto is its own
    other = Tokenizer(TINY, name="m", sha256="11" * 32)
    assert weights.decoder_variant(other, "auto", d) is None


def test_variant_file_is_checked_against_its_model(reg, tmp_path):
    d, base, fast = reg
    stranger = Tokenizer(TINY, name="m", sha256="22" * 32)
    with pytest.raises(WeightsError, match="not a decoder variant of m"):
        weights.load_decoder_file(d / "m-fast.safetensors", stranger)
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        weights.load_decoder_file(d / "m-fast.safetensors", base, "00" * 32)
    # a variant must keep the model's encoder (config and weights)
    other_code = Tokenizer(dataclasses.replace(LIGHT, bits=4))
    with pytest.raises(WeightsError, match="beyond the decoder layers"):
        weights.save_decoder(other_code, tmp_path / "x.safetensors", base, "x")
    retrained = Tokenizer(LIGHT)
    with pytest.raises(WeightsError, match="keeps the model's encoder"):
        weights.save_decoder(retrained, tmp_path / "x.safetensors", base, "x")
    with pytest.raises(ValueError):
        base.with_decoder(Tokenizer(dataclasses.replace(TINY, bits=4)).decoder, "x")
    # a truncated file is one error, not a traceback
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((d / "m-fast.safetensors").read_bytes()[:100])
    with pytest.raises(WeightsError, match="cannot read decoder weights"):
        weights.load_decoder_file(bad, base)
    # a registry whose default names no variant is refused when read
    r2 = tmp_path / "r"
    r2.mkdir()
    data = json.loads((d / "registry.json").read_text())
    data["m"]["default_decoder"] = "nope"
    (r2 / "registry.json").write_text(json.dumps(data))
    with pytest.raises(WeightsError, match="names no decoder variant"):
        weights.registry(r2)


def test_decode_runs_the_chosen_decoder(reg, video):
    d, base, fast = reg
    data = codec.compress(base, video, segment_frames=9)
    loader = lambda name: weights.load_model(name, d)  # noqa: E731
    _, full = codec.decompress(data, model=loader, decoder="full", precision="float32")
    _, light = codec.decompress(data, model=loader, decoder=fast, precision="float32")
    _, plain = codec.decompress(data, model=base, precision="float32")
    assert np.array_equal(full, plain)
    assert not np.array_equal(light, full)
    # the variant's frames are its own decoder's on the same tokens
    tok = tk.tokens_from_stream(io.BytesIO(data))
    _, again = tk.detokenize_frames(base, tok, decoder=fast)
    assert np.array_equal(np.stack(list(again)), light)
    with pytest.raises(ModelError, match="no decoder 'nope'"):
        codec.decompress(data, model=base, decoder="nope")


def test_adapted_segments_use_the_adapted_full_decoder(reg, video, monkeypatch):
    d, base, fast = reg
    monkeypatch.setattr(finetune.Fitting, "own_slope", lambda self, segs: float("-inf"))
    buf = io.BytesIO()
    codec.compress_to_file(base, video, buf, segment_frames=9, adapt=20)
    data = buf.getvalue()
    header = ct.Reader(io.BytesIO(data)).header
    recs = adapt.leading_records(ct.Reader(io.BytesIO(data)))
    assert recs, "the test needs an adapted stream"
    ad = adapt.read_adaptations(recs, header, base)[0]
    assert header.segment_count == 3
    # the record narrowed to segment 1, so that segments 0 and 2 are not covered
    ad = dataclasses.replace(ad, first_segment=1, segments=1)
    recs = [ct.Record(ct.REC_ADAPT, 0, 0, ad.to_payload())]
    m, decs = adapt.stream_decoders(header, base, recs, decoder="auto")  # no registered variant
    assert decs(0) is base and decs(2) is base and decs(1) is not base
    # auto with a registered variant: the adapted full decoder where the record covers, the
    # variant elsewhere; an explicit variant decodes everything, the record unused
    monkeypatch.setattr(adapt, "decoder_variant",
                        lambda model, choice="auto", models_dir=None: None if choice == "full" else fast)
    m, decs = adapt.stream_decoders(header, base, recs, decoder="auto")
    assert decs(0) is fast and decs(2) is fast
    assert decs(1) is not fast and decs(1) is not base
    assert decs(1).decoder.cfg == TINY  # the model's own decoder, adapted
    for choice in ("fast", fast):
        m, decs = adapt.stream_decoders(header, base, recs, decoder=choice)
        assert all(decs(i) is fast for i in range(3))
    m, decs = adapt.stream_decoders(header, base, recs, decoder="full")
    assert decs(0) is base and decs(1) is not base


def test_variant_frames_identical_across_thread_counts(reg, video):
    d, base, fast = reg
    data = codec.compress(base, video, segment_frames=9)
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append(codec.decompress(data, model=base, decoder=fast)[1])
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(outs[0], outs[1])


def test_cli_decoder_option(runner, tmp_path):
    from neuralcodec import cli
    from test_cli import make_video, one_error_line
    src = make_video(tmp_path / "in.mkv")
    mgv = tmp_path / "a.mgv"
    assert runner.invoke(cli.main, ["encode", str(src), "-o", str(mgv), "-q"]).exit_code == 0
    for choice in ("auto", "full"):
        r = runner.invoke(cli.main, ["decode", str(mgv), "-o", str(tmp_path / f"{choice}.mkv"),
                                     "--decoder", choice, "-q"])
        assert r.exit_code == 0, r.output
    out = tmp_path / "x.mkv"
    line = one_error_line(runner.invoke(cli.main, ["decode", str(mgv), "-o", str(out),
                                                   "--decoder", "nope"]), ModelError.exit_code)
    assert "no decoder 'nope'" in line and not out.exists()
    tok = tmp_path / "t.safetensors"
    assert runner.invoke(cli.main, ["tokens", str(mgv), "-o", str(tok), "-q"]).exit_code == 0
    line = one_error_line(runner.invoke(cli.main, ["detokenize", str(tok), "-o", str(out),
                                                   "--decoder", "nope"]), ModelError.exit_code)
    assert "no decoder 'nope'" in line and not out.exists()


def test_bench_decoders_compares_variants_on_the_same_streams(reg, tmp_path, monkeypatch):
    from benchmarks import bench_decoders as B
    from test_cli import make_video
    d, base, fast = reg
    src = make_video(tmp_path / "c.mkv", t=9, w=32, h=24)
    monkeypatch.setattr(B, "load_model", lambda name=None: _load(d))
    monkeypatch.setattr(weights, "load_model", lambda name=None, models_dir=None: _load(d))
    monkeypatch.setattr(adapt, "decoder_variant", lambda model, choice="auto", models_dir=None:
                        None if choice == "full" else weights.load_decoder_file(d / "m-fast.safetensors", model))
    out = tmp_path / "r"
    assert B.main(["--inputs", str(src), "--bits", "2", "4", "--threads", "1", "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    pts = res["clips"]["c.mkv"]["points"]
    assert [p["bits"] for p in pts] == [2, 4] and all(set(p["decoders"]) == {"full", "fast"} for p in pts)
    s = res["clips"]["c.mkv"]["summary"]["fast"]
    worst = min(p["decoders"]["fast"]["psnr_rgb"] - p["decoders"]["full"]["psnr_rgb"] for p in pts)
    assert s["worst_db"] == pytest.approx(worst) and s["within"] == (worst >= -weights.DEFAULT_DECODER_DB)
    assert "`fast` against `full`" in out.with_suffix(".md").read_text()
    # a re-run measures nothing again
    monkeypatch.setattr(codec, "compress_to_file", lambda *a, **k: pytest.fail("encoded again"))
    assert B.main(["--inputs", str(src), "--bits", "2", "4", "--threads", "1", "--out", str(out)]) == 0


_REAL_LOAD = weights.load_model


def _load(d):
    return _REAL_LOAD("m", d)


def test_a_shipped_default_decoder_was_measured_within_the_bar():
    """A model's default_decoder (what `mgv decode` runs) must be the very file the decoder
    benchmark measured within DEFAULT_DECODER_DB of the model's own decoder at every rate point
    of every eval clip (benchmarks/results/decoders_eval.json)."""
    from pathlib import Path
    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "decoders_eval.json"
    for name, e in weights.registry().items():
        if e.default_decoder is None:
            continue
        res = json.loads(results.read_text())
        sha = next(d.sha256 for d in e.decoders if d.name == e.default_decoder)
        assert res["model"] == name and res["variant_sha256"][e.default_decoder] == sha
        assert res["clips"] and all(c["summary"][e.default_decoder]["within"] for c in res["clips"].values())
        assert all(e.default_decoder in p["decoders"] for c in res["clips"].values() for p in c["points"])


def test_adapting_the_default_variant_writes_a_method_2_record(reg, video, monkeypatch):
    """--adapt fits the decoder `mgv decode` runs by default: with a registered default variant
    that is the variant, sent as an ADAPT record of method 2 (a 1.4 stream) that names its file;
    auto and --decoder fast decode with it adapted, --decoder full ignores it, tokens carry it."""
    d, base, fast = reg
    monkeypatch.setattr(finetune.Fitting, "own_slope", lambda self, segs: float("-inf"))

    def pick(model, choice="auto", models_dir=None):
        return weights.decoder_variant(model, choice, d)

    monkeypatch.setattr(finetune, "decoder_variant", pick)
    monkeypatch.setattr(adapt, "decoder_variant", pick)
    plain = codec.compress(base, video, segment_frames=9)
    buf = io.BytesIO()
    codec.compress_to_file(base, video, buf, segment_frames=9, adapt=20)
    data = buf.getvalue()
    r = ct.Reader(io.BytesIO(data))
    assert r.version == (1, ct.MINOR_ADAPT_VARIANT)
    recs = adapt.leading_records(ct.Reader(io.BytesIO(data)))
    assert len(recs) == 1 and recs[0].payload[0] == adapt.METHOD_VARIANT
    (ad,) = adapt.read_adaptations(recs, r.header)
    assert ad.decoder_sha256 == bytes.fromhex(fast.decoder_sha256)[:16]
    names = adapt.record_names(fast, ad)
    assert names == sorted("decoder." + n for n in fast.decoder.state_dict())
    assert not adapt.decodes(base, ad) and adapt.decodes(fast, ad)
    with pytest.raises(Exception):
        adapt.adapted_model(base, ad)  # the record does not name the model's own decoder

    def frames(stream, **kw):
        return codec.decompress(stream, model=base, precision="float32", **kw)[1]

    auto = frames(data)
    ref = frames(plain, decoder=adapt.adapted_model(pick(base, "fast"), ad))
    assert np.array_equal(auto, ref)
    assert not np.array_equal(auto, frames(plain))  # the adaptation changed the frames
    assert np.array_equal(frames(data, decoder="fast"), auto)
    assert np.array_equal(frames(data, decoder="full"), frames(plain, decoder="full"))
    tok = tk.tokens_from_stream(io.BytesIO(data))
    _, again = tk.detokenize_frames(base, tok)
    assert np.array_equal(np.stack(list(again)), auto)
    from neuralcodec import streaminfo
    (info,) = streaminfo.stream_info(io.BytesIO(data)).adapt
    assert info.decoder == ad.decoder_sha256.hex()  # not in the package registry: its hash
    # a reader that holds no such variant decodes every segment as if the record were absent
    monkeypatch.setattr(adapt, "decoder_variant", lambda model, choice="auto", models_dir=None: None)
    assert np.array_equal(frames(data), frames(plain, decoder="full"))


def test_refinement_optimises_the_codes_for_the_default_variant(reg, video, monkeypatch):
    """--refine chooses the codes through the decoder `mgv decode` runs: with a registered
    default variant, encoding with the model refines exactly as encoding with the variant's
    model (same encoder), not as through the model's own decoder; tokens refine the same way."""
    from neuralcodec import refine
    d, base, fast = reg

    def pick(model, choice="auto", models_dir=None):
        return weights.decoder_variant(model, choice, d)

    monkeypatch.setattr(refine, "decoder_variant", pick)
    got = codec.compress(base, video, segment_frames=9, refine=3)
    assert refine.refine_model(base).decoder is not base.decoder
    assert got == codec.compress(fast, video, segment_frames=9, refine=3)
    assert tk.tokenize(base, video, segment_frames=9, refine=3).segments[0].tobytes() == \
        tk.tokenize(fast, video, segment_frames=9, refine=3).segments[0].tobytes()
    monkeypatch.setattr(refine, "decoder_variant", lambda model, choice="auto", models_dir=None: None)
    assert refine.refine_model(base) is base
    own = codec.compress(base, video, segment_frames=9, refine=3)
    assert own != got  # the two decoders prefer other codes
