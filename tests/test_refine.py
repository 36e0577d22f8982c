"""Encoder-side latent refinement (neuralcodec.refine): it lowers the decoded error of real
streams, the streams carry the refined codes, and its option on the command line."""
import io

import numpy as np
import pytest
import torch

from neuralcodec import codec, payload, tokens
from neuralcodec import container as ct
from neuralcodec.cli import main
from neuralcodec.errors import InputError
from neuralcodec.quantizer import sign_quantize
from neuralcodec.configs import REFINE_RATE
from neuralcodec.rdo import select_codes
from neuralcodec.refine import refine_latents

from test_cli import make_video, one_error_line, refused  # noqa: E402
from test_codec import tiny_variant  # noqa: E402


def moving_clip(t=21, h=32, w=48, seed=0):
    """Smooth colour blobs drifting right one pixel per frame, uint8 ``t×h×w×3``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros((t, h, w, 3))
    for _ in range(4):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(6, 14)
        col = rng.uniform(-90, 90, 3)
        for i in range(t):
            d = ((yy - cy) ** 2 + (xx - cx - i) ** 2) / r ** 2
            out[i] += np.exp(-d)[..., None] * col
    return np.clip(out + 128, 0, 255).astype(np.uint8)


def mse(a, b):
    return float(np.square(a.astype(np.float64) - b).mean())


@pytest.fixture(scope="module")
def models():
    return [tiny_variant("tiny-lfq"), tiny_variant("tiny-planes", quantizer="planes", planes=2)]


def test_refined_streams_decode_closer_and_carry_the_refined_codes(models):
    v = moving_clip()
    for model in models:
        err = {}
        for steps in (0, 8):
            # two segments (9 + 9 + 3 frames), each decoded in chunks of 1 then up to 4 latents
            data = codec.compress(model, v, refine=steps, segment_frames=9)
            _, out = codec.decompress(data, model=model)
            err[steps] = mse(out, v)
            r = ct.Reader(io.BytesIO(data))
            stored = [payload.decode_payload(s, s.stored_bits(r.header)) for s in r.segments()]
            tok = tokens.tokenize(model, v, refine=steps, segment_frames=9)
            assert len(stored) == len(tok.segments) == 3
            for bits, t in zip(stored, tok.segments):
                assert np.array_equal(t, tokens.bits_to_tokens(bits))
            if steps == 0:
                plain = tok.segments
        assert err[8] < 0.98 * err[0], (model.name, err)
        assert not all(np.array_equal(a, b) for a, b in zip(plain, tok.segments))


def test_zero_steps_or_rate_keep_the_encoders_codes(models):
    v = moving_clip(t=13)
    x = torch.from_numpy(v).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    for model in models:
        lat = model.encode_latents(model.pad_video(x))
        assert refine_latents(model, list(v), lat, model.cfg.bits, 0) is lat
        # lr 0: the steps run (decoder state saved and restored per step) but move nothing
        same = refine_latents(model, list(v), lat, model.cfg.bits, 3, lr=0.0)
        assert same.shape == lat.shape
        assert torch.equal(sign_quantize(same), sign_quantize(lat))
        # fewer bits: refined for what is stored, so the stored bits may differ from the top's
        low = refine_latents(model, list(v), lat, 2, 4)
        assert low.shape == lat.shape and low.dtype == torch.float32
    with pytest.raises(InputError):
        codec.compress(models[0], v, refine=-1)
    with pytest.raises(InputError):
        codec.compress(models[0], v, refine=1.5)


def test_cli_refine_option(runner, tmp_path):
    src = make_video(tmp_path / "in.mkv", t=9)
    out = tmp_path / "out.mgv"
    refused(runner, ["encode", str(src), "-o", str(out), "--refine", "-2", "-q"], out, "refine")
    res = runner.invoke(main, ["encode", str(src), "-o", str(out), "--refine", "1", "-q",
                               "--bits", "6"])
    assert res.exit_code == 0, res.output
    t = tmp_path / "t.safetensors"
    res = runner.invoke(main, ["tokens", str(src), "-o", str(t), "-q", "--refine", "1",
                               "--bits", "6"])
    assert res.exit_code == 0, res.output
    with open(out, "rb") as fo:
        stored = tokens.tokens_from_stream(fo)
    assert all(np.array_equal(a, b) for a, b in
               zip(tokens.Tokens.load(t).segments, stored.segments))
    one_error_line(runner.invoke(main, ["tokens", str(out), "-o", str(tmp_path / "u.safetensors"),
                                        "--refine", "1"]), 3)


def test_refine_refuses_frames_too_large_for_its_memory(runner, tmp_path, monkeypatch, models):
    import neuralcodec.refine as R

    v = moving_clip(t=5)  # 48×32 = 1536 pixels
    monkeypatch.setattr(R, "REFINE_MAX_PIXELS", 48 * 32 - 1)
    with pytest.raises(InputError, match="--refine 0"):
        codec.compress(models[0], v, refine=1)
    with pytest.raises(InputError, match="--refine 0"):
        tokens.tokenize(models[0], v, refine=1)
    assert codec.compress(models[0], v, refine=0)  # plain encoding has no such limit
    src = make_video(tmp_path / "in.mkv", t=5)
    out = tmp_path / "out.mgv"
    monkeypatch.setattr(R, "REFINE_MAX_PIXELS", 15)
    refused(runner, ["encode", str(src), "-o", str(out), "--refine", "1"], out, "--refine 0")
    t = tmp_path / "t.safetensors"
    refused(runner, ["tokens", str(src), "-o", str(t), "--refine", "1"], t, "--refine 0")


def test_latent_chunks_are_the_decoders_schedule():
    from neuralcodec.chunks import latent_chunks

    assert list(latent_chunks(6, 4)) == [(0, 1), (1, 4), (5, 1)]
    assert list(latent_chunks(1, 4)) == [(0, 1)]
    assert list(latent_chunks(5, 1)) == [(0, 1), (1, 1), (2, 1), (3, 1), (4, 1)]


def test_chunk_frame_ranges_tile_the_segment():
    """The first latent frame decodes frame 0, each later one ``tf`` frames: the chunks' frame
    ranges follow each other without gap or overlap up to 1 + tf·(t − 1) frames."""
    from neuralcodec.chunks import chunk_frame_range, latent_chunks

    tf = 4
    ranges = [chunk_frame_range(t0, n, tf) for t0, n in latent_chunks(6, 2)]
    assert ranges == [(0, 1), (1, 9), (9, 17), (17, 21)]


def changed_tokens(latents: torch.Tensor, bits: int) -> int:
    """Tokens of latent frames t >= 1 whose first ``bits`` bits differ from frame t − 1's."""
    s = sign_quantize(latents[:, :bits])
    return int((s[:, :, 1:] != s[:, :, :-1]).any(1).sum())


def test_the_rate_term_makes_refined_codes_repeat(models):
    """refine_latents(rate=μ): the pull toward the previous latent frame's codes lowers the
    number of tokens that change from frame to frame (what the context coder pays for), across
    the decoder's chunks (6 latent frames: chunks of 1, then 4, then 1)."""
    v = moving_clip(t=21)
    x = torch.from_numpy(v).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    for model in models:
        bits = model.cfg.bits
        lat = model.encode_latents(model.pad_video(x))
        assert lat.shape[2] == 6
        torch.manual_seed(0)
        free = refine_latents(model, list(v), lat, bits, 8, rate=0.0)
        pulled = refine_latents(model, list(v), lat, bits, 8, rate=1.0)
        n_free, n_pulled = changed_tokens(free, bits), changed_tokens(pulled, bits)
        assert n_pulled < 0.8 * n_free, (model.name, n_free, n_pulled)
        # the term only counts t >= 1 of the segment: frame 0 (intra) is refined as without it
        assert torch.equal(sign_quantize(free[:, :, :1]), sign_quantize(pulled[:, :, :1]))
        # the encoder's refinement (no rate given) runs with the configured term
        torch.manual_seed(0)
        shipped = refine_latents(model, list(v), lat, bits, 8)
        assert torch.equal(shipped, refine_latents(model, list(v), lat, bits, 8, rate=REFINE_RATE))
        assert not torch.equal(shipped, free)



def test_refinement_keeps_the_best_codes_it_visited(models):
    """A step can land on worse codes (at few bits, or with a step too long): each chunk keeps
    the lowest-loss codes its steps visited, the encoder's included, judged on the output
    clamped as decoding clamps it, so refinement never decodes worse than the encoder's codes
    (keeping the last step's, one of these settings decoded 1% worse than the encoder's)."""
    v = moving_clip(t=13)
    x = torch.from_numpy(v).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    for model in models:
        lat = model.encode_latents(model.pad_video(x))
        for bits in (2, model.cfg.bits):
            def err(latents):
                rec = model.decode(sign_quantize(latents), bits)[:, :, :13, :32, :48]
                return float((rec - x).square().mean())
            start = err(lat)
            for lr, steps in ((0.5, 1), (50.0, 1), (50.0, 4)):
                torch.manual_seed(0)
                got = err(refine_latents(model, list(v), lat, bits, steps, lr=lr, rate=0.0))
                assert got <= start * 1.001, (model.name, bits, lr, steps, got, start)
        # a sane step size still moves the codes (the best is not always the start)
        tuned = refine_latents(model, list(v), lat, model.cfg.bits, 8, rate=0.0)
        assert err(tuned) < 0.98 * start


def test_refinement_judges_the_codes_the_rdo_stores(models):
    """refine_latents(rdo=λ): every step decodes the codes the RDO will store (repeats of the
    previous latent frame's codes included, across the decoder's chunks), and the codes whose
    decoder state it carries from chunk to chunk are exactly those
    ``select_codes(result, λ)`` stores (judging the plain signs, as before, it carried codes
    the stream never holds wherever the RDO repeats one)."""
    v = moving_clip(t=21)  # 6 latent frames: chunks of 1, then 4, then 1
    x = torch.from_numpy(v).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    lam, steps = 4.0, 3
    for model in models:
        q, k = model.quantizer, model.cfg.bits
        lat = model.encode_latents(model.pad_video(x))
        for bits in (2, k):
            seen = []
            hook = model.decoder.register_forward_pre_hook(
                lambda m, args: seen.append(args[0].detach().float().clone()))
            try:
                got = refine_latents(model, list(v), lat, bits, steps, rate=0.0, rdo=lam)
            finally:
                hook.remove()
            stored = select_codes(got, q, bits, lam)
            assert not torch.equal(stored, sign_quantize(got[:, :bits]))  # the RDO repeats some
            want = q.decoder_codes(stored).float()
            want = torch.cat([want, want.new_zeros((1, k - bits) + want.shape[2:])], 1)
            carried = torch.cat(seen[steps + 1::steps + 2], 2)  # the last call of each chunk
            assert len(seen) == 3 * (steps + 2) and torch.equal(carried, want), (model.name, bits)

        def err(latents):
            codes = select_codes(latents, q, k, lam)
            rec = model.decode(codes, k)[:, :, :21, :32, :48].clamp(-1, 1)
            return float((rec - x).square().mean())
        tuned = refine_latents(model, list(v), lat, k, 8, rate=0.0, rdo=lam)
        assert err(tuned) < 0.98 * err(lat)
