"""benchmarks/bench_bitcode.py: the two bit codings it compares are separate models built from
the loaded one, which is left untouched."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from benchmarks import bench_bitcode as B
from neuralcodec.configs import CONFIGS
from neuralcodec.model import Tokenizer
from neuralcodec.tokens import tokenize


def _planes_model(**changes):
    torch.manual_seed(0)
    m = Tokenizer(replace(CONFIGS["tiny"], **changes), name="tiny-planes", sha256="ab" * 32).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))  # so that AdaGN's zero init does not hide the codes
    return m


def _clip(t=9, h=30, w=42):
    """Moving pattern plus noise, ``T×H×W×3`` uint8."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w]
    v = np.stack([np.stack([(x * 6 + i * 9) % 256, (y * 7 + i * 4) % 256, (x + y) * 3 % 256], -1)
                  for i in range(t)]).astype(np.int16) + rng.integers(-8, 9, (t, h, w, 3))
    return np.clip(v, 0, 255).astype(np.uint8)


def test_bit_codings_are_two_models_with_the_same_weights_and_the_loaded_one_is_untouched():
    model = _planes_model(quantizer="planes", planes=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    off, sm = B.bit_codings(model)
    assert model.cfg.sign_magnitude is False and model.quantizer.sign_magnitude is False
    assert not off.cfg.sign_magnitude and sm.cfg.sign_magnitude and sm.quantizer.sign_magnitude
    assert (off.name, sm.sha256) == (model.name, model.sha256)
    for m in (model, off, sm):
        assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    v = _clip()
    b_off, b_sm = (tokenize(m, v).segment_bits(0) for m in (off, sm))
    c = model.cfg.bits // model.cfg.planes  # channels: plane 0 is the sign, stored alike
    np.testing.assert_array_equal(b_sm[:c], b_off[:c])
    assert (b_sm[c:] != b_off[c:]).any()  # the lower planes really are coded differently
    assert all(B.coded_bytes(m, v, model.cfg.bits) > 0 for m in (off, sm))


def test_bit_codings_refuse_a_model_without_bit_planes():
    with pytest.raises(ValueError, match="not a planes model"):
        B.bit_codings(_planes_model())  # the tiny config's quantizer is LFQ
