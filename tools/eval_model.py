#!/usr/bin/env python3
"""Measure a model end to end through the codec on a folder of videos: for each rate point
(``--bits``), the real ``.mgv`` size (bits per pixel of the whole stream, headers included)
PSNR-RGB of the decoded frames against the source (8-bit RGB, all frames pooled) and MS-SSIM
(RGB, mean over frames), all through :func:`neuralcodec.evaluate.measure`, the path the RD
benchmark's metrics share.

    python -m tools.eval_model --data ../shared/data/eval --frames 97 [--bits 18 14 10 6 4 2] [--json out.json]

Clips are coded at native resolution, in the codec's default segments, with the codec's
bounded-memory chunking. Prints a markdown table on stdout.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

from neuralcodec.configs import DEFAULT_RDO, DEFAULT_REFINE
from neuralcodec.evaluate import KNEE_DB_PER_DOUBLING, knee_bits, measure, pooled_psnr
from neuralcodec.video_io import VIDEO_EXTS, probe, read_rgb
from neuralcodec.weights import DEFAULT_MODEL, load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--data", default="../shared/data/eval")
    ap.add_argument("--frames", type=int, default=97)
    ap.add_argument("--max-short-side", type=int, default=0,
                    help="area-downscale clips to this short side first (0 = native size)")
    ap.add_argument("--bits", type=int, nargs="+", default=[18, 14, 10, 6, 4, 2])
    ap.add_argument("--entropy", default="context", choices=["context", "none"])
    ap.add_argument("--rdo", type=float, default=DEFAULT_RDO,
                    help="encoder RDO λ (mgv encode --rdo; 0 = plain quantization)")
    ap.add_argument("--refine", type=int, default=DEFAULT_REFINE,
                    help="encoder refinement steps per chunk (mgv encode --refine; 0 = off)")
    ap.add_argument("--clips", nargs="+", default=None,
                    help="only the clips whose file names start with these")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--knee", action="store_true",
                    help="also print the model's default rate: the knee of its curve over all "
                         "clips (neuralcodec.evaluate.knee_bits; measure on validation clips, never eval/)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = load_model(a.model)
    rows, points = [], []
    for p in sorted(Path(a.data).iterdir()):
        if p.suffix.lower() not in VIDEO_EXTS:
            continue
        if a.clips and not any(p.name.startswith(c) for c in a.clips):
            continue
        src = read_rgb(p, a.max_short_side, max_frames=a.frames)
        fps = probe(p).fps
        for b in a.bits:
            pt = measure(model, src, bits=b, fps=fps, entropy=a.entropy, rdo=a.rdo, refine=a.refine)
            points.append(pt)
            raw_bpp = b / model.cfg.spatial_factor ** 2 * model.latent_frames(pt.frames) / pt.frames
            rows.append({"clip": p.name, "size": f"{pt.width}x{pt.height}", "rdo": a.rdo, "refine": a.refine,
                         **pt.row(), "raw_bpp": raw_bpp,
                         "encode_fps": pt.frames / pt.encode_s, "decode_fps": pt.frames / pt.decode_s})
            r = rows[-1]
            ssim = r["ms_ssim"] if r["ms_ssim"] is not None else float("nan")
            print(f"{p.name} bits={b}: {r['bpp']:.4f} bpp, {r['psnr_rgb']:.2f} dB, MS-SSIM {ssim:.4f}, "
                  f"enc {r['encode_fps']:.2f} fps, dec {r['decode_fps']:.2f} fps", file=sys.stderr, flush=True)
    print(f"model {a.model}\n\n| clip | size | frames | bits | bytes | bpp (.mgv) | raw bpp | PSNR-RGB (dB) | MS-SSIM |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ssim = r["ms_ssim"] if r["ms_ssim"] is not None else float("nan")
        print(f"| {r['clip']} | {r['size']} | {r['frames']} | {r['bits']} | {r['bytes']} | {r['bpp']:.4f} "
              f"| {r['raw_bpp']:.4f} | {r['psnr_rgb']:.2f} | {ssim:.4f} |")
    if a.knee:
        curve = []
        for b in sorted(set(a.bits)):
            pts = [pt for pt in points if pt.bits == b]
            curve.append((b, sum(pt.bytes for pt in pts), pooled_psnr(pts)))
        print("\nbits | bytes (all clips) | PSNR-RGB pooled (dB)\n---|---|---")
        for b, n, q in curve:
            print(f"{b} | {n} | {q:.3f}")
        print(f"\nknee (>= {KNEE_DB_PER_DOUBLING:g} dB per doubling of bytes): {knee_bits(curve)} bits")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
