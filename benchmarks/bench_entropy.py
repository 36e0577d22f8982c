"""Benchmark of the ``context`` entropy coder against the raw packed bits (``none``).

For every clip in a folder: the first ``--frames`` frames, downscaled to fit ``--max-size``,
are tokenized by a model (one segment) and the LFQ bits ``K×t×h×w`` are coded. Reports bits
with ``none`` and ``context``, the saving, and encode/decode throughput in Mbit of token bits
per second of CPU time (best of ``--reps``, one thread). Results table on stdout (Markdown),
progress on stderr; ``--json`` also writes them with the tool versions.

    nice -n 19 python3 -m benchmarks.bench_entropy --model mgv-default-v2
    nice -n 19 python3 -m benchmarks.bench_entropy --checkpoint /work/runs/v1/checkpoint.pt
    nice -n 19 python3 -m benchmarks.bench_entropy --synthetic     # flip-rate sweep, no model
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

import av
import constriction
import torch

from neuralcodec.entropy import decode_bits, encode_bits


def read_clip(path: Path, frames: int, max_w: int, max_h: int) -> np.ndarray:
    """First ``frames`` frames of a video, downscaled (aspect kept) to fit max_w×max_h →
    uint8 ``T×H×W×3`` RGB."""
    out = []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            w, h = f.width, f.height
            s = min(1.0, max_w / w, max_h / h)
            nw, nh = max(2, int(round(w * s / 2)) * 2), max(2, int(round(h * s / 2)) * 2)
            out.append(f.reformat(width=nw, height=nh, format="rgb24").to_ndarray())
            if len(out) >= frames:
                break
    if not out:
        raise SystemExit(f"{path}: no frames")
    return np.stack(out)


def load(args):
    """→ (model, label)."""
    if args.checkpoint:
        from neuralcodec.configs import CONFIGS
        from neuralcodec.model import Tokenizer
        st = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        model = Tokenizer(CONFIGS[args.config]).eval()
        model.load_state_dict(st["ema"])
        return model, f"training checkpoint {Path(args.checkpoint).name} (EMA, step {st['step']})"
    from neuralcodec.weights import DEFAULT_MODEL, load_model
    name = args.model or DEFAULT_MODEL
    model = load_model(name)
    return model, f"{name} (sha256 {model.sha256[:12]})"


def timed(fn, reps: int):
    best, out = float("inf"), None
    for _ in range(reps):
        t0 = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t0)
    return out, best


def synthetic(flip: float, k=18, t=13, h=45, w=80, seed=0) -> np.ndarray:
    """LFQ-like bits without a model: frame 0 of 2×2 blobs, then every bit flips from frame
    t-1 with probability 4·flip inside a moving box (a quarter of the frame) and flip/4 outside."""
    rng = np.random.default_rng(seed)
    small = rng.random((k, (h + 1) // 2, (w + 1) // 2)) < 0.5
    frames = [np.repeat(np.repeat(small, 2, axis=1), 2, axis=2)[:, :h, :w]]
    yy, xx = np.mgrid[:h, :w]
    for ti in range(1, t):
        moving = (np.abs(yy - h / 2) < h / 4) & (np.abs(xx - (ti * 3) % w) < w / 4)
        frames.append(frames[-1] ^ (rng.random((k, h, w)) < np.where(moving, 4 * flip, flip / 4)))
    return np.stack(frames, axis=1).astype(np.uint8)


def sweep(reps: int) -> None:
    """Saving and speed against the bit flip rate, on synthetic 18×13×45×80 segments."""
    print("| source | flip rate t-1→t | none (bits) | context (bits) | saving | encode Mbit/s | decode Mbit/s |")
    print("|---|---|---|---|---|---|---|")
    cases = [(f"synthetic flip {f}", synthetic(f)) for f in (0.01, 0.03, 0.05, 0.1, 0.2)]
    cases.append(("uniform random", (np.random.default_rng(1).random((18, 13, 45, 80)) < 0.5).astype(np.uint8)))
    for name, bits in cases:
        data, t_enc = timed(lambda: encode_bits(bits), reps)
        _, t_dec = timed(lambda: decode_bits(data, bits.shape), reps)
        n = bits.size
        fr = (bits[:, 1:] != bits[:, :-1]).mean()
        print(f"| {name} | {fr:.3f} | {n:,} | {len(data) * 8:,} | {100 * (1 - len(data) * 8 / n):.1f}% | "
              f"{n / t_enc / 1e6:.1f} | {n / t_dec / 1e6:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="/work/shared/data/eval", help="folder of clips")
    ap.add_argument("--model", default=None, help="registered model name [default: the default model]")
    ap.add_argument("--checkpoint", help="training checkpoint (development numbers only)")
    ap.add_argument("--config", default="default", help="config of --checkpoint")
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--max-size", default="640x360")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--synthetic", action="store_true", help="only the model-free flip-rate sweep")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.synthetic:
        sweep(args.reps)
        return
    max_w, max_h = (int(v) for v in args.max_size.split("x"))
    model, label = load(args)
    rows = []
    for path in sorted(p for p in Path(args.data).iterdir() if p.is_file()):
        print(f"{path.name}: tokenizing", file=sys.stderr, flush=True)
        clip = read_clip(path, args.frames, max_w, max_h)
        x = torch.from_numpy(clip).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]
        bits = (model.encode(x)[0] > 0).numpy().astype(np.uint8)
        data, t_enc = timed(lambda: encode_bits(bits), args.reps)
        out, t_dec = timed(lambda: decode_bits(data, bits.shape), args.reps)
        if not np.array_equal(out, bits):
            raise SystemExit(f"{path.name}: round trip FAILED")
        n = bits.size
        none_bits = -(-n // 8) * 8
        rows.append({
            "clip": path.name, "frames": len(clip), "size": f"{clip.shape[2]}x{clip.shape[1]}",
            "tokens": list(bits.shape), "none_bits": none_bits, "context_bits": len(data) * 8,
            "saving_pct": round(100 * (1 - len(data) * 8 / none_bits), 1),
            "flip_rate": round(float((bits[:, 1:] != bits[:, :-1]).mean()), 4) if bits.shape[1] > 1 else None,
            "encode_mbit_s": round(n / t_enc / 1e6, 1), "decode_mbit_s": round(n / t_dec / 1e6, 1),
        })
        print(f"{path.name}: {rows[-1]}", file=sys.stderr, flush=True)
    tot_none = sum(r["none_bits"] for r in rows)
    tot_ctx = sum(r["context_bits"] for r in rows)
    print(f"Model: {label}; first {args.frames} frames, <= {args.max_size}, one segment per clip; "
          f"throughput = token bits per CPU second, one thread.\n")
    print("| clip | frames | size | K×t×h×w | none (bits) | context (bits) | saving | bit flip rate t-1→t | encode Mbit/s | decode Mbit/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clip']} | {r['frames']} | {r['size']} | {'×'.join(map(str, r['tokens']))} | {r['none_bits']:,} | "
              f"{r['context_bits']:,} | {r['saving_pct']}% | {r['flip_rate']} | {r['encode_mbit_s']} | {r['decode_mbit_s']} |")
    if tot_none:
        print(f"| **all** | | | | {tot_none:,} | {tot_ctx:,} | {100 * (1 - tot_ctx / tot_none):.1f}% | | | |")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": label, "frames": args.frames, "max_size": args.max_size, "rows": rows,
            "versions": {"python": platform.python_version(), "numpy": np.__version__,
                         "constriction": getattr(constriction, "__version__", "0.5"),
                         "torch": torch.__version__, "av": av.__version__},
        }, indent=2))


if __name__ == "__main__":
    main()
