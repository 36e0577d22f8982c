#!/usr/bin/env python3
"""Decode time of an adapted stream against the plain stream of the same clip (issue 32: within 5%).

    nice python -m benchmarks.bench_adapt_decode --inputs CLIP --bits 18 --adapt 100 \\
        --repeat 5 --out benchmarks/results/adapt_decode

For each clip: the plain stream (``mgv encode --bits B``) and the adapted one (``--adapt N``,
the encoder's own decision: a clip whose update does not pay is reported so, without a
ratio), both through the public codec API as ``mgv encode`` runs it; then the two streams are
decoded in turn, ``--repeat`` times each (plain, adapted, plain, …), each decode as ``mgv
decode`` runs it (the model loaded by name from the stream's header, the ADAPT records applied,
every frame decoded to RGB), and the median wall seconds of each are reported with their
ratio. The number of training steps does not change what a decode does (the record's tensors
are the same), so a short adaptation suffices. Run on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

from benchmarks.common import add_clip_options, save, start
from neuralcodec import codec
from neuralcodec.model import for_inference
from neuralcodec.video_io import read_rgb
from neuralcodec.weights import load_model


def decode_s(data: bytes) -> float:
    """Wall seconds of one decode of ``data`` as ``mgv decode`` runs it (model by name)."""
    t0 = time.perf_counter()
    codec.decompress(data)
    return time.perf_counter() - t0


def report(res: dict, out: Path) -> None:
    lines = ["# Decode time of adapted streams (issue 32)", "",
             f"Command: `{res['command']}`; {res['machine']}; {res['date']}. Model {res['model']}. "
             "Median wall seconds of `--repeat` decodes of each stream, the two streams in turn; "
             "each decode loads the model by name and applies the stream's ADAPT records, as `mgv "
             "decode` does.", "",
             "| clip | frames | bits | adapt steps | plain B | adapted B | updates sent | plain decode s | "
             "adapted decode s | adapted / plain |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in res["clips"].items():
        ratio = "–" if r["adapted_s"] is None else f"{r['adapted_s'] / r['plain_s']:.3f}"
        ad = "–" if r["adapted_s"] is None else f"{r['adapted_s']:.2f}"
        lines.append(f"| {name} | {r['frames']} | {r['bits']} | {r['adapt']} | {r['plain_bytes']} | "
                     f"{r['adapted_bytes']} | {r['updates']} | {r['plain_s']:.2f} | {ad} | {ratio} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapt", type=int, default=100, help="adaptation steps of the adapted encode")
    ap.add_argument("--repeat", type=int, default=5, help="decodes of each stream")
    add_clip_options(ap)
    args = ap.parse_args(argv)
    clips, res = start(args)
    res.update(command="python -m benchmarks.bench_adapt_decode " + " ".join(
        argv or __import__("sys").argv[1:]), model="mgv-default-v6")
    model = for_inference(load_model(), "cpu")
    for path in clips:
        frames = read_rgb(path, max_frames=args.frames)
        bits = args.bits[0]
        plain = codec.compress(model, frames, bits=bits)
        buf = io.BytesIO()
        enc = codec.compress_to_file(model, frames, buf, bits=bits, adapt=args.adapt)
        adapted = buf.getvalue()
        a = enc.adaptation or {}
        sent = sum(g["kept"] for g in a.get("groups", [a] if a else []))  # as bench_adapt's report
        times = {"plain": [], "adapted": []}
        for _ in range(args.repeat):
            times["plain"].append(decode_s(plain))
            if sent:
                times["adapted"].append(decode_s(adapted))
        res["clips"][path.name] = {
            "frames": len(frames), "bits": bits, "adapt": args.adapt, "plain_bytes": len(plain),
            "adapted_bytes": len(adapted), "updates": sent, "times": times,
            "plain_s": statistics.median(times["plain"]),
            "adapted_s": statistics.median(times["adapted"]) if sent else None}
        print(path.name, res["clips"][path.name], flush=True)
        save(res, args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
