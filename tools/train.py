#!/usr/bin/env python3
"""Train a tokenizer on a folder of videos (CPU or GPU).

    python tools/train.py --model default --data ../shared/data/train --out runs/default --minutes 120

Resumes from ``OUT/checkpoint.pt`` when it exists. Export the result with tools/export.py.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neuralcodec.train.loop import TrainConfig, train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = TrainConfig()
    for name in ("model", "data", "out", "cache"):
        ap.add_argument(f"--{name}", default=getattr(d, name))
    for name in ("batch", "frames", "crop", "image_batch", "image_crop", "warmup", "threads", "seed", "short_side", "log_every"):
        ap.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=getattr(d, name))
    for name in ("lr", "minutes", "image_frac", "nested_prob", "ema", "ckpt_minutes"):
        ap.add_argument(f"--{name.replace('_', '-')}", dest=name, type=float, default=getattr(d, name))
    a = ap.parse_args()
    train(TrainConfig(**vars(a)))


if __name__ == "__main__":
    main()
