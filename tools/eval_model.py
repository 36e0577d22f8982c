#!/usr/bin/env python3
"""Measure a tokenizer on a folder of videos: PSNR (RGB, frames in [0, 255]) at each rate
point and the raw bits per pixel (before entropy coding).

    python tools/eval_model.py --model mgv-default-v1 --data ../shared/data/eval --frames 97

Each clip is coded in independent segments of ``--segment`` frames (as the codec does) at
native resolution, streamed chunk by chunk. Prints a markdown table and writes JSON with --json.
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from neuralcodec.layers import streaming  # noqa: E402
from neuralcodec.quantizer import sign_quantize  # noqa: E402
from neuralcodec.train.data import VIDEO_EXTS, decode_video_rgb  # noqa: E402
from neuralcodec.weights import load_model, load_weights_file  # noqa: E402


def code_segment(model, seg: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """``1×3×T×H×W`` in [-1, 1] (padded) → codes ``1×K×t×h×w``, streamed."""
    with streaming(model):
        parts = [model.encoder(seg[:, :, :1])]
        for s in range(1, seg.shape[2], chunk):
            parts.append(model.encoder(seg[:, :, s:s + chunk]))
    return sign_quantize(torch.cat(parts, dim=2))


def decode_segment(model, codes: torch.Tensor, bits: int, chunk: int = 2) -> torch.Tensor:
    from neuralcodec.model import mask_bits
    codes = mask_bits(codes, bits)
    with streaming(model):
        parts = [model.decoder(codes[:, :, :1])]
        for s in range(1, codes.shape[2], chunk):
            parts.append(model.decoder(codes[:, :, s:s + chunk]))
    return torch.cat(parts, dim=2).clamp(-1, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mgv-default-v1")
    ap.add_argument("--weights", help="a safetensors file instead of a registered model")
    ap.add_argument("--data", default="../shared/data/eval")
    ap.add_argument("--frames", type=int, default=97)
    ap.add_argument("--segment", type=int, default=49)
    ap.add_argument("--bits", type=int, nargs="+", default=[18, 14, 10, 6])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = load_weights_file(Path(a.weights)) if a.weights else load_model(a.model)
    rows = []
    for p in sorted(Path(a.data).iterdir()):
        if p.suffix.lower() not in VIDEO_EXTS:
            continue
        frames = decode_video_rgb(p, max_short_side=100000, max_frames=a.frames)
        t, h, w, _ = frames.shape
        sse = {b: 0.0 for b in a.bits}
        tokens = 0
        t0 = time.time()
        for s in range(0, t, a.segment):
            seg = torch.from_numpy(frames[s:s + a.segment]).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
            n = seg.shape[2]
            codes = code_segment(model, model.pad_video(seg))
            tokens += codes[0, 0].numel()
            for b in a.bits:
                y = decode_segment(model, codes, b)[:, :, :n, :h, :w]
                y8 = ((y + 1) * 127.5).round().clamp(0, 255)
                sse[b] += (y8 - (seg + 1) * 127.5).pow(2).sum().item()
        dt = time.time() - t0
        for b in a.bits:
            mse = sse[b] / (t * h * w * 3)
            rows.append({"clip": p.name, "size": f"{w}x{h}", "frames": t, "bits": b,
                         "psnr_rgb": 10 * np.log10(255 ** 2 / max(mse, 1e-10)),
                         "raw_bpp": tokens * b / (t * h * w), "seconds": dt})
        print(f"{p.name}: {t} frames {w}x{h} in {dt:.1f}s", file=sys.stderr, flush=True)
    print("| clip | size | frames | bits | raw bpp | PSNR-RGB (dB) |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clip']} | {r['size']} | {r['frames']} | {r['bits']} | {r['raw_bpp']:.4f} | {r['psnr_rgb']:.2f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
