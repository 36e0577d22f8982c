#!/usr/bin/env python3
"""Decoder adaptation measured on whole clips, every byte counted (issue 32's done-when).

    nice python -m benchmarks.bench_adapt --inputs ../shared/data/eval --adapt 200 \\
        --out benchmarks/results/adapt_eval

For each clip (full length, native size) and each rate (``--bits``): the plain encoder
(``mgv encode --bits b``) and the same encode with ``--adapt N`` (the encoder fits the decoder
to the clip and sends the change when it pays), both through the public codec API exactly as
``mgv encode`` / ``mgv decode`` run them (the model loaded by name and cast for inference; the
decoder loads it again from the stream's header). Reported per rate point: the stream's bytes
(the ADAPT record included), PSNR-RGB (pooled MSE), MS-SSIM, encode and decode seconds, the
encoder's decision; per clip: BD-rate and ΔPSNR of the adapted curve against the plain one
(:func:`benchmarks.rd.bdrate.bd_rate`, PCHIP) and the PSNR gain at each plain point's rate (the
adapted curve there, linear in log rate; the issue's bar is at 18 bits).

Results go to ``OUT.json`` after every point (a re-run skips the points it has) and ``OUT.md``.
"""
from __future__ import annotations

import argparse
import io
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from benchmarks.common import add_clip_options, save, start
from benchmarks.rd.bdrate import bd_rate
from neuralcodec import codec
from neuralcodec.evaluate import frame_mse, ms_ssim_rgb, psnr_from_mse
from neuralcodec.model import for_inference
from neuralcodec.video_io import read_rgb
from neuralcodec.weights import load_model


def point(model, frames: np.ndarray, bits: int, adapt: int, decoder=None, refine: int = 0,
          joint: int = 0) -> dict:
    """Encode and decode ``frames`` at ``bits`` with ``adapt`` steps, or ``joint`` passes (and
    ``refine`` refinement steps) → the measurements (``decoder``: the model the decode uses; None
    loads the stream's model by name, as ``mgv decode`` does)."""
    t0 = time.perf_counter()
    buf = io.BytesIO()
    res = codec.compress_to_file(model, frames, buf, bits=bits, adapt=adapt, refine=refine,
                                 joint=joint)
    t1 = time.perf_counter()
    _, rec = codec.decompress(buf.getvalue(), model=decoder)
    t2 = time.perf_counter()
    mse = float(frame_mse(frames, rec).mean())
    t, h, w, _ = frames.shape
    return {"bits": bits, "adapt": adapt, "joint": joint, "refine": refine, "bytes": len(buf.getvalue()),
            "bpp": 8 * len(buf.getvalue()) / (t * h * w), "psnr_rgb": float(psnr_from_mse(mse)),
            "ms_ssim": ms_ssim_rgb(frames, rec).get("ms_ssim"), "encode_s": t1 - t0,
            "decode_s": t2 - t1, "adaptation": res.adaptation}


def at_rate(points: List[dict], bpp: float) -> Optional[float]:
    """PSNR of a curve at ``bpp`` (linear in log rate), None outside it."""
    pts = sorted((p["bpp"], p["psnr_rgb"]) for p in points)
    r = np.log([p[0] for p in pts])
    if not r[0] <= np.log(bpp) <= r[-1]:
        return None
    return float(np.interp(np.log(bpp), r, [p[1] for p in pts]))


def gaps(curve: List[dict], points: List[dict]) -> Dict[str, Optional[float]]:
    """{bits: PSNR of ``curve`` at each of ``points``' rates minus the point's (None outside the
    curve)}, the points in order of bits."""
    out: Dict[str, Optional[float]] = {}
    for p in sorted(points, key=lambda p: p["bits"]):
        got = at_rate(curve, p["bpp"])
        out[str(p["bits"])] = None if got is None else got - p["psnr_rgb"]
    return out


def fitted(p: dict) -> bool:
    """Whether a point's encoder fitted the decoder (``--adapt`` or ``--joint``)."""
    return bool(p["adapt"] or p.get("joint", 0))


def summary(clip: dict) -> dict:
    plain = [p for p in clip["points"] if not fitted(p)]
    adapted = [p for p in clip["points"] if fitted(p)]
    out: Dict[str, object] = {}
    if len(plain) >= 2 and len(adapted) >= 2:
        def msdb(p):
            return -10 * np.log10(max(1e-10, 1 - p["ms_ssim"])) if p["ms_ssim"] is not None else 0.0
        b = bd_rate([p["bpp"] for p in plain], [p["psnr_rgb"] for p in plain],
                    [p["bpp"] for p in adapted], [p["psnr_rgb"] for p in adapted], min_points=2)
        m = bd_rate([p["bpp"] for p in plain], [msdb(p) for p in plain],
                    [p["bpp"] for p in adapted], [msdb(p) for p in adapted], min_points=2)
        out["bd_rate_psnr"], out["bd_rate_msssim"] = b.value, m.value
        # the adapted curve against each plain point at that point's rate, and each adapted point
        # against the plain curve at its own rate (its record's bytes in it); None outside a curve
        gains = gaps(adapted, plain)
        out["gain_at_plain"] = gains
        out["above_plain"] = {b: None if g is None else -g for b, g in gaps(plain, adapted).items()}
        if "18" in gains:
            out["gain_at_plain_18"] = gains["18"]
    return out


def report(res: dict, out: Path) -> None:
    lines = ["# Decoder adaptation on whole clips (issue 32)", "",
             f"Command: `{res['command']}`; {res['machine']}; {res['date']}. Model {res['model']}; "
             "`adapt` = `mgv encode --adapt N`, `joint` its `--joint N` (both 0: the plain encoder, "
             "`--preset fast`), `refine` its `--refine` (veryslow: joint 25, refine 5). Bytes are the "
             "whole stream, the ADAPT record included; PSNR-RGB pooled over all frames.", ""]
    for name, clip in res["clips"].items():
        lines += [f"## {name} ({clip['frames']} frames {clip['width']}x{clip['height']})", "",
                  "| bits | adapt | joint | refine | bytes | bpp | PSNR-RGB | MS-SSIM | encode s | decode s | update |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for p in sorted(clip["points"], key=lambda p: (p["bits"], p["adapt"], p.get("joint", 0))):
            a = p["adaptation"] or {}
            groups = a.get("groups", [a] if a else [])
            upd = "; ".join(
                (f"segments {g['segments'][0]}–{sum(g['segments']) - 1} " if len(groups) > 1 else "")
                + f"{'sent' if g['kept'] else 'not sent'}: {g.get('candidate', '')} "
                f"{g.get('update_bytes', 0)} B, {g.get('gain_db', 0):+.2f} dB measured"
                f" (needed {g.get('needed_db', 0):+.2f}"
                + (f" at {g['slope_db']:.2f} dB per doubling" if "slope_db" in g else "") + ")"
                for g in groups)
            ms = "" if p["ms_ssim"] is None else f"{p['ms_ssim']:.4f}"
            lines.append(f"| {p['bits']} | {p['adapt']} | {p.get('joint', 0)} | {p.get('refine', 0)} | {p['bytes']} | {p['bpp']:.4f} | "
                         f"{p['psnr_rgb']:.2f} | {ms} | {p['encode_s']:.1f} | {p['decode_s']:.1f} | {upd} |")
        s = summary(clip)
        if s:
            fmt = lambda v, u: "–" if v is None else f"{v:+.1f}{u}" if u == "%" else f"{v:+.2f}{u}"  # noqa: E731
            lines += ["", f"BD-rate of adapted vs plain: PSNR-RGB {fmt(s.get('bd_rate_psnr'), '%')}, "
                          f"MS-SSIM {fmt(s.get('bd_rate_msssim'), '%')}; PSNR gain at the plain 18-bit "
                          f"rate {fmt(s.get('gain_at_plain_18'), ' dB')}; at each plain point's rate: "
                          + ", ".join(f"{b} bits {fmt(g, ' dB')}" for b, g in s.get("gain_at_plain", {}).items())
                          + "; each adapted point against the plain curve at its own rate: "
                          + ", ".join(f"{b} bits {fmt(g, ' dB')}" for b, g in s.get("above_plain", {}).items())
                          + "."]
        lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapt", type=int, default=200, help="steps of the adapted encodes")
    ap.add_argument("--refine", type=int, default=0,
                    help="refinement steps of the adapted encodes (5 with --joint 25: the veryslow preset)")
    ap.add_argument("--joint", type=int, default=0,
                    help="passes of the adapted encodes fitting the update and the codes together "
                         "(instead of --adapt)")
    add_clip_options(ap)
    args = ap.parse_args(argv)
    clips, res = start(args)
    cmd = "python -m benchmarks.bench_adapt " + " ".join(argv or __import__("sys").argv[1:])
    res["commands"] = [c for c in res.get("commands", [res["command"]] if "command" in res else [])
                       if c != cmd] + [cmd]
    res.update(command="; ".join(res["commands"]), model="mgv-default-v6")
    model = for_inference(load_model(), "cpu")
    for path in clips:
        frames = read_rgb(path, max_frames=args.frames)
        t, h, w, _ = frames.shape
        clip = res["clips"].setdefault(path.name, {"frames": t, "width": w, "height": h, "points": []})
        fit = (0, args.joint) if args.joint else (args.adapt, 0)
        for bits in args.bits:
            for steps, joint in ((0, 0), fit):
                refine = args.refine if steps or joint else 0
                if any(p["bits"] == bits and p["adapt"] == steps and p.get("joint", 0) == joint
                       and p.get("refine", 0) == refine for p in clip["points"]):
                    continue
                clip["points"].append(point(model, frames, bits, steps, refine=refine, joint=joint))
                print(path.name, clip["points"][-1], flush=True)
                clip["summary"] = summary(clip)
                save(res, args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
