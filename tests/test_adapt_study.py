"""The decoder-adaptation study (benchmarks/adapt_study.py) on a tiny model: the update's code
round-trips exactly, its prior table is integers, and adapting the decoder lowers the error on
the frames it trains on (tokens fixed, the dequantized update applied)."""
import io

import numpy as np
import pytest
import torch

from benchmarks import adapt_study as A
from neuralcodec import codec
from neuralcodec.chunks import frames_to_tensor
from neuralcodec.tokens import detokenize, tokens_from_stream

from test_codec import clip  # noqa: E402


def test_laplace_table_is_integer_and_symmetric():
    for j in (0, 5, 47):
        f = A.laplace_freqs(j, 9)
        assert f.dtype == np.int64 and len(f) == 19 and f[9] == 65536 and f.min() >= 1
        assert np.array_equal(f, f[::-1]) and np.all(np.diff(f[9:]) <= 0)
    assert [A.laplace_r(j) for j in range(48)] == sorted(A.laplace_r(j) for j in range(48))
    with pytest.raises(ValueError):
        A.laplace_r(48)


@pytest.mark.parametrize("q", [-7, -3, 0.25])
def test_update_code_round_trips(q):
    rng = np.random.default_rng(1)
    ts = [torch.from_numpy(rng.laplace(0, s, n)).float()
          for s, n in ((0.01, 500), (0.2, 37), (0.0, 10), (1e-4, 64), (3.0, 5))]
    u = A.quantize_update(ts, q)
    data = A.encode_update(u)
    back = A.decode_update(data, [t.numel() for t in ts])
    assert back.exps == u.exps
    assert all(np.array_equal(a, b) for a, b in zip(back.ints, u.ints))
    for t, d, e in zip(ts, back.dequantized(), back.exps):
        assert float((t - d).abs().max()) <= 2.0 ** e / 2 + 1e-7
    with pytest.raises(ValueError):
        A.decode_update(data[:1], [t.numel() for t in ts])


def test_seeded_signs_are_fixed():
    s = A.seeded_signs(64, 3)
    assert set(np.unique(s)) == {-1.0, 1.0} and np.array_equal(s, A.seeded_signs(64, 3))
    assert not np.array_equal(s, A.seeded_signs(64, 4))


def test_adaptation_lowers_the_error_on_its_frames(make_tiny):
    torch.manual_seed(0)
    model = make_tiny(0.05).float().eval()
    frames = clip(t=17, h=32, w=32)
    tok = tokens_from_stream(io.BytesIO(codec.compress(model, frames, bits=6, segment_frames=17,
                                                       audio=False)))
    inputs = {(0, 6): A.decoder_input(model, tok, 0, 6)}
    targets = [frames_to_tensor(list(frames), torch.device("cpu"))]
    for p in model.parameters():
        p.requires_grad_(False)
    v = A.Variant("t", params="bn", lora=2, rank=1, steps=(5, 40), lr=1e-2, bits=(6,))
    snaps = [(s, [t.detach().clone() for t in up.tensors()], up)
             for s, _, up in A.adapt(model, v, inputs, targets)]
    assert [s for s, _, _ in snaps] == [5, 40]
    up = snaps[-1][2]
    tensors = snaps[-1][1]
    qu = A.quantize_update(tensors, -10)
    back = A.decode_update(A.encode_update(qu), [t.numel() for t in tensors])
    deq = [d.reshape(t.shape) for d, t in zip(back.dequantized(), tensors)]
    adapted = A.apply_update(model, up, deq)
    assert adapted.name == model.name and adapted.sha256 == model.sha256
    base = detokenize(model, tok).astype(np.float64)
    after = detokenize(adapted, tok).astype(np.float64)
    ref = frames.astype(np.float64)
    assert ((after - ref) ** 2).mean() < 0.9 * ((base - ref) ** 2).mean()
    # the model itself is left unchanged
    assert np.array_equal(detokenize(model, tok), base.astype(np.uint8))
