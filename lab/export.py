#!/usr/bin/env python3
"""Export the EMA weights of a training checkpoint into the package registry.

    python -m lab.export runs/default/checkpoint.pt --name mgv-default-v3

The architecture comes from the run's ``train_config.json`` beside the checkpoint (its config
name and ``arch`` overrides); ``--config`` names one for a bare checkpoint. ``--set`` changes
config fields that keep every weight's shape (e.g. ``'{"sign_magnitude": true}'``: the same
weights storing sign-magnitude bit planes); the weights must load into the changed model.

Writes ``neuralcodec/models/NAME.safetensors`` (float16, config in metadata) and registers it
with its sha256 in ``neuralcodec/models/registry.json``.

A decoder-only run (``--train-only decoder`` from a registered model, another decoder shape)
exports as a decoder variant of that model instead: only the decoder's tensors, registered under
the model's entry (``mgv decode --decoder VARIANT``; ``--default`` makes ``auto`` pick it, for a
variant measured within ``neuralcodec.weights.DEFAULT_DECODER_DB`` of the model's own decoder)::

    python -m lab.export runs/fast/checkpoint.pt --decoder-of mgv-default-v6 --variant fast
"""
import argparse
from pathlib import Path

import torch

from lab.configs import LAB_CONFIGS as CONFIGS
from neuralcodec.model import Tokenizer
from lab.train.loop import load_run
from neuralcodec.weights import (MODELS_DIR, load_model, register, register_decoder, save_decoder,
                                 save_weights)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--name", help="model name (a full export)")
    ap.add_argument("--decoder-of", default=None, help="registered model whose decoder variant this is")
    ap.add_argument("--variant", default=None, help="the decoder variant's name (with --decoder-of)")
    ap.add_argument("--default", action="store_true", help="make the variant the model's default decoder")
    ap.add_argument("--config", default=None, choices=sorted(CONFIGS),
                    help="config of a checkpoint without train_config.json beside it")
    ap.add_argument("--key", default="ema", choices=["ema", "model"])
    ap.add_argument("--set", default="", help="JSON object of config fields to change on export")
    a = ap.parse_args()
    if (a.name is None) == (a.decoder_of is None) or (a.decoder_of is None) != (a.variant is None):
        raise SystemExit("error: give --name, or --decoder-of with --variant")
    run = Path(a.checkpoint).parent
    if a.config is None and (run / "train_config.json").exists():
        model = load_run(run, a.key)
        st = {"step": model.step, "elapsed": model.elapsed}
    else:
        st = torch.load(a.checkpoint, map_location="cpu", weights_only=True)
        model = Tokenizer(CONFIGS[a.config or "default"])
        model.load_state_dict(st[a.key])
    if a.set:
        try:
            cfg = model.cfg.with_json(a.set)
        except (ValueError, TypeError) as e:
            raise SystemExit(f"error: --set {a.set!r}: {e}") from None
        model = model.with_config(cfg)  # strict: the same weights, the same shapes
    if a.decoder_of:
        base = load_model(a.decoder_of)
        file = f"{a.decoder_of}-{a.variant}.safetensors"
        sha = save_decoder(model, MODELS_DIR / file, base, a.variant)
        register_decoder(a.decoder_of, a.variant, file, sha, default=a.default)
        print(f"exported decoder {a.variant} of {a.decoder_of}: step {st['step']}, "
              f"{st['elapsed'] / 60:.1f} min, sha256 {sha}")
        return
    file = f"{a.name}.safetensors"
    sha = save_weights(model, MODELS_DIR / file, a.name)
    register(a.name, file, sha)
    print(f"exported {a.name}: step {st['step']}, {st['elapsed'] / 60:.1f} min, sha256 {sha}")


if __name__ == "__main__":
    main()
