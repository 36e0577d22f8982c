"""Effective bandwidth of the LFQ kernels (:mod:`neuralcodec.kernels`) against their PyTorch
reference, on the same device in the same run.

For each latent size (one 640×360 frame up to a batch of 1080p clips, K = 18 bits) and each
operation — ``pack`` (z → payload bytes), ``unpack`` (payload → ±1 codes, same dtype as z) and
``index`` (z → int32 token indices) — reports the median time and the effective bandwidth
``(bytes read + bytes written) / time``; on CUDA also the percentage of the device's memory
bandwidth (peak from a table by device name, else a measured device-to-device copy) and the
speed-up of Triton over the reference. Each Triton result is checked bit for bit against the
reference before it is timed. Markdown table on stdout, progress on stderr, ``--json`` also
writes the results with the tool versions.

    python3 -m benchmarks.bench_kernels                      # CUDA if present, else CPU (reference)
    nice -n 19 env OMP_NUM_THREADS=1 python3 -m benchmarks.bench_kernels --device cpu
    python3 -m benchmarks.bench_kernels --interpret --sizes frame360   # Triton interpreter, CPU
    python3 -m benchmarks.bench_kernels --dtype bfloat16 --json results/kernels.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

# name → B×K×T×H×W latent shape (8× spatial, 4× temporal, 18 bits; 17 frames → 5 latents)
SIZES: Dict[str, tuple] = {
    "frame360": (1, 18, 1, 45, 80),  # one 640×360 latent frame
    "clip360": (1, 18, 5, 45, 80),  # a 17-frame 640×360 clip
    "frame1080": (1, 18, 1, 135, 240),  # one 1920×1080 latent frame
    "clip1080": (1, 18, 5, 135, 240),  # a 17-frame 1080p clip
    "batch1080": (4, 18, 5, 135, 240),  # a batch of four 17-frame 1080p clips
}
# peak DRAM bandwidth (bytes/s) by a substring of torch.cuda.get_device_name(), first match wins
PEAK_BANDWIDTH = [
    ("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100 NVL", 3.9e12), ("H100", 3.35e12),
    ("GH200", 4.0e12), ("B200", 8.0e12), ("A100-SXM4-80GB", 2.039e12), ("A100 80GB", 1.935e12),
    ("A100", 1.555e12), ("L40S", 0.864e12), ("L40", 0.864e12), ("L4", 0.3e12),
    ("A10G", 0.6e12), ("A10", 0.6e12), ("RTX 4090", 1.008e12), ("RTX 3090", 0.936e12),
    ("V100", 0.9e12), ("T4", 0.32e12),
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device, reps: int, min_time: float) -> float:
    """Median seconds per call after a warm-up call; CUDA events on GPU, perf_counter else.
    Each sample repeats ``fn`` until it lasts at least ``min_time`` seconds."""
    fn()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    once = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(min_time / once))
    samples = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3 / inner)
        else:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples)


def peak_bandwidth(device: torch.device, reps: int) -> tuple:
    """(bytes/s, source) of the device memory: table by name, else a measured copy."""
    if device.type != "cuda":
        return None, "n/a (CPU)"
    name = torch.cuda.get_device_name(device)
    for key, bw in PEAK_BANDWIDTH:
        if key in name:
            return bw, f"spec sheet ({key})"
    n = 256 * 2 ** 20
    a = torch.empty(n, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    t = time_fn(lambda: b.copy_(a), device, reps, 0.05)
    return 2 * n / t, "measured device-to-device copy"


def run(args) -> dict:
    from neuralcodec import kernels
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    backends = ["torch"]
    if kernels.triton_available(device) and (device.type == "cuda" or args.interpret):
        backends.append("triton")
    peak, peak_src = peak_bandwidth(device, args.reps)
    rows: List[dict] = []
    for name in args.sizes:
        shape = SIZES[name]
        g = torch.Generator(device="cpu").manual_seed(0)
        z = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
        n, tokens = z.numel(), z.numel() // shape[1]
        nbytes = kernels.packed_size(shape)
        packed = kernels.pack_bits(z, backend="torch")
        traffic = {  # bytes read + written
            "pack": n * z.element_size() + nbytes,
            "unpack": nbytes + n * z.element_size(),
            "index": n * z.element_size() + tokens * 4,
        }
        ops = {
            "pack": lambda be: kernels.pack_bits(z, backend=be),
            "unpack": lambda be: kernels.unpack_bits(packed, shape, dtype=dtype, backend=be),
            "index": lambda be: kernels.token_indices(z, backend=be),
        }
        for op, fn in ops.items():
            ref_out = fn("torch")
            times = {}
            for be in backends:
                if be != "torch" and not torch.equal(fn(be), ref_out):
                    raise SystemExit(f"{op} {name}: {be} output differs from the reference")
                print(f"{name} {op} {be} ...", file=sys.stderr, flush=True)
                times[be] = time_fn(lambda: fn(be), device, args.reps, args.min_time)
            for be, t in times.items():
                bw = traffic[op] / t
                rows.append({
                    "size": name, "shape": list(shape), "op": op, "backend": be,
                    "bytes": traffic[op], "time_s": t, "GBps": bw / 1e9,
                    "pct_peak": 100 * bw / peak if peak else None,
                    "speedup_vs_torch": times["torch"] / t,
                })
    info = {
        "date": datetime.date.today().isoformat(),
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"CPU {platform.processor() or platform.machine()}, "
                        f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}"),
        "peak_bandwidth_GBps": peak / 1e9 if peak else None, "peak_source": peak_src,
        "dtype": args.dtype, "interpret": args.interpret,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "triton": _triton_version()},
    }
    return {"info": info, "rows": rows}


def _triton_version() -> str | None:
    try:
        import triton
        return triton.__version__
    except ImportError:
        return None


def markdown(res: dict) -> str:
    info = res["info"]
    lines = [f"device: {info['device']}; dtype {info['dtype']}; date {info['date']}; "
             f"peak {info['peak_bandwidth_GBps'] or 'n/a'} GB/s ({info['peak_source']})", "",
             "| size | shape | op | backend | time | GB/s | % peak | × torch |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for r in res["rows"]:
        pct = f"{r['pct_peak']:.1f}" if r["pct_peak"] is not None else "–"
        lines.append(f"| {r['size']} | {'×'.join(map(str, r['shape']))} | {r['op']} | "
                     f"{r['backend']} | {r['time_s'] * 1e3:.3f} ms | {r['GBps']:.3g} | {pct} | "
                     f"{r['speedup_vs_torch']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--reps", type=int, default=5, help="timed samples per point (median)")
    p.add_argument("--min-time", type=float, default=0.05, help="seconds per sample, at least")
    p.add_argument("--interpret", action="store_true",
                   help="also time the Triton kernels on CPU under TRITON_INTERPRET=1 (slow)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # kernels are jitted lazily, after this
    res = run(args)
    print(markdown(res))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
