#!/usr/bin/env python3
"""Export the EMA weights of a training checkpoint into the package registry.

    python tools/export.py runs/default/checkpoint.pt --name mgv-default-v2

Writes ``neuralcodec/models/NAME.safetensors`` (float16, config in metadata) and registers it
with its sha256 in ``neuralcodec/models/registry.json``.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from neuralcodec.configs import CONFIGS  # noqa: E402
from neuralcodec.model import Tokenizer  # noqa: E402
from neuralcodec.weights import MODELS_DIR, register, save_weights  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--name", required=True)
    ap.add_argument("--config", default="default", choices=sorted(CONFIGS))
    ap.add_argument("--key", default="ema", choices=["ema", "model"])
    a = ap.parse_args()
    st = torch.load(a.checkpoint, map_location="cpu", weights_only=True)
    model = Tokenizer(CONFIGS[a.config])
    model.load_state_dict(st[a.key])
    file = f"{a.name}.safetensors"
    sha = save_weights(model, MODELS_DIR / file, a.name)
    register(a.name, file, sha)
    print(f"exported {a.name}: step {st['step']}, {st['elapsed'] / 60:.1f} min, sha256 {sha}")


if __name__ == "__main__":
    main()
