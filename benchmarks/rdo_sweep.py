#!/usr/bin/env python3
"""Tune the encoder's RDO λ (``mgv encode --rdo``) on the validation clips, never on eval/.

    python -m benchmarks.rdo_sweep --data ../shared/data/train --frames 33 --report benchmarks/results/rdo

Every (bits, λ) point is a real ``.mgv`` stream (:func:`neuralcodec.codec.compress`, headers
included) decoded again (:func:`neuralcodec.codec.decompress`); PSNR-RGB is over all frames
of all validation clips (:data:`benchmarks.bench_recipes.VAL_CLIPS`, the clips the recipe
study holds apart from training), bpp is the streams' bits over their pixels. A point is marked
on the upper convex hull of PSNR over log-bpp when no mix of other points beats it. Writes
``PREFIX.md`` and ``PREFIX.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_recipes import VAL_CLIPS
from neuralcodec import codec
from neuralcodec.configs import DEFAULT_MODEL, DEFAULT_RDO
from neuralcodec.train.data import decode_video_rgb
from neuralcodec.weights import load_model


def hull(points):
    """Indices of the points on the upper convex hull of (log bpp, psnr) up to the best PSNR:
    the operating points no mix of two others beats."""
    xy = [(math.log(b), p) for b, p in points]
    out: list = []
    for i in sorted(range(len(xy)), key=lambda i: xy[i]):
        while len(out) >= 2:
            (ox, oy), (ax, ay), (bx, by) = xy[out[-2]], xy[out[-1]], xy[i]
            if (ax - ox) * (by - oy) - (ay - oy) * (bx - ox) >= 0:
                out.pop()  # out[-1] lies on or below the chord: not on the hull
            else:
                break
        out.append(i)
    best = max(out, key=lambda i: xy[i][1])
    return set(out[:out.index(best) + 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/train"))
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--short-side", type=int, default=256)
    ap.add_argument("--bits", type=int, nargs="+", default=[6, 9, 12, 18])
    ap.add_argument("--lambdas", type=float, nargs="+", default=[0, 0.5, 1, 2, 4])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--report", type=Path, default=Path("benchmarks/results/rdo"))
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite PREFIX.md from PREFIX.json without measuring")
    a = ap.parse_args()
    if a.report_only:
        write_report(json.loads(a.report.with_suffix(".json").read_text()), a)
        return
    torch.set_num_threads(a.threads)
    model = load_model(a.model)
    clips = []
    for name in VAL_CLIPS:
        p = a.data / name
        if not p.exists():
            sys.exit(f"error: validation clip {p} missing")
        clips.append((name, decode_video_rgb(p, a.short_side, max_frames=a.frames)))
    rows = []
    for b in a.bits:
        for lam in a.lambdas:
            nbits = npix = 0
            se = 0.0
            for name, v in clips:
                data = codec.compress(model, v, bits=b, rdo=lam)
                _, out = codec.decompress(data, model=model)
                nbits += 8 * len(data)
                npix += v.shape[0] * v.shape[1] * v.shape[2]
                se += float(np.square(out.astype(np.float64) - v).mean()) * v[..., 0].size
            psnr = 10 * math.log10(255 ** 2 / (se / npix))
            rows.append({"bits": b, "lambda": lam, "bpp": nbits / npix, "psnr_rgb": psnr})
            print(f"{b:2d} bits  λ {lam:<4g}  {nbits / npix:.5f} bpp  {psnr:.3f} dB", flush=True)
    a.report.parent.mkdir(parents=True, exist_ok=True)
    a.report.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    write_report(rows, a)


def write_report(rows, a) -> None:
    """The markdown table of the sweep (``rows``: dicts with bits, lambda, bpp, psnr_rgb)."""
    on = hull([(r["bpp"], r["psnr_rgb"]) for r in rows])
    base = {r["bits"]: r for r in rows if r["lambda"] == 0}
    lines = [f"# Encoder RDO λ sweep ({a.model}, validation clips: {', '.join(VAL_CLIPS)};",
             f"{a.frames} frames, short side {a.short_side}; `python -m benchmarks.rdo_sweep`)", "",
             f"Default λ: {DEFAULT_RDO:g}. ● = on the upper convex hull of PSNR over log bpp.", "",
             "| bits | λ | bpp | PSNR-RGB (dB) | rate vs λ=0 | ΔPSNR vs λ=0 | hull |",
             "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        b0 = base.get(r["bits"])
        dr = f"{100 * (r['bpp'] / b0['bpp'] - 1):+.1f}%" if b0 else ""
        dp = f"{r['psnr_rgb'] - b0['psnr_rgb']:+.3f}" if b0 else ""
        lines.append(f"| {r['bits']} | {r['lambda']:g} | {r['bpp']:.5f} | {r['psnr_rgb']:.3f} | "
                     f"{dr} | {dp} | {'●' if i in on else ''} |")
    a.report.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {a.report.with_suffix('.md')}")


if __name__ == "__main__":
    main()
