import copy
import os

# Triton kernels run in the interpreter on machines without a GPU (CI has none).
os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from neuralcodec import weights  # noqa: E402
from neuralcodec.configs import CONFIGS  # noqa: E402
from neuralcodec.model import Tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def make_tiny(tmp_path_factory):
    """→ ``make(perturb=0.0)``: a tiny model (seed 0, every parameter plus ``perturb``·N(0, 1)
    noise so that AdaGN's zero init does not hide the codes) saved and reloaded through the
    real weights path, named "tiny-test" with its sha256."""
    def make(perturb: float = 0.0) -> Tokenizer:
        torch.manual_seed(0)
        m = Tokenizer(CONFIGS["tiny"])
        if perturb:
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(perturb * torch.randn_like(p))
        path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
        sha = weights.save_weights(m, path, "tiny-test")
        return weights.load_weights_file(path, sha, name="tiny-test")
    return make


# The unperturbed tiny model, and a CLI runner that resolves every model name to it
# (test modules may define their own variants).
@pytest.fixture(scope="module")
def tiny(make_tiny):
    return make_tiny()


@pytest.fixture
def runner(tiny, monkeypatch):
    # a fresh copy per load, as the real loader gives (the CLI casts it for inference in place)
    monkeypatch.setattr(weights, "load_model", lambda name=None: copy.deepcopy(tiny))
    return CliRunner()
