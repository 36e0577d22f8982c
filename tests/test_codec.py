"""Codec API on a tiny random model: round trips, segment/chunk streaming equals one-piece
coding, rate selection, entropy fallback, frame ranges through the index, model identity,
video files through PyAV (fps and frame count survive), and typed errors for bad input."""
import io
from dataclasses import replace
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from neuralcodec import chunks, codec, payload, recovery
from neuralcodec import container as ct
from neuralcodec import video_io as vio
from neuralcodec import video_out as vout
from neuralcodec.configs import CONFIGS, DEFAULT_RDO
from neuralcodec.errors import InputError, ModelError, OutputError
from neuralcodec.model import Tokenizer
from neuralcodec.rdo import select_codes


@pytest.fixture(scope="module")
def model(make_tiny):
    return make_tiny(0.05)


def clip(t=23, h=30, w=42, seed=0):
    """Smooth moving pattern plus noise, ``T×H×W×3`` uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    frames = [np.stack([(x * 6 + i * 9) % 256, (y * 7 + i * 4) % 256, (x + y) * 3 % 256], -1)
              for i in range(t)]
    v = np.stack(frames).astype(np.int16) + rng.integers(-8, 9, (t, h, w, 3))
    return np.clip(v, 0, 255).astype(np.uint8)


def tiny_variant(name, **changes):
    """The tiny config with ``changes`` (e.g. ``bits=32``), seed 0, every parameter plus
    0.05·N(0, 1) (so that AdaGN's zero init does not hide the codes), named ``name`` with a
    dummy sha256, in eval mode."""
    torch.manual_seed(0)
    m = Tokenizer(replace(CONFIGS["tiny"], **changes), name=name, sha256="ab" * 32).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def reference_codes(model, frames, bits, rdo=DEFAULT_RDO):
    """One-piece (non-streaming) bits of a segment, chosen as the encoder does (``rdo``):
    ``b×t×h×w`` uint8."""
    x = chunks.frames_to_tensor(list(frames), torch.device("cpu"))
    z = model.encode_latents(model.pad_video(x))
    return (select_codes(z, model.quantizer, bits, rdo)[0] > 0).to(torch.uint8).numpy()


@pytest.mark.parametrize("entropy", ["none", "context"])
def test_round_trip_shapes_and_metadata(model, entropy):
    v = clip()
    data = codec.compress(model, v, entropy=entropy, segment_frames=9, fps=Fraction(30000, 1001))
    meta, out = codec.decompress(data, model=model)
    assert out.shape == v.shape and out.dtype == np.uint8
    assert meta.fps == Fraction(30000, 1001) and meta.frames == 23
    r = ct.Reader(io.BytesIO(data))
    assert r.header.segment_count == 3 and r.header.entropy == codec.ENTROPY_MODES[entropy]
    modes = {s.entropy for s in r.segments()}
    if entropy == "none":
        assert modes == {ct.ENTROPY_NONE}


def test_streamed_segments_equal_one_piece_coding(model, monkeypatch):
    """Chunked encoding with per-segment state gives the same bits as encoding each segment
    alone in one piece; decoding gives the same frames as a one-piece decode."""
    v = clip(t=23)
    monkeypatch.setattr(chunks, "CHUNK_FRAMES", 4)  # several chunks per segment
    data = codec.compress(model, v, entropy="none", segment_frames=13)
    r = ct.Reader(io.BytesIO(data))
    segs = list(r.segments())
    assert [(s.first_frame, s.frames, s.latent_t) for s in segs] == [(0, 13, 4), (13, 10, 4)]
    for s in segs:
        got = payload.decode_payload(s, r.header.bits)
        ref = reference_codes(model, v[s.first_frame:s.first_frame + s.frames], r.header.bits)
        np.testing.assert_array_equal(got, ref)
        # raw payload layout: channel fastest, LSB first (spec §6), checked with numpy
        packed = np.packbits(ref.transpose(1, 2, 3, 0).reshape(-1), bitorder="little").tobytes()
        assert s.data == packed
    _, out = codec.decompress(data, model=model)
    # one-piece decode of segment 1
    s = segs[1]
    codes = torch.from_numpy(payload.decode_payload(s, 6)).float()[None] * 2 - 1
    y = chunks.tensor_to_frames(model.decode(codes))[: s.frames, :30, :42]
    assert np.abs(y.astype(int) - out[13:].astype(int)).max() <= 1


def test_encoder_sees_bounded_chunks(model):
    """Peak activation memory does not grow with the video: the encoder never sees more than
    CHUNK_FRAMES frames at once, whatever the segment and video lengths."""
    seen = []
    hook = model.encoder.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[2]))
    try:
        codec.compress(model, clip(t=70, h=8, w=8), segment_frames=65)
    finally:
        hook.remove()
    assert max(seen) <= chunks.CHUNK_FRAMES and seen[0] == 1 and len(seen) > 5


def test_bits_selection_zero_pads_dropped_channels(model):
    v = clip(t=9)
    data = codec.compress(model, v, bits=3, entropy="none")
    r = ct.Reader(io.BytesIO(data))
    assert (r.header.bits, r.header.model_bits) == (3, 6)
    (s,) = list(r.segments())
    assert len(s.data) == -(-3 * 3 * 8 * 11 // 8)
    _, out = codec.decompress(data, model=model)
    full = np.zeros((6, 3, 8, 11), np.float32)
    full[:3] = reference_codes(model, v, 3).astype(np.float32) * 2 - 1
    y = chunks.tensor_to_frames(model.decode(torch.from_numpy(full)[None]))[:, :30, :42]
    assert np.abs(y.astype(int) - out.astype(int)).max() <= 1
    for b in (0, 7):
        with pytest.raises(InputError):
            codec.compress(model, v, bits=b)


def test_context_falls_back_to_raw_when_it_does_not_help(model, monkeypatch):
    import neuralcodec.entropy as ent

    monkeypatch.setattr(ent, "encode_bits", lambda bits: b"\0" * 10**6)
    data = codec.compress(model, clip(t=9), entropy="context")
    (s,) = list(ct.Reader(io.BytesIO(data)).segments())
    assert s.entropy == ct.ENTROPY_NONE


def test_context_and_raw_decode_identically(model):
    v = clip(t=17)
    _, a = codec.decompress(codec.compress(model, v, entropy="none"), model=model)
    _, b = codec.decompress(codec.compress(model, v, entropy="context"), model=model)
    np.testing.assert_array_equal(a, b)


def test_frame_range_decodes_only_needed_segments(model, monkeypatch):
    v = clip(t=40, h=12, w=12)
    data = codec.compress(model, v, segment_frames=9)
    _, full = codec.decompress(data, model=model)
    calls = []
    real = recovery.decode_codes
    monkeypatch.setattr(recovery, "decode_codes", lambda s, b, *a: calls.append(s.index) or real(s, b, *a))
    meta, part = codec.decompress(data, model=model, frames=(20, 30))
    assert meta.frames == 10 and calls == [2, 3]
    np.testing.assert_array_equal(part, full[20:30])
    _, tail = codec.decompress(data, model=model, frames=(38, None))
    np.testing.assert_array_equal(tail, full[38:])
    for bad in ((5, 5), (40, 50), (-1, 3)):
        with pytest.raises(InputError):
            codec.decompress(data, model=model, frames=bad)


@pytest.mark.parametrize("lazy", [False, True])
def test_codec_reaches_the_triton_kernels(model, monkeypatch, lazy):
    """Raw payloads are packed and unpacked by the kernels on the model's device: asked for
    backend="triton" (the interpreter here, CUDA on a GPU), the codec's own encode and decode
    run the Triton kernels and give the bytes and frames of the PyTorch path."""
    from neuralcodec import kernels

    if not kernels.triton_available("cpu"):
        pytest.skip("Triton is not available (needs TRITON_INTERPRET=1 on a CPU)")
    calls = []
    for name in ("_pack_triton", "_unpack_triton"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _r=real, _n=name: calls.append(_n) or _r(*a))
    if lazy:  # long segments are unpacked one latent frame at a time
        monkeypatch.setattr(recovery, "LAZY_BITS", 0)
    v = clip(t=9)
    ref = codec.compress(model, v, entropy="none")
    _, frames = codec.decompress(ref, model=model)
    assert calls == []  # on a CPU the default is the PyTorch reference
    data = codec.compress(model, v, entropy="none", backend="triton")
    assert data == ref and calls == ["_pack_triton"]
    _, got = codec.decompress(data, model=model, backend="triton")
    assert calls[1:] and set(calls[1:]) == {"_unpack_triton"}
    np.testing.assert_array_equal(got, frames)
    with pytest.raises(ValueError):
        codec.compress(model, v, entropy="none", backend="cuda-magic")


def test_model_identity_checked(model, tmp_path):
    data = codec.compress(model, clip(t=1))
    other = Tokenizer(CONFIGS["tiny"], name="tiny-test", sha256="ab" * 32)
    with pytest.raises(ModelError):
        codec.decompress(data, model=other)
    names = []
    meta, _ = codec.decompress_from_file(io.BytesIO(data), model=lambda n: names.append(n) or model)
    assert names == ["tiny-test"] and meta.frames == 1
    with pytest.raises(ModelError):  # unknown registered name
        codec.decompress(data)
    anon = Tokenizer(CONFIGS["tiny"])
    with pytest.raises(ModelError):
        codec.compress(anon, clip(t=1))


def test_default_segment_length():
    assert codec.default_segment_frames(Fraction(25), 4) == 49
    assert codec.default_segment_frames(Fraction(30000, 1001), 4) in (57, 61)
    assert codec.default_segment_frames(Fraction(1, 10), 4) == 5


def write_clip(path, v, rate=Fraction(30000, 1001), codec_name="ffv1", fmt=None):
    c = av.open(str(path), "w", format=fmt)
    s = c.add_stream(codec_name, rate=rate)
    s.width, s.height, s.pix_fmt = v.shape[2], v.shape[1], "yuv420p"
    for i, a in enumerate(v):
        f = av.VideoFrame.from_ndarray(a, format="rgb24")
        f.pts = i
        for p in s.encode(f):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()


@pytest.mark.parametrize("ext", [".mkv", ".mp4", ".y4m"])
def test_video_file_round_trip_keeps_fps_and_count(model, tmp_path, ext):
    v = clip(t=11, h=40, w=48)
    src = tmp_path / "in.mkv"
    write_clip(src, v)
    assert vio.probe(src).frames is None  # mkv does not declare a count: header is patched
    buf = io.BytesIO()
    res = codec.compress_to_file(model, src, buf, segment_frames=5)
    assert res.header.frames == 11 and res.segments == 3 and res.header.pix_fmt == "yuv420p"
    meta, frames = codec.decompress_from_file(io.BytesIO(buf.getvalue()), model=model)
    out = tmp_path / f"out{ext}"
    assert vout.write_video(out, meta, frames) == 11
    m2 = vio.probe(out)
    assert (m2.width, m2.height, m2.fps, m2.pix_fmt) == (48, 40, Fraction(30000, 1001), "yuv420p")
    assert sum(1 for _ in vio.read_frames(out)) == 11


def test_png_pattern_and_image_input(model, tmp_path):
    v = clip(t=3, h=16, w=20)
    pattern = str(tmp_path / "f_%03d.png")
    meta = vio.VideoMeta(20, 16, Fraction(25), 3, "rgb24")
    assert vout.write_video(pattern, meta, iter(v)) == 3
    back = np.stack(list(vio.read_frames(tmp_path / "f_001.png")))
    np.testing.assert_array_equal(back[0], v[0])  # PNG is lossless
    assert vio.probe(tmp_path / "f_001.png").frames == 1
    data = codec.compress(model, tmp_path / "f_002.png")
    assert codec.decompress(data, model=model)[1].shape == (1, 16, 20, 3)


def test_raw_h264_rate(tmp_path):
    v = clip(t=5, h=32, w=32)
    p = tmp_path / "a.264"
    write_clip(p, v, rate=Fraction(24), codec_name="libx264", fmt="h264")
    m = vio.probe(p)
    assert m.fps in (Fraction(24), Fraction(25)) and sum(1 for _ in vio.read_frames(p)) == 5


def test_bad_inputs(model, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.mkv"
    junk.write_bytes(b"this is not a video\n" * 50)
    for p in (empty, junk, tmp_path / "missing.mp4", tmp_path):
        with pytest.raises(InputError):
            codec.compress(model, p)
    with pytest.raises(InputError):
        codec.compress(model, np.zeros((0, 8, 8, 3), np.uint8))
    with pytest.raises(InputError):
        codec.compress(model, clip(t=3), segment_frames=4)
    with pytest.raises(InputError):
        codec.compress(model, clip(t=3), entropy="zip")
    for name in ("x.avi", "x.png", "x"):
        with pytest.raises(OutputError):
            vout.output_kind(name)


def test_choose_pix_fmt():
    assert vout.choose_pix_fmt("yuv420p", ["yuv420p", "yuv444p"]) == "yuv420p"
    assert vout.choose_pix_fmt("rgb24", ["yuv420p", "yuv444p"]) == "yuv444p"
    assert vout.choose_pix_fmt("rgba", ["gbrp", "yuv420p"]) == "gbrp"
    assert vout.choose_pix_fmt("gray", ["yuv420p", "gray"]) == "gray"
    assert vout.choose_pix_fmt("nv12", ["yuv420p", "yuv444p"]) == "yuv420p"


@pytest.mark.parametrize("entropy", ["none", "context"])
def test_32_bit_model_round_trip(entropy):
    """K = 32 (the format's largest model, what --init grows a model to): every rate point
    round-trips through the container and both payload modes with the encoder's exact bits."""
    m = tiny_variant("tiny-32", bits=32)
    v = clip(t=9)
    for bits in (32, 24, 5):
        data = codec.compress(m, v, entropy=entropy, bits=bits, segment_frames=9)
        r = ct.Reader(io.BytesIO(data))
        assert (r.header.model_bits, r.header.bits) == (32, bits)
        seg = next(iter(r.segments()))
        assert np.array_equal(payload.decode_payload(seg, bits), reference_codes(m, v, bits))
        _, out = codec.decompress(data, model=m)
        assert out.shape == v.shape


def test_bit_plane_model_round_trip(tmp_path, monkeypatch):
    """A "planes" model (3 channels × 4 levels as 2 bit planes): chunked encoding gives the
    one-piece bits, the streamed decode a one-piece decode's frames, the first 3 bits (one
    plane) decode alone, and its weights file keeps the quantizer."""
    from neuralcodec.weights import load_weights_file, save_weights
    m = tiny_variant("tiny-planes", quantizer="planes", planes=2)
    assert m.cfg.latent_channels == 3 and m.encoder.skip is not None
    v = clip(t=20)
    monkeypatch.setattr(chunks, "CHUNK_FRAMES", 4)
    data = codec.compress(m, v, entropy="context", segment_frames=13)
    segs = list(ct.Reader(io.BytesIO(data)).segments())
    for s in segs:
        np.testing.assert_array_equal(payload.decode_payload(s, 6),
                                      reference_codes(m, v[s.first_frame:s.first_frame + s.frames], 6))
    _, out = codec.decompress(data, model=m)
    codes = torch.from_numpy(payload.decode_payload(segs[0], 6)).float()[None] * 2 - 1
    y = chunks.tensor_to_frames(m.decode(codes))[:13, :30, :42]
    assert np.abs(y.astype(int) - out[:13].astype(int)).max() <= 1
    _, low = codec.decompress(codec.compress(m, v, entropy="context", bits=3), model=m)
    assert low.shape == v.shape and not np.array_equal(low, out)
    from neuralcodec.model import for_inference
    half = for_inference(tiny_variant("tiny-planes", quantizer="planes", planes=2), precision="bfloat16")
    _, out16 = codec.decompress(codec.compress(half, v, entropy="context"), model=half)  # bf16 path runs
    _, out32 = codec.decompress(codec.compress(m, v, entropy="context"), model=m)
    # bf16 flips some bits near the cell edges of this random model (mean |Δ| ≈ 8 of 255);
    # unrelated frames would differ by ~85
    assert out16.shape == v.shape and np.abs(out16.astype(int) - out32.astype(int)).mean() < 20
    save_weights(m, tmp_path / "p.safetensors", "tiny-planes")
    back = load_weights_file(tmp_path / "p.safetensors")
    assert back.cfg == m.cfg and back.cfg.quantizer == "planes"


def test_sign_magnitude_model_stores_magnitude_bits_and_decodes_the_same(tmp_path):
    """The same planes weights with ``sign_magnitude``: the stream stores, for planes j >= 1,
    the offset bits XOR-ed with the channel's negative sign (RDO on), and decodes to the same
    frames; the flag survives the weights file. ``Tokenizer.with_config`` gives that model from
    the offset one's weights and leaves the offset one as it was."""
    from neuralcodec.weights import load_weights_file, save_weights
    off = tiny_variant("tiny-planes", quantizer="planes", planes=2)
    sm = off.with_config(replace(off.cfg, sign_magnitude=True))
    assert not off.cfg.sign_magnitude and not off.quantizer.sign_magnitude and sm.quantizer.sign_magnitude
    assert (sm.name, sm.sha256, sm.training) == (off.name, off.sha256, False)
    assert all(torch.equal(a, b) for a, b in zip(off.state_dict().values(), sm.state_dict().values()))
    v = clip(t=9)
    d_off, d_sm = (codec.compress(m, v, entropy="context") for m in (off, sm))
    b_off, b_sm = (payload.decode_payload(next(iter(ct.Reader(io.BytesIO(d)).segments())), 6)
                   for d in (d_off, d_sm))
    neg = 1 - b_off[:3]
    np.testing.assert_array_equal(b_sm[:3], b_off[:3])
    np.testing.assert_array_equal(b_sm[3:], b_off[3:] ^ neg)
    assert neg.any()
    np.testing.assert_array_equal(codec.decompress(d_sm, model=sm)[1], codec.decompress(d_off, model=off)[1])
    save_weights(sm, tmp_path / "sm.safetensors", "tiny-planes")
    assert load_weights_file(tmp_path / "sm.safetensors").cfg.sign_magnitude
    with pytest.raises(RuntimeError):  # a config that changes a weight's shape
        off.with_config(replace(off.cfg, planes=3))


@pytest.mark.parametrize("temporal_down", [(False, True), (True, False)])
def test_temporal_factor_2_model_round_trip(temporal_down, monkeypatch):
    """A model of temporal factor 2 (the family's `t2` member; either level halving the frame
    rate): chunked encoding gives the one-piece bits of every segment, the header carries the
    factor, and the streamed decode gives a one-piece decode's frames."""
    m = tiny_variant("tiny-t2", temporal_down=temporal_down)
    assert m.cfg.temporal_factor == 2
    v = clip(t=20)
    monkeypatch.setattr(chunks, "CHUNK_FRAMES", 4)  # several chunks per segment
    data = codec.compress(m, v, entropy="context", segment_frames=11)
    r = ct.Reader(io.BytesIO(data))
    assert r.header.temporal_factor == 2
    segs = list(r.segments())
    assert [(s.first_frame, s.frames, s.latent_t) for s in segs] == [(0, 11, 6), (11, 9, 5)]
    for s in segs:
        np.testing.assert_array_equal(payload.decode_payload(s, 6),
                                      reference_codes(m, v[s.first_frame:s.first_frame + s.frames], 6))
    _, out = codec.decompress(data, model=m)
    assert out.shape == v.shape
    s = segs[1]
    codes = torch.from_numpy(payload.decode_payload(s, 6)).float()[None] * 2 - 1
    y = chunks.tensor_to_frames(m.decode(codes))[: s.frames, :30, :42]
    assert np.abs(y.astype(int) - out[11:].astype(int)).max() <= 1
