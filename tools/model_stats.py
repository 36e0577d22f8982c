#!/usr/bin/env python3
"""Print parameter count, MACs per pixel, and measured training / inference throughput
(pixels per second) of each tokenizer config on this machine.

    python -m tools.model_stats [--configs default p6 tiny] [--frames 9] [--size 64] [--batch 2]
"""
import argparse
import time

import torch

from neuralcodec.configs import CONFIGS
from neuralcodec.model import Tokenizer, count_parameters, macs_per_pixel


def timed(fn, reps: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["tiny", "default", "p6"])
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"{'config':8} {'params':>10} {'enc MAC/px':>11} {'dec MAC/px':>11} {'train px/s':>11} {'infer px/s':>11}")
    for name in a.configs:
        m = Tokenizer(CONFIGS[name])
        macs = macs_per_pixel(m, frames=a.frames, size=a.size)
        x = torch.rand(a.batch, 3, a.frames, a.size, a.size) * 2 - 1
        opt = torch.optim.Adam(m.parameters(), 1e-4)

        def step():
            y, q = m(x)
            loss = (y - x).pow(2).mean() + 0.01 * q.entropy_loss + 0.25 * q.commit_loss
            opt.zero_grad()
            loss.backward()
            opt.step()

        m.train()
        t_train = timed(step, a.reps)
        m.eval()

        def infer():
            with torch.no_grad():
                m.decode(m.encode(x))

        t_inf = timed(infer, a.reps)
        px = x[:, 0].numel()
        print(f"{name:8} {count_parameters(m):>10,} {macs['encoder']:>11,.0f} {macs['decoder']:>11,.0f} "
              f"{px / t_train:>11,.0f} {px / t_inf:>11,.0f}", flush=True)


if __name__ == "__main__":
    main()
