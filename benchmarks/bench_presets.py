"""Encoder presets compared in one run: for each ``mgv encode --preset`` the pooled bpp,
PSNR-RGB and mean MS-SSIM of a few clips at one bit count, and the encode and decode seconds
(every byte of the stream counted; :func:`neuralcodec.evaluate.measure`).

    python -m benchmarks.bench_presets --data ../shared/data/train \\
        --clips sam2_juggle.mp4 intel_car_detection.mp4 intel_asl_walk.mkv --frames 17 --short-side 256 --bits 12

Choose on validation clips cut from ``train/`` (these three are the recipe study's), never on
``eval/``. Run it with nothing else on the machine: it reports wall seconds.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

from neuralcodec.configs import PRESETS
from neuralcodec.evaluate import measure, pooled_psnr
from neuralcodec.options import EncodeOptions
from neuralcodec.streaminfo import stream_info


def bench(model, clips: Sequence[np.ndarray], bits: int, presets: Sequence[str] = tuple(PRESETS)
          ) -> List[Dict]:
    """One row per preset: ``preset``, ``refine``, ``adapt`` (its steps), ``adapted`` (clips whose
    stream carries an ADAPT record: the encoder found the update paid), ``bpp``, ``psnr_rgb``
    (pooled), ``ms_ssim`` (mean over clips, None where frames are too small), ``encode_s``,
    ``decode_s``, ``frames``."""
    rows = []
    for name in presets:
        opts = EncodeOptions.from_preset(name, bits=bits)
        pts = [measure(model, v, opts) for v in clips]
        npix = sum(p.frames * p.width * p.height for p in pts)
        ssim = [p.ms_ssim for p in pts if p.ms_ssim is not None]
        adapted = sum(bool(stream_info(io.BytesIO(p.stream)).adapt) for p in pts)
        rows.append({"preset": name, "refine": opts.refine, "rdo": opts.rdo, "adapt": opts.adapt,
                     "joint": opts.joint, "adapted": adapted, "clips": len(pts),
                     "bpp": sum(8 * p.bytes for p in pts) / npix, "psnr_rgb": pooled_psnr(pts),
                     "ms_ssim": sum(ssim) / len(ssim) if ssim else None,
                     "encode_s": sum(p.encode_s for p in pts), "decode_s": sum(p.decode_s for p in pts),
                     "frames": sum(p.frames for p in pts)})
    return rows


def table(rows: Sequence[Dict]) -> str:
    """The rows as a markdown table, each preset against the first."""
    base = rows[0]
    out = ["| preset | refine steps | adapt steps | joint passes | ADAPT sent | bpp | PSNR-RGB (dB) | MS-SSIM "
           "| encode s | encode vs first | decode s |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ssim = f"{r['ms_ssim']:.4f}" if r["ms_ssim"] is not None else "–"
        out.append(f"| {r['preset']} | {r['refine']} | {r['adapt']} | {r.get('joint', 0)} | {r['adapted']}/{r['clips']} | {r['bpp']:.5f} ({r['bpp'] / base['bpp'] - 1:+.1%}) "
                   f"| {r['psnr_rgb']:.2f} ({r['psnr_rgb'] - base['psnr_rgb']:+.2f}) | {ssim} "
                   f"| {r['encode_s']:.1f} | {r['encode_s'] / base['encode_s']:.0f}× | {r['decode_s']:.1f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/train"))
    ap.add_argument("--clips", nargs="+",
                    default=["sam2_juggle.mp4", "intel_car_detection.mp4", "intel_asl_walk.mkv"])
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--short-side", type=int, default=256)
    ap.add_argument("--bits", type=int, default=12)
    ap.add_argument("--model", default=None, help="registered model [default: the default model]")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    from neuralcodec.video_io import read_rgb
    from neuralcodec.weights import DEFAULT_MODEL, load_model

    torch.set_num_threads(a.threads)
    model = load_model(a.model or DEFAULT_MODEL)
    clips = [read_rgb(a.data / c, a.short_side, a.frames) for c in a.clips]
    rows = bench(model, clips, a.bits)
    print(table(rows))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
