#!/usr/bin/env python3
"""Train a tokenizer on a folder of videos (CPU or GPU, one or many processes).

    python -m lab.train --model default --data ../shared/data/train --out runs/default --minutes 120
    python -m lab.train ... --workers 4 --stills ../wallpapers --perceptual 0.1 --gan 0.1 --gan-start 20000
    torchrun --nproc_per_node 8 -m lab.train ... --workers 6          # DDP (NCCL on GPU, gloo on CPU)

Resumes from ``OUT/checkpoint.pt`` when it exists; ``--init mgv-default-v5`` (or a .safetensors
path) warm-starts a new run from shipped weights. Export the result with python -m lab.export.
"""
import argparse

from lab.train.args import parse_train_args
from lab.train.loop import train


def main() -> None:
    train(parse_train_args(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))


if __name__ == "__main__":
    main()
