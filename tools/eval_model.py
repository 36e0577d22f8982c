#!/usr/bin/env python3
"""Measure a model end to end through the codec on a folder of videos: for each rate point
(``--bits``), the real ``.mgv`` size (bits per pixel of the whole stream, headers included)
PSNR-RGB of the decoded frames against the source (8-bit RGB, all frames pooled) and MS-SSIM
(RGB, mean over frames; the RD benchmark's metric, ``benchmarks/rd/metrics.py``).

    python -m tools.eval_model --data ../shared/data/eval --frames 97 [--bits 18 14 10 6 4 2] [--json out.json]

Clips are coded at native resolution, in the codec's default segments, with the codec's
bounded-memory chunking. Prints a markdown table on stdout.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.rd.metrics import ms_ssim_rgb
from neuralcodec import codec
from neuralcodec.video_io import probe
from neuralcodec.train.data import VIDEO_EXTS, decode_video_rgb
from neuralcodec.configs import DEFAULT_RDO, DEFAULT_REFINE
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
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = load_model(a.model)
    rows = []
    for p in sorted(Path(a.data).iterdir()):
        if p.suffix.lower() not in VIDEO_EXTS:
            continue
        if a.clips and not any(p.name.startswith(c) for c in a.clips):
            continue
        src = decode_video_rgb(p, max_short_side=a.max_short_side or 100000, max_frames=a.frames)
        fps = probe(p).fps
        t, h, w, _ = src.shape
        for b in a.bits:
            t0 = time.time()
            data = codec.compress(model, src, bits=b, entropy=a.entropy, fps=fps, rdo=a.rdo,
                                  refine=a.refine)
            t1 = time.time()
            _, rec = codec.decompress(data, model=model)
            t2 = time.time()
            if rec.shape != src.shape:
                raise SystemExit(f"{p.name}: decoded {rec.shape}, expected {src.shape}")
            mse = np.mean((rec.astype(np.float64) - src.astype(np.float64)) ** 2)
            rows.append({"clip": p.name, "size": f"{w}x{h}", "frames": t, "bits": b,
                         "rdo": a.rdo, "refine": a.refine,
                         "bytes": len(data), "bpp": len(data) * 8 / (t * h * w),
                         "raw_bpp": b / model.cfg.spatial_factor ** 2 * model.latent_frames(t) / t,
                         "psnr_rgb": float(10 * np.log10(255 ** 2 / max(mse, 1e-10))),
                         **ms_ssim_rgb(src, rec),
                         "encode_fps": t / (t1 - t0), "decode_fps": t / (t2 - t1)})
            r = rows[-1]
            print(f"{p.name} bits={b}: {r['bpp']:.4f} bpp, {r['psnr_rgb']:.2f} dB, MS-SSIM {r.get('ms_ssim', float('nan')):.4f}, "
                  f"enc {r['encode_fps']:.2f} fps, dec {r['decode_fps']:.2f} fps", file=sys.stderr, flush=True)
    print(f"model {a.model}\n\n| clip | size | frames | bits | bytes | bpp (.mgv) | raw bpp | PSNR-RGB (dB) | MS-SSIM |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clip']} | {r['size']} | {r['frames']} | {r['bits']} | {r['bytes']} | {r['bpp']:.4f} "
              f"| {r['raw_bpp']:.4f} | {r['psnr_rgb']:.2f} | {r.get('ms_ssim', float('nan')):.4f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
