"""Tokenizer invariants on the tiny config: causality, streaming equality, image mode, odd
sizes, LFQ bit order, nested bits, and weights hashing."""
import json
from dataclasses import replace

import pytest
import torch

from neuralcodec.configs import CONFIGS, TINY, TokenizerConfig
from neuralcodec.layers import streaming
from neuralcodec.model import Tokenizer, count_parameters, macs_per_pixel, mask_bits, token_means
from neuralcodec.quantizer import LFQ, PlaneQuantizer, codes_to_indices, indices_to_codes, sign_quantize
from neuralcodec.weights import WeightsError, load_weights_file, save_weights


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Tokenizer(TINY).eval()
    # random init leaves AdaGN projections at zero; perturb so the condition path is exercised
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def video(b=1, t=9, h=16, w=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, h, w, generator=g) * 2 - 1


def test_factors_and_shapes(model):
    assert TINY.spatial_factor == 4 and TINY.temporal_factor == 4
    x = video()
    z = model.encoder(x)
    assert z.shape == (1, TINY.bits, 3, 4, 6)
    y = model.decoder(sign_quantize(z))
    assert y.shape == x.shape


def test_causality_tokens_do_not_see_future(model):
    x = video(t=13)
    c = model.encode(x)
    x2 = x.clone()
    x2[:, :, 6:] = torch.rand_like(x2[:, :, 6:])  # frames >= 6 change → latent frames >= 2 may change
    c2 = model.encode(x2)
    # latent j covers frames 4(j-1)+1 .. 4j: latents 0 and 1 (frames 0..4) must be unchanged
    assert torch.equal(c[:, :, :2], c2[:, :, :2])
    assert not torch.equal(c[:, :, 2:], c2[:, :, 2:])


def test_decoder_is_causal(model):
    c = model.encode(video(t=13))
    c2 = c.clone()
    c2[:, :, 2:] = -c2[:, :, 2:]
    y, y2 = model.decode(c), model.decode(c2)
    assert torch.equal(y[:, :, :5], y2[:, :, :5])
    assert not torch.equal(y[:, :, 5:], y2[:, :, 5:])


@pytest.mark.parametrize("chunks", [[1, 4, 4, 4], [1, 8, 4], [5, 8], [1, 12]])
def test_streamed_equals_one_piece(model, chunks):
    x = model.pad_video(video(t=13))
    z = model.encoder(x)
    with streaming(model):
        parts, s = [], 0
        for n in chunks:
            parts.append(model.encoder(x[:, :, s:s + n]))
            s += n
    zs = torch.cat(parts, dim=2)
    assert torch.equal(sign_quantize(zs), sign_quantize(z))
    torch.testing.assert_close(zs, z, rtol=0, atol=1e-5)
    codes = sign_quantize(z)
    y = model.decoder(codes)
    with streaming(model):
        ys = torch.cat([model.decoder(codes[:, :, :1])] +
                       [model.decoder(codes[:, :, j:j + 1]) for j in range(1, codes.shape[2])], dim=2)
    torch.testing.assert_close(ys, y, rtol=0, atol=1e-5)


def test_streaming_state_is_reset_between_segments(model):
    x = model.pad_video(video(t=5))
    with streaming(model):
        a = model.encoder(x)
    with streaming(model):
        b = model.encoder(x)
    assert torch.equal(a, b)


def test_image_mode_single_frame(model):
    x = video(t=1)
    c = model.encode(x)
    assert c.shape[2] == 1
    y = model.decode(c)
    assert y.shape[2] == 1
    # the first frame of a clip is coded exactly as the image alone
    clip = torch.cat([x, video(t=8, seed=5)], dim=2)
    assert torch.equal(model.encode(clip)[:, :, :1], c)


@pytest.mark.parametrize("t,h,w", [(1, 7, 5), (2, 13, 9), (6, 1, 1), (10, 17, 31)])
def test_odd_sizes_are_padded(model, t, h, w):
    x = video(t=t, h=h, w=w)
    c = model.encode(x)
    assert c.shape[2] == model.latent_frames(t)
    assert c.shape[3:] == (-(-h // 4), -(-w // 4))
    y = model.decode(c)
    assert y.shape[2] == model.padded_frames(t) >= t
    assert y.shape[3] >= h and y.shape[4] >= w
    padded = model.pad_video(x)
    assert torch.equal(padded[:, :, :t, :h, :w], x)
    assert torch.equal(padded[:, :, -1, :h, :w], x[:, :, -1])  # tail repeats the last frame


def test_lfq_sign_convention_and_bit_order():
    z = torch.tensor([0.0, -0.0, 1e-9, -1e-9, 2.0, -3.0])
    assert sign_quantize(z).tolist() == [-1, -1, 1, -1, 1, -1]
    # channel k is bit k, least significant first
    codes = torch.tensor([[1.0], [-1.0], [1.0]])  # K=3, one token: bits 1,0,1 → 0b101
    assert codes_to_indices(codes, dim=0).tolist() == [5]
    idx = torch.randint(0, 2 ** 18, (2, 3, 4, 5))
    codes = indices_to_codes(idx, 18, dim=1)
    assert codes.shape == (2, 18, 3, 4, 5)
    assert torch.equal(codes_to_indices(codes, dim=1), idx)
    assert torch.equal(indices_to_codes(torch.tensor([1]), 3, dim=0)[:, 0], torch.tensor([1.0, -1.0, -1.0]))


def test_lfq_losses_and_straight_through():
    q = LFQ(bits=6, group_bits=3).train()
    z = torch.randn(4, 6, 2, 3, 3, requires_grad=True)
    out = q(z)
    assert torch.equal(out.codes.detach(), sign_quantize(z.detach()))
    out.codes.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # straight-through
    assert 0 < out.per_sample_entropy <= 6 and 0 < out.codebook_entropy <= 6
    # confident, diverse latents: low per-sample entropy, high codebook entropy
    zc = torch.randint(0, 2, (2000, 6)).float() * 20 - 10
    o2 = q(zc.t().reshape(6, 2000, 1, 1, 1).transpose(0, 1))
    assert o2.per_sample_entropy < 0.01 and o2.codebook_entropy > 5.9
    # collapsed latents: codebook entropy near zero
    o3 = q(torch.full((2000, 6, 1, 1, 1), 10.0))
    assert o3.codebook_entropy < 0.01
    # marginal bit rate: ~1 bit per random bit, ~0 for a constant one; its gradient pushes a
    # random bit toward a constant (the opposite of the codebook-entropy term's push)
    assert 5.9 < o2.bit_rate <= 6 and o3.bit_rate < 0.01
    zr = torch.cat([torch.randn(500, 1) * 3, torch.full((500, 5), 3.0)], 1)
    zr = zr.t().reshape(6, 500, 1, 1, 1).transpose(0, 1).requires_grad_(True)
    o4 = q(zr)
    assert 0.5 < o4.bit_rate < 1.5
    o4.bit_rate.backward()
    step = zr - 0.5 * zr.grad  # one gradient step on the rate alone
    assert q(step.detach()).bit_rate < o4.bit_rate
    assert q.eval()(zr).bit_rate == 0


def test_plane_quantizer_levels_nesting_and_straight_through():
    """Bit-plane FSQ: the planes' signs rebuild tanh(z) to half a cell (2^-P); the first j·C
    bits alone are the same channels quantized with j planes (the decoder's view of a
    truncated code); every plane passes the gradient of tanh(z) straight through."""
    q = PlaneQuantizer(bits=12, planes=3).train()  # C = 4 channels, 8 levels
    z = (torch.randn(2, 4, 3, 5, 5) * 2).requires_grad_(True)
    v = torch.tanh(z.detach())
    lat = q.latents(z.detach())
    assert lat.shape == (2, 12, 3, 5, 5)
    codes = sign_quantize(lat)

    def value(c, planes):
        return sum(c[:, 4 * j:4 * j + 4] * 2.0 ** -(j + 1) for j in range(planes))

    for planes in (1, 2, 3):
        err = (value(codes, planes) - v).abs().max()
        assert err <= 2.0 ** -planes + 1e-6
    assert (value(codes, 3) - v).abs().max() > 0.05  # quantized, not the identity
    # levels: 8 midpoints ±1/8 … ±7/8
    assert sorted(set(value(codes, 3).flatten().tolist())) == [k / 8 for k in (-7, -5, -3, -1, 1, 3, 5, 7)]
    out = q(z)
    assert torch.equal(out.codes.detach(), codes)
    assert out.entropy_loss == 0 and out.commit_loss == 0
    out.codes.sum().backward()
    torch.testing.assert_close(z.grad, 3 * (1 - v ** 2))  # d tanh / dz, once per plane
    with pytest.raises(ValueError):
        PlaneQuantizer(bits=10, planes=3)
    with pytest.raises(ValueError):
        replace(CONFIGS["tiny"], quantizer="planes", planes=4)  # 4 does not divide 6 bits
    with pytest.raises(ValueError):
        replace(CONFIGS["tiny"], planes=2)  # lfq sends one sign per channel


def test_sign_magnitude_planes_store_magnitude_bits_and_decode_the_same():
    """``sign_magnitude``: the stored bit of plane j >= 1 is the offset bit XOR-ed with the
    channel's negative sign (1 = outer half of the cell on either side of 0); the decoder's
    codes, the values, the training codes and every truncation b are those of the offset code."""
    off, sm = PlaneQuantizer(bits=12, planes=3), PlaneQuantizer(bits=12, planes=3, sign_magnitude=True)
    z = torch.randn(2, 4, 3, 5, 5) * 2
    c_off, c_sm = sign_quantize(off.latents(z)), sign_quantize(sm.latents(z))
    neg = c_off[:, :4] < 0
    assert torch.equal(c_sm[:, :4], c_off[:, :4])
    for j in (1, 2):
        plane = slice(4 * j, 4 * j + 4)
        assert torch.equal(c_sm[:, plane], torch.where(neg, -c_off[:, plane], c_off[:, plane]))
        # bit 1 = |v| in the outer half of its cell (binary digit j of |v|), for both signs
        outer = torch.floor(torch.tanh(z).abs() * 2 ** j) % 2 == 1
        assert torch.equal(c_sm[:, plane] > 0, outer)
    assert neg.any() and not torch.equal(c_sm, c_off)
    for b in (1, 4, 6, 8, 12):
        assert torch.equal(sm.decoder_codes(mask_bits(c_sm, b)), mask_bits(c_off, b))
        torch.testing.assert_close(sm.values(c_sm[:, :b]), off.values(c_off[:, :b]))
    assert torch.equal(sm(z).codes, off(z).codes)  # the decoder is trained on offset codes
    torch.testing.assert_close(sm.unbounded(sm.latents(z)), off.unbounded(off.latents(z)))
    with pytest.raises(ValueError):
        replace(CONFIGS["tiny"], sign_magnitude=True)  # lfq has no planes

def test_token_means_follow_the_causal_grouping():
    """The planes encoder's shortcut input: frame 0 alone, then groups of f frames, each s×s
    block averaged; a streamed split (1 frame, then multiples of f) gives the same means."""
    x = torch.randn(1, 3, 9, 16, 24)
    m = token_means(x, 4, 8)
    assert m.shape == (1, 3, 3, 2, 3)
    torch.testing.assert_close(m[0, :, 0, 1, 2], x[0, :, 0, 8:16, 16:24].mean((1, 2)))
    torch.testing.assert_close(m[0, :, 2, 0, 0], x[0, :, 5:9, :8, :8].mean((1, 2, 3)))
    parts = [token_means(x[:, :, :1], 4, 8), token_means(x[:, :, 1:5], 4, 8), token_means(x[:, :, 5:], 4, 8)]
    torch.testing.assert_close(torch.cat(parts, 2), m)


def test_lfq_entropies_stay_float32_under_bf16_autocast():
    """Under CPU bf16 autocast the entropy terms equal the float32 ones (they leave autocast)."""
    torch.manual_seed(1)
    q = LFQ(bits=12, group_bits=6).train()
    z = torch.randn(2, 12, 3, 4, 5)
    ref = q(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = q(z)
    assert got.codebook_entropy.dtype == torch.float32
    assert torch.equal(got.codebook_entropy, ref.codebook_entropy)
    assert torch.equal(got.entropy_loss, ref.entropy_loss)


def test_mask_bits_nested_rates(model):
    c = model.encode(video())
    m = mask_bits(c, 2)
    assert torch.equal(m[:, :2], c[:, :2]) and (m[:, 2:] == 0).all()
    assert model.decode(c, bits=2).shape == model.decode(c).shape
    assert not torch.equal(model.decode(c, bits=2), model.decode(c))


def test_weights_roundtrip_and_hash_check(tmp_path, model):
    path = tmp_path / "m.safetensors"
    sha = save_weights(model, path, "tiny-test")
    m2 = load_weights_file(path, sha)
    assert m2.cfg == TINY
    x = video()
    for p1, p2 in zip(model.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(p1.half().float(), p2)
    with pytest.raises(WeightsError, match="sha256"):
        load_weights_file(path, "0" * 64)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError):
        load_weights_file(path, sha)
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(WeightsError):
        load_weights_file(tmp_path / "junk.safetensors")
    assert m2.encode(x).shape == model.encode(x).shape


def test_config_validation_and_serialization():
    for name, cfg in CONFIGS.items():
        assert TokenizerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert CONFIGS["default"].spatial_factor == 8 and CONFIGS["default"].temporal_factor == 4
    assert CONFIGS["default"].bits == 18
    with pytest.raises(ValueError):
        TokenizerConfig(enc_channels=(8, 8), dec_channels=(8, 8, 8))
    with pytest.raises(ValueError):
        TokenizerConfig.from_dict({"bogus": 1})


def test_parameter_and_mac_counts(model):
    assert count_parameters(model) > 0
    macs = macs_per_pixel(model, frames=5, size=16)
    assert macs["encoder"] > 0 and macs["decoder"] > 0


# ---- inference fast path (2D convolutions, channels-last) --------------------------------------
def test_fast_path_matches_the_conv3d_reference(model):
    """Without autograd every layer runs the 2D channels-last path; it gives the nn.Conv3d
    reference's values (autograd on) in one piece and streamed in chunks."""
    x = video(t=9, h=16, w=24)
    with torch.enable_grad():
        z_ref = model.encoder(x).detach()
        y_ref = model.decoder(sign_quantize(z_ref)).detach()
    with torch.no_grad():
        z = model.encoder(x)
        y = model.decoder(sign_quantize(z_ref))
        assert z.is_contiguous(memory_format=torch.channels_last_3d)
        with streaming(model):
            parts = [model.decoder(sign_quantize(z_ref[:, :, :1]))]
            parts.append(model.decoder(sign_quantize(z_ref[:, :, 1:])))
    torch.testing.assert_close(z, z_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat(parts, dim=2), y_ref, rtol=1e-4, atol=1e-5)


def test_fast_decoder_conditions_at_the_latent_resolution(model, monkeypatch):
    """The fast decoder computes AdaGN's γ, β from the codes at their own resolution
    (``forward_latent``: broadcast over the pixels and frames each latent covers), never from
    the upsampled condition; with its full-rate stages run one frame at a time (a tiny
    TAIL_PIXELS) it still gives the reference's values."""
    from neuralcodec import model as M
    from neuralcodec.layers import AdaptiveGroupNorm
    x = video(t=9, h=16, w=24)
    with torch.enable_grad():
        codes = sign_quantize(model.encoder(x).detach())
        y_ref = model.decoder(codes).detach()
    calls = []
    real = AdaptiveGroupNorm.forward_latent
    monkeypatch.setattr(AdaptiveGroupNorm, "forward_latent",
                        lambda self, *a: calls.append(a[0].shape) or real(self, *a))
    monkeypatch.setattr(AdaptiveGroupNorm, "forward",
                        lambda *a: pytest.fail("upsampled condition on the fast path"))
    monkeypatch.setattr(M, "TAIL_PIXELS", 1)
    with torch.no_grad():
        y = model.decoder(codes)
        n_one = len(calls)
        with streaming(model):
            parts = [model.decoder(codes[:, :, :1]), model.decoder(codes[:, :, 1:])]
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat(parts, dim=2), y_ref, rtol=1e-4, atol=1e-5)
    assert n_one == len(model.decoder.adanorms)
    assert any(s[2] == 1 and s[3] > codes.shape[3] for s in calls[n_one:])  # one-frame tail pieces
    with pytest.raises(ValueError):
        real(model.decoder.adanorms[0], torch.zeros(1, 32, 2, 5, 6), codes[:, :, :1], [0, 0])


def test_codec_runs_the_fast_path_not_conv3d(make_tiny, monkeypatch):
    """The codec's own encode and decode never reach F.conv3d (the slow im2col path on CPU)."""
    import numpy as np
    import torch.nn.functional as F

    from neuralcodec import codec

    tiny = make_tiny(0.05)
    v = np.random.default_rng(0).integers(0, 256, (9, 24, 32, 3), dtype=np.uint8)
    calls = []
    real = F.conv3d
    monkeypatch.setattr(F, "conv3d", lambda *a, **k: calls.append(1) or real(*a, **k))
    data = codec.compress(tiny, v, segment_frames=9)
    codec.decompress(data, model=tiny)
    assert calls == []
    with torch.enable_grad():  # the reference path does use it: the probe works
        tiny.encoder(torch.zeros(1, 3, 1, 8, 8))
    assert calls


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_inference_precision_is_deterministic(make_tiny, precision):
    """Streams do not depend on the thread count, and a stream decodes to the same frames on
    every run, in either inference precision."""
    import numpy as np

    from neuralcodec import codec
    from neuralcodec.model import for_inference, inference_dtype

    m = for_inference(make_tiny(0.05), "cpu", precision)
    assert m.dtype == inference_dtype("cpu", precision) == getattr(torch, precision)
    v = np.random.default_rng(1).integers(0, 256, (13, 40, 48, 3), dtype=np.uint8)
    old = torch.get_num_threads()
    try:
        streams = []
        for n in (1, 2):
            torch.set_num_threads(n)
            streams.append(codec.compress(m, v, segment_frames=9))
        frames = [codec.decompress(streams[0], model=m)[1] for _ in range(2)]
    finally:
        torch.set_num_threads(old)
    assert streams[0] == streams[1]
    np.testing.assert_array_equal(frames[0], frames[1])
    with pytest.raises(ValueError):
        inference_dtype("cpu", "float8")


def test_fast_path_weight_cache_follows_the_weights():
    """The fast path's cached weight layouts are rebuilt after a cast or an in-place update."""
    torch.manual_seed(2)
    m = Tokenizer(TINY).eval()
    x = video(t=5, h=16, w=24)
    with torch.no_grad():
        a = m.encoder(x)
        for p in m.parameters():
            p.mul_(1.5)
        b = m.encoder(x)
    with torch.enable_grad():
        ref = m.encoder(x).detach()
    with torch.no_grad():
        m.to(torch.bfloat16)
        c = m.encoder(x.bfloat16()).float()
        m.float()  # weights now rounded to bf16: the float32 cache must be rebuilt from them
        d = m.encoder(x)
    with torch.enable_grad():
        ref_d = m.encoder(x).detach()
    assert not torch.allclose(a, b)
    torch.testing.assert_close(b, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(d, ref_d, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(c, ref, rtol=0.1, atol=0.1)
