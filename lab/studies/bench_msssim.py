"""Session 25 probe: pytorch-msssim's MS-SSIM (forward + backward) on NCHW frames against the same
call on channels-last frames (`neuralcodec.losses.ms_ssim_frames`), in one run, alternating.

    python -m lab.studies.bench_msssim [--repeat 5]

Frames: 17×3×224×224 (one adaptation step's crop window), random in [0, 1]. Prints the median
seconds of each and the largest difference of value and gradient.
"""
import argparse
import statistics
import time

import torch
from pytorch_msssim import ms_ssim

from neuralcodec.losses import ms_ssim_frames


def once(fn, a0, b):
    a = a0.clone().requires_grad_(True)
    t0 = time.perf_counter()
    v = fn(a, b)
    v.backward()
    return time.perf_counter() - t0, float(v), a.grad


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    n = ap.parse_args().repeat
    torch.manual_seed(0)
    a0 = torch.rand(17, 3, 224, 224)
    b = (a0 + 0.1 * torch.randn_like(a0)).clamp(0, 1)
    ways = {"nchw": lambda a, b: ms_ssim(a, b, data_range=1.0, win_size=11),
            "channels_last": lambda a, b: ms_ssim_frames(a, b, 1.0, 11)}
    times = {k: [] for k in ways}
    last = {}
    for _ in range(n + 1):  # the first round warms up
        for k, fn in ways.items():
            s, v, g = once(fn, a0, b)
            times[k].append(s)
            last[k] = (v, g)
    for k in ways:
        print(f"{k}: {statistics.median(times[k][1:]):.3f} s (forward + backward, median of {n})")
    print("value diff", abs(last["nchw"][0] - last["channels_last"][0]),
          "grad max diff", float((last["nchw"][1] - last["channels_last"][1]).abs().max()))


if __name__ == "__main__":
    main()
