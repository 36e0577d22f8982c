#!/usr/bin/env python3
"""Decoder variants on the same streams: quality and decode time of each (issue 34's quality bar).

    nice python -m benchmarks.bench_decoders --inputs ../shared/data/eval \\
        --out benchmarks/results/decoders_eval

For each clip (full length, native size) and each rate (``--bits``), one stream made by the
plain encoder (``mgv encode --bits b``, the public codec API) is decoded by every decoder of
``--decoders`` (``full``: the model's own decoder; a variant's name, e.g. ``fast``), as ``mgv
decode --decoder D`` decodes it (the model loaded by name from the stream's header, cast for
inference). Reported per point: bytes, PSNR-RGB (pooled MSE), MS-SSIM, decode seconds in this
process (model loading included; a benchmark, not a test: run it alone); per clip, each
variant's worst and mean PSNR-RGB difference against ``full`` over the rate points, and whether
it is within :data:`neuralcodec.weights.DEFAULT_DECODER_DB` at every point (the bar for a
model's ``default_decoder``).

Results go to ``OUT.json`` after every point (a re-run skips the points it has) and ``OUT.md``.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

from benchmarks.common import add_clip_options, save, start
from neuralcodec import codec
from neuralcodec.evaluate import frame_mse, ms_ssim_rgb, psnr_from_mse
from neuralcodec.model import for_inference
from neuralcodec.video_io import read_rgb
from neuralcodec.configs import DEFAULT_MODEL
from neuralcodec.weights import DEFAULT_DECODER_DB, load_model, registry


def decode_point(data: bytes, frames: np.ndarray, decoder: str) -> dict:
    """Decode ``data`` with ``decoder`` → PSNR-RGB, MS-SSIM and seconds against ``frames``."""
    t0 = time.perf_counter()
    _, rec = codec.decompress(data, decoder=decoder)
    dt = time.perf_counter() - t0
    mse = float(frame_mse(frames, rec).mean())
    return {"psnr_rgb": float(psnr_from_mse(mse)), "ms_ssim": ms_ssim_rgb(frames, rec).get("ms_ssim"),
            "decode_s": dt}


def summary(clip: dict, decoders: List[str]) -> Dict[str, dict]:
    """Per variant: PSNR-RGB difference against ``full`` at each rate point → worst, mean,
    and whether every point is within DEFAULT_DECODER_DB."""
    out = {}
    for d in decoders:
        if d == "full":
            continue
        diffs = [p["decoders"][d]["psnr_rgb"] - p["decoders"]["full"]["psnr_rgb"]
                 for p in clip["points"] if d in p["decoders"] and "full" in p["decoders"]]
        if diffs:
            out[d] = {"worst_db": min(diffs), "mean_db": float(np.mean(diffs)),
                      "within": bool(min(diffs) >= -DEFAULT_DECODER_DB)}
    return out


def report(res: dict, out: Path) -> None:
    decs = res["decoders"]
    lines = ["# Decoder variants on the same streams (issue 34)", "",
             f"Command: `{res['command']}`; {res['machine']}; {res['date']}. Model {res['model']}. "
             "One stream per rate point (`mgv encode --bits b`), decoded by each decoder "
             "(`mgv decode --decoder D`). PSNR-RGB pooled over all frames; decode seconds in one "
             "process, model loading included.", ""]
    head = " | ".join(f"{d} PSNR-RGB | {d} MS-SSIM | {d} s" for d in decs)
    for name, clip in res["clips"].items():
        lines += [f"## {name} ({clip['frames']} frames {clip['width']}x{clip['height']})", "",
                  f"| bits | bytes | bpp | {head} |", "|---:|---:|---:|" + "---:|" * (3 * len(decs))]
        for p in sorted(clip["points"], key=lambda p: p["bits"]):
            cells = []
            for d in decs:
                q = p["decoders"].get(d)
                cells += (["", "", ""] if q is None else
                          [f"{q['psnr_rgb']:.2f}", "" if q["ms_ssim"] is None else f"{q['ms_ssim']:.4f}",
                           f"{q['decode_s']:.1f}"])
            lines.append(f"| {p['bits']} | {p['bytes']} | {p['bpp']:.4f} | " + " | ".join(cells) + " |")
        for d, s in summary(clip, decs).items():
            lines += ["", f"`{d}` against `full`: worst {s['worst_db']:+.2f} dB, mean {s['mean_db']:+.2f} dB "
                          f"PSNR-RGB — {'within' if s['within'] else 'NOT within'} {DEFAULT_DECODER_DB} dB "
                          "at every rate point."]
        lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decoders", nargs="+", default=["full", "fast"],
                    help="decoders to compare (full = the model's own; variant names)")
    add_clip_options(ap)
    args = ap.parse_args(argv)
    clips, res = start(args)
    res.update(command="python -m benchmarks.bench_decoders " + " ".join(argv or sys.argv[1:]),
               model=DEFAULT_MODEL, decoders=list(dict.fromkeys(res.get("decoders", []) + args.decoders)))
    model = for_inference(load_model(), "cpu")
    entry = registry().get(DEFAULT_MODEL)
    # which weights were measured: a registry's default_decoder must point at a measured file
    res["variant_sha256"] = {d.name: d.sha256 for d in (entry.decoders if entry else ()) if d.name in res["decoders"]}
    for path in clips:
        frames = read_rgb(path, max_frames=args.frames)
        t, h, w, _ = frames.shape
        clip = res["clips"].setdefault(path.name, {"frames": t, "width": w, "height": h, "points": []})
        for bits in args.bits:
            p = next((q for q in clip["points"] if q["bits"] == bits), None)
            todo = [d for d in args.decoders if p is None or d not in p["decoders"]]
            if not todo:
                continue
            buf = io.BytesIO()  # made again when resumed: the encoder is deterministic
            codec.compress_to_file(model, frames, buf, bits=bits)
            data = buf.getvalue()
            if p is None:
                p = {"bits": bits, "bytes": len(data), "bpp": 8 * len(data) / (t * h * w), "decoders": {}}
                clip["points"].append(p)
            for d in todo:
                p["decoders"][d] = decode_point(data, frames, d)
                print(path.name, bits, d, p["decoders"][d], flush=True)
                clip["summary"] = summary(clip, res["decoders"])
                save(res, args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
