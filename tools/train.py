#!/usr/bin/env python3
"""Train a tokenizer on a folder of videos (CPU or GPU, one or many processes).

    python tools/train.py --model default --data ../shared/data/train --out runs/default --minutes 120
    python tools/train.py ... --workers 4 --stills ../wallpapers --perceptual 0.1 --gan 0.1 --gan-start 20000
    torchrun --nproc_per_node 8 tools/train.py ... --workers 6          # DDP (NCCL on GPU, gloo on CPU)

Resumes from ``OUT/checkpoint.pt`` when it exists; ``--init mgv-default-v1`` (or a .safetensors
path) warm-starts a new run from shipped weights. Export the result with tools/export.py.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neuralcodec.train.args import parse_train_args  # noqa: E402
from neuralcodec.train.loop import train  # noqa: E402


def main() -> None:
    train(parse_train_args(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))


if __name__ == "__main__":
    main()
