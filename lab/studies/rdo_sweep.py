#!/usr/bin/env python3
"""Tune the encoder's RDO λ (``mgv encode --rdo``) and refinement steps (``--refine``) on the
validation clips, never on eval/.

    python -m lab.studies.rdo_sweep --data ../shared/data/train --frames 33 --report lab/notes/rdo
    python -m lab.studies.rdo_sweep --frames 17 --lambdas 2 --refine 0 10 20 --report lab/notes/refine

Every (bits, λ) point is a real ``.mgv`` stream (:func:`neuralcodec.codec.compress`, headers
included) decoded again (:func:`neuralcodec.codec.decompress`); PSNR-RGB is over all frames
of all validation clips (:data:`lab.studies.bench_recipes.VAL_CLIPS`, the clips the recipe
study holds apart from training), bpp is the streams' bits over their pixels. A point is marked
on the upper convex hull of PSNR over log-bpp when no mix of other points beats it. Writes
``PREFIX.md`` and ``PREFIX.json``.
"""
from __future__ import annotations

import argparse
import json
import itertools
import math
import sys
from pathlib import Path

import torch

from lab.studies.bench_recipes import VAL_CLIPS
from neuralcodec.configs import DEFAULT_MODEL, DEFAULT_RDO, DEFAULT_REFINE
from lab.train.data import decode_video_rgb
from neuralcodec.evaluate import measure, pooled_psnr
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
    ap.add_argument("--refine", type=int, nargs="+", default=[0],
                    help="refinement steps per chunk to sweep (mgv encode --refine)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--report", type=Path, default=Path("lab/notes/rdo"))
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
    for b, lam, steps in itertools.product(a.bits, a.lambdas, a.refine):
        pts = [measure(model, v, bits=b, rdo=lam, refine=steps, ssim=False) for _, v in clips]
        npix = sum(p.frames * p.width * p.height for p in pts)
        nbits = sum(8 * p.bytes for p in pts)
        psnr = pooled_psnr(pts)
        rows.append({"bits": b, "lambda": lam, "refine": steps, "bpp": nbits / npix,
                     "psnr_rgb": psnr, "seconds": sum(p.encode_s + p.decode_s for p in pts)})
        print(f"{b:2d} bits  λ {lam:<4g}  refine {steps:<3d} {nbits / npix:.5f} bpp  {psnr:.3f} dB"
              f"  {rows[-1]['seconds']:.0f} s", flush=True)
    a.report.parent.mkdir(parents=True, exist_ok=True)
    a.report.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    write_report(rows, a)


def write_report(rows, a) -> None:
    """The markdown table of the sweep (``rows``: dicts with bits, lambda, refine, bpp,
    psnr_rgb; differences against the first setting swept at the same bits)."""
    on = hull([(r["bpp"], r["psnr_rgb"]) for r in rows])
    base: dict = {}
    for r in rows:
        base.setdefault(r["bits"], r)
    b0 = rows[0]
    ref = f"λ={b0['lambda']:g}, refine {b0.get('refine', 0)}"
    lines = [f"# Encoder sweep: RDO λ and refinement steps ({a.model}, validation clips: "
             f"{', '.join(VAL_CLIPS)};",
             f"{a.frames} frames, short side {a.short_side}; `python -m lab.studies.rdo_sweep`)", "",
             f"Defaults: λ {DEFAULT_RDO:g}, refine {DEFAULT_REFINE}. ● = on the upper convex hull "
             "of PSNR over log bpp. Encode + decode seconds of all clips, 2 threads.", "",
             f"| bits | λ | refine | bpp | PSNR-RGB (dB) | rate vs {ref} | ΔPSNR vs {ref} | s | hull |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        c = base[r["bits"]]
        dr = f"{100 * (r['bpp'] / c['bpp'] - 1):+.1f}%"
        dp = f"{r['psnr_rgb'] - c['psnr_rgb']:+.3f}"
        sec = f"{r['seconds']:.0f}" if "seconds" in r else ""
        lines.append(f"| {r['bits']} | {r['lambda']:g} | {r.get('refine', 0)} | {r['bpp']:.5f} | "
                     f"{r['psnr_rgb']:.3f} | {dr} | {dp} | {sec} | {'●' if i in on else ''} |")
    a.report.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {a.report.with_suffix('.md')}")


if __name__ == "__main__":
    main()
