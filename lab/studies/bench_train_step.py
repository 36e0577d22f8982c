#!/usr/bin/env python3
"""Time one training step (forward, loss, backward, Adam) of a tokenizer config, float32 vs
bf16 autocast, on this machine (CPU by default).

    python3 -m lab.studies.bench_train_step [--config default] [--batch 8] [--frames 9] [--crop 64]

Prints the median seconds per step for each mode (after warm-up steps) and the speed-up.
bf16 autocast pays off on CPUs with AVX512-BF16 or AMX (``grep -o 'avx512_bf16\\|amx' /proc/cpuinfo``);
on others it can be slower than float32.
"""
import argparse
import statistics
import time
from contextlib import nullcontext

import torch

from lab.configs import LAB_CONFIGS as CONFIGS
from neuralcodec.model import Tokenizer
from lab.train.losses import LossWeights, reconstruction_loss


def time_steps(model, opt, x, bf16: bool, device: str, steps: int, warmup: int) -> float:
    """Median seconds per training step (the training loop's default losses, LossWeights())."""
    w = LossWeights()
    ctx = torch.autocast(device, dtype=torch.bfloat16) if bf16 else nullcontext()
    times = []
    for i in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with ctx:
            recon, q = model(x)
        loss = reconstruction_loss(w, recon.float(), x) + w.entropy * q.entropy_loss + w.commit * q.commit_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="default", choices=sorted(CONFIGS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = Tokenizer(CONFIGS[a.config]).to(a.device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    x = torch.rand(a.batch, 3, a.frames, a.crop, a.crop, device=a.device) * 2 - 1
    res = {}
    for mode in ("float32", "bf16"):
        res[mode] = time_steps(model, opt, x, mode == "bf16", a.device, a.steps, a.warmup)
    clips = a.batch
    print(f"{a.config} B×C×T×H×W = {a.batch}×3×{a.frames}×{a.crop}×{a.crop}, {a.device}, {a.threads} threads")
    for mode, s in res.items():
        print(f"  {mode:8s} {s:.3f} s/step  {clips / s:.2f} clips/s")
    print(f"  bf16 speed-up {res['float32'] / res['bf16']:.2f}×")


if __name__ == "__main__":
    main()
