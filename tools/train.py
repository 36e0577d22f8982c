#!/usr/bin/env python3
"""Train a tokenizer on a folder of videos (CPU or GPU, one or many processes).

    python tools/train.py --model default --data ../shared/data/train --out runs/default --minutes 120
    python tools/train.py ... --workers 4 --stills ../wallpapers --perceptual 0.1 --gan 0.1 --gan-start 20000
    torchrun --nproc_per_node 8 tools/train.py ... --workers 6          # DDP (NCCL on GPU, gloo on CPU)

Resumes from ``OUT/checkpoint.pt`` when it exists; ``--init mgv-default-v1`` (or a .safetensors
path) warm-starts a new run from shipped weights. Export the result with tools/export.py.
"""
import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neuralcodec.train.losses import LossWeights  # noqa: E402
from neuralcodec.train.loop import TrainConfig, train  # noqa: E402


def _ints(s: str):
    return tuple(int(v) for v in s.split(",") if v.strip())


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {s}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = TrainConfig()
    for name in ("model", "data", "out", "cache", "stills", "device", "eval_dir", "init", "arch", "clock"):
        ap.add_argument(f"--{name.replace('_', '-')}", dest=name, default=getattr(d, name))
    for name in ("batch", "frames", "crop", "image_batch", "image_crop", "warmup", "threads", "seed",
                 "short_side", "log_every", "steps", "ckpt_every", "workers", "eval_every",
                 "eval_frames", "eval_short_side", "disc_channels", "disc_layers"):
        ap.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=getattr(d, name))
    for name in ("lr", "minutes", "image_frac", "nested_prob", "ema", "ckpt_minutes", "lr_floor", "clip",
                 "still_frac", "disc_lr", "image_first", "adam_beta2"):
        ap.add_argument(f"--{name.replace('_', '-')}", dest=name, type=float, default=getattr(d, name))
    for name in ("nested_bits", "eval_bits"):
        ap.add_argument(f"--{name.replace('_', '-')}", dest=name, type=_ints, default=getattr(d, name),
                        help="comma-separated bit counts")
    ap.add_argument("--bf16", type=_bool, default=d.bf16, help="bf16 autocast on CUDA (true/false)")
    ap.add_argument("--cpu-bf16", type=_bool, default=d.cpu_bf16,
                    help="bf16 autocast on CPU too (true/false; fast with AVX512-BF16 or AMX)")
    lw = LossWeights()
    loss_names = []
    for f in dataclasses.fields(LossWeights):
        typ = type(getattr(lw, f.name))
        ap.add_argument(f"--{f.name.replace('_', '-')}", dest=f"loss_{f.name}", type=typ,
                        default=getattr(lw, f.name), help=f"loss weight / setting {f.name}")
        loss_names.append(f.name)
    a = vars(ap.parse_args())
    loss = LossWeights(**{n: a.pop(f"loss_{n}") for n in loss_names})
    train(TrainConfig(loss=loss, **a))


if __name__ == "__main__":
    main()
