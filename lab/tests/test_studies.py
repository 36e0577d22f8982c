"""The lab's studies on tiny models: what they compare is what they say they compare."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from neuralcodec.configs import CONFIGS
from neuralcodec.model import Tokenizer
from neuralcodec.tokens import tokenize
from lab.configs import LAB_CONFIGS
from lab.studies import bench_bitcode


def _tiny(**changes) -> Tokenizer:
    """The tiny config with ``changes``, seed 0, parameters perturbed (AdaGN's zero init would
    hide the codes), eval mode."""
    torch.manual_seed(0)
    m = Tokenizer(replace(CONFIGS["tiny"], **changes), name="tiny", sha256="ab" * 32).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def test_bench_bitcode_codes_one_model_both_ways():
    """lab/studies/bench_bitcode.py compares the two bit codings as two models from the loaded
    weights: the loaded model keeps its coding, the sign planes are stored alike and the lower
    planes differently; a model without bit planes is refused."""
    model = _tiny(quantizer="planes", planes=2)
    off, sm = bench_bitcode.bit_codings(model)
    assert not model.quantizer.sign_magnitude and not off.cfg.sign_magnitude and sm.cfg.sign_magnitude
    v = np.random.default_rng(0).integers(0, 256, (9, 30, 42, 3), dtype=np.uint8)
    b_off, b_sm = (tokenize(m, v).segment_bits(0) for m in (off, sm))
    c = model.cfg.bits // model.cfg.planes  # latent channels: plane 0 holds the signs
    np.testing.assert_array_equal(b_sm[:c], b_off[:c])
    assert (b_sm[c:] != b_off[c:]).any()
    assert all(bench_bitcode.coded_bytes(m, v, model.cfg.bits) > 0 for m in (off, sm))
    with pytest.raises(ValueError, match="not a planes model"):
        bench_bitcode.bit_codings(_tiny())


def test_lab_configs_extend_the_package_configs():
    """The experiment configs serialize like the package's and keep their factors; the package's
    own table holds no experiment-only config."""
    from neuralcodec.configs import TokenizerConfig
    import json
    for cfg in LAB_CONFIGS.values():
        assert TokenizerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert (LAB_CONFIGS["paper"].spatial_factor, LAB_CONFIGS["paper"].temporal_factor) == (8, 4)
    assert (LAB_CONFIGS["s4"].spatial_factor, LAB_CONFIGS["t2"].temporal_factor) == (4, 2)
    assert set(CONFIGS) < set(LAB_CONFIGS) and not {"paper", "s4", "t2"} & set(CONFIGS)
