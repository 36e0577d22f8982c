"""Encoder-side RDO (neuralcodec.rdo): the repeat rule, its effect on real streams and its
option on the command line."""
import io

import numpy as np
import pytest
import torch

from neuralcodec import codec, payload, tokens
from neuralcodec import container as ct
from neuralcodec.cli import main
from neuralcodec.errors import InputError
from neuralcodec.quantizer import LFQ, PlaneQuantizer, sign_quantize
from neuralcodec.rdo import select_codes

from test_cli import make_video, one_error_line, refused  # noqa: E402
from test_codec import tiny_variant  # noqa: E402


def brute_force(latents, quantizer, bits, lam):
    """The rule of neuralcodec.rdo written token by token."""
    codes = sign_quantize(latents[:, :bits])
    out = codes.clone()
    v = quantizer.targets(latents)
    step = quantizer.steps(bits).view(1, -1, 1, 1, 1)
    _, _, t, h, w = codes.shape
    for ti in range(1, t):
        for y in range(h):
            for x in range(w):
                new = codes[:, :, ti:ti + 1, y:y + 1, x:x + 1]
                old = out[:, :, ti - 1:ti, y:y + 1, x:x + 1]
                target = v[:, :, ti:ti + 1, y:y + 1, x:x + 1]
                d_new = ((target - quantizer.values(new)) / step).square().sum().item()
                d_old = ((target - quantizer.values(old)) / step).square().sum().item()
                if d_old - d_new <= lam:
                    out[:, :, ti, y, x] = out[:, :, ti - 1, y, x]
    return out


@pytest.mark.parametrize("quantizer,bits", [(PlaneQuantizer(6, 3), 6), (PlaneQuantizer(6, 3), 4),
                                            (LFQ(5), 5), (LFQ(5), 3)])
def test_select_codes_follows_the_repeat_rule(quantizer, bits):
    torch.manual_seed(0)
    k = quantizer.bits
    z = torch.randn(1, k // getattr(quantizer, "planes", 1), 1, 5, 6) * 0.8
    z = z + 0.25 * torch.randn(1, z.shape[1], 6, 5, 6)  # slow drift: many near-repeats
    latents = quantizer.latents(z)
    plain = select_codes(latents, quantizer, bits, 0.0)
    assert torch.equal(plain, sign_quantize(latents[:, :bits]))
    for lam in (0.1, 1.0):
        got = select_codes(latents, quantizer, bits, lam)
        assert got.shape == plain.shape and torch.equal(got, brute_force(latents, quantizer, bits, lam))
        assert torch.equal(got[:, :, 0], plain[:, :, 0])  # the intra frame is never touched
    changed = [(c[:, :, 1:] != c[:, :, :-1]).any(1).sum().item()
               for c in (plain, select_codes(latents, quantizer, bits, 0.1),
                         select_codes(latents, quantizer, bits, 1.0))]
    assert changed[0] > changed[1] > changed[2]
    # a segment decided a part at a time (refinement's chunks), each part given the codes
    # chosen for the frame before it, gets the whole segment's decisions
    for lam in (0.1, 1.0):
        whole = select_codes(latents, quantizer, bits, lam)
        parts = [select_codes(latents[:, :, :2], quantizer, bits, lam)]
        parts.append(select_codes(latents[:, :, 2:5], quantizer, bits, lam, parts[-1][:, :, -1:]))
        parts.append(select_codes(latents[:, :, 5:], quantizer, bits, lam, parts[-1][:, :, -1:]))
        assert torch.equal(torch.cat(parts, 2), whole)


def test_plane_values_are_the_cell_midpoints():
    q = PlaneQuantizer(6, 3)  # 2 channels × 3 planes
    assert q.steps(6).tolist() == [0.25, 0.25] and q.steps(3).tolist() == [0.5, 1.0]
    assert q.steps(1).tolist() == [1.0, 2.0] and LFQ(4).steps(3).tolist() == [2, 2, 2, 1]
    v = torch.tensor([0.9, -0.3]).view(1, 2, 1)
    codes = sign_quantize(q.latents(torch.atanh(v)))
    assert torch.allclose(q.values(codes), torch.tensor([0.875, -0.375]).view(1, 2, 1))
    assert torch.allclose(q.values(codes[:, :2]), torch.tensor([0.5, -0.5]).view(1, 2, 1))
    assert torch.allclose(q.values(codes[:, :3]), torch.tensor([0.75, -0.5]).view(1, 2, 1))


def drifting_clip(t=17, h=32, w=48, seed=0):
    """A still picture under light sensor noise: nothing moves, yet plain quantization flips
    tokens near the cell edges from frame to frame."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 215, (1, h // 8, w // 8, 3)).repeat(8, 1).repeat(8, 2)
    noise = rng.normal(0, 6, (t, h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def test_rdo_streams_are_smaller_and_carry_the_chosen_codes():
    m = tiny_variant("tiny-lfq")
    planes = tiny_variant("tiny-planes", quantizer="planes", planes=2)
    v = drifting_clip()
    for model in (m, planes):
        sizes, changed = {}, {}
        for lam in (0.0, 0.03, 100.0):
            data = codec.compress(model, v, rdo=lam, segment_frames=17)
            sizes[lam] = len(data)
            (seg,) = list(ct.Reader(io.BytesIO(data)).segments())
            bits = payload.decode_payload(seg, seg.stored_bits(ct.Reader(io.BytesIO(data)).header))
            x = torch.from_numpy(v).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
            want = select_codes(model.encode_latents(model.pad_video(x)), model.quantizer,
                                model.cfg.bits, lam)
            assert np.array_equal(bits, (want[0] > 0).numpy().astype(np.uint8))
            changed[lam] = (bits[:, 1:] != bits[:, :-1]).any(0).sum()
            if lam == 100.0:  # every inter token repeats: later latent frames equal the first
                assert (bits == bits[:, :1]).all()
            tok = tokens.tokenize(model, v, rdo=lam, segment_frames=17)
            assert np.array_equal(tok.segments[0], tokens.bits_to_tokens(bits))
        assert changed[0.0] > changed[0.03] > changed[100.0] == 0
        assert sizes[0.0] >= sizes[0.03] > sizes[100.0]
    with pytest.raises(InputError):
        codec.compress(m, v, rdo=-1.0)


def test_cli_rdo_option(runner, tmp_path):
    src = make_video(tmp_path / "in.mkv", t=17)
    out = tmp_path / "out.mgv"
    refused(runner, ["encode", str(src), "-o", str(out), "--rdo", "-1", "-q"], out, "rdo")
    sizes, toks = [], []
    for lam in ("0", "1000"):
        res = runner.invoke(main, ["encode", str(src), "-o", str(out), "--rdo", lam, "-q", "-y"])
        assert res.exit_code == 0, res.output
        sizes.append(out.stat().st_size)
        # the tokens of the video with the same --rdo are the tokens the stream stores
        for inp, extra in ((src, ["--rdo", lam]), (out, [])):
            t = tmp_path / "t.safetensors"
            res = runner.invoke(main, ["tokens", str(inp), "-o", str(t), "-q", "-y", *extra])
            assert res.exit_code == 0, res.output
            toks.append(tokens.Tokens.load(t).segments)
    assert sizes[1] < sizes[0]
    for a, b in ((0, 1), (2, 3)):
        assert all(np.array_equal(x, y) for x, y in zip(toks[a], toks[b]))
    assert not all(np.array_equal(x, y) for x, y in zip(toks[0], toks[2]))
    one_error_line(runner.invoke(main, ["tokens", str(out), "-o", str(tmp_path / "u.safetensors"),
                                        "--rdo", "1"]), 3)
