"""Encode / decode speed, peak memory and quality of the ``mgv`` command line, old against new.

Every configuration runs the real command line (``python -m neuralcodec encode|decode``) in a
fresh process, one at a time, on the same inputs in one run of this script:

* ``release``: the package at a previous commit (:data:`BASELINE`, checked out into a
  temporary git worktree) — what users had;
* ``conv3d-fp32``: this tree with the inference fast path switched off
  (``neuralcodec.layers.FAST_PATH = False``) in float32 — PyTorch's ``nn.Conv3d``;
* ``fast-fp32``: this tree, fast path (channels-last 2D convolutions), ``--precision float32``;
* ``full-bf16``: this tree, ``--precision auto`` (bfloat16 on CPUs that compute it natively),
  the model's own decoder (``--decoder full``);
* ``fast-decoder``: this tree, bfloat16, the model's fast decoder variant (``--decoder fast``;
  the same stream as ``full-bf16``'s, decoded by a lighter network).

``conv3d-fp32`` and ``fast-fp32`` decode with the model's own decoder too; ``mgv decode`` with no
``--decoder`` runs the registry's default decoder (the report says which).

Inputs: the first frames of ``--input`` (a training clip by default: speed is measured, nothing
is tuned) area-scaled to 640×360, 1280×720 and 1920×1080 and stored losslessly (FFV1), so that
reading the input costs the same for every configuration. Reported per size: encode and decode
fps as the command prints them (model loading included for decode), peak RSS of the process
(``wait4``), stream bytes, and PSNR-RGB of the decoded frames against the input. ``--long S``
adds a 1080p clip of S seconds decoded by the shipped configuration only: peak memory on a long
clip (it must not grow with the clip).

Usage: ``python -m benchmarks.bench_speed [--input CLIP] [--baseline REV] [--long 10]
[--repeat 3] [--report benchmarks/results/speed]``. Run it on an otherwise idle machine: it
reports the load average before and after; ``--repeat`` runs every command several times, the
configurations in turn, and reports the median.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from neuralcodec.evaluate import psnr

ROOT = Path(__file__).resolve().parents[1]
# The release before the decoder variants and the allocator change (2026-12-07, session 17's
# end: mgv-default-v6 decoded by its own decoder). Before it, 65442ca (2026-11-23, the release
# before the inference fast path) was the baseline; its rows stay in the report's history.
BASELINE = "9443b1a"
# name → (frames, width, height) of the speed inputs
SIZES = {"360p": (65, 640, 360), "720p": (17, 1280, 720), "1080p": (9, 1920, 1080)}
# name → (tree: "base" | "this", fast path on, options of both commands, options of decode only)
CONFIGS = {
    "release": ("base", True, [], []),
    "conv3d-fp32": ("this", False, ["--precision", "float32"], ["--decoder", "full"]),
    "fast-fp32": ("this", True, ["--precision", "float32"], ["--decoder", "full"]),
    "full-bf16": ("this", True, [], ["--decoder", "full"]),
    "fast-decoder": ("this", True, [], ["--decoder", "fast"]),
}
# Runs the CLI in a child with the fast path switched as asked (argv[1] = "1" / "0").
_WORKER = ("import sys\nimport neuralcodec.layers as L\nL.FAST_PATH = sys.argv[1] == '1'\n"
           "from neuralcodec.cli import main\nsys.argv = ['mgv'] + sys.argv[2:]\nmain()\n")


def default_input() -> Optional[Path]:
    d = ROOT.parent / "shared" / "data" / "train"
    hits = sorted(d.glob("openh264_street_1080p.*")) if d.is_dir() else []
    return hits[0] if hits else None


def make_input(src: Path, out: Path, frames: int, width: int, height: int) -> np.ndarray:
    """The first ``frames`` frames of ``src`` (looped if shorter) area-scaled to
    ``width``×``height`` → ``out`` (FFV1 .mkv, 25 fps, yuv420p); returns the frames as read back
    from ``out`` (``T×H×W×3`` uint8 RGB: what the codec reads, the reference for PSNR)."""
    import torch
    import torch.nn.functional as F

    from neuralcodec.video_io import VideoMeta, read_frames
    from neuralcodec.video_out import write_video

    got: List[np.ndarray] = []
    for f in read_frames(src):
        got.append(f)
        if len(got) == frames:
            break
    while len(got) < frames:
        got += got[: frames - len(got)]
    x = torch.from_numpy(np.stack(got)).permute(0, 3, 1, 2).float()
    y = F.interpolate(x, size=(height, width), mode="area").round().clamp(0, 255)
    arr = y.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    write_video(out, VideoMeta(width, height, Fraction(25), frames, "yuv420p"), iter(arr), kind="mkv")
    return read_all(out)


def run_measured(tree: Path, fast: bool, args: List[str], threads: int) -> dict:
    """One CLI command in a child process → {"wall": s, "fps": as printed, "rss_mb": the
    child's peak RSS} (``getrusage`` of children is a running maximum, so each command runs
    under a fresh intermediate process)."""
    code = ("import resource, subprocess, sys, json\n"
            "r = subprocess.run(sys.argv[1:], capture_output=True)\n"
            "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
            "print(json.dumps({'rc': r.returncode, 'out': r.stdout.decode(), 'err': r.stderr.decode(),"
            " 'rss_kb': u.ru_maxrss}))\n")
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-c", code, sys.executable, "-c", _WORKER, "1" if fast else "0", *args,
           "-q", "-y"]
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, cwd=tree)
    wall = time.perf_counter() - t
    res = json.loads(r.stdout.decode())
    if res["rc"] != 0:
        raise SystemExit(f"error: {args[0]} failed in {tree}: {res['err'][-400:]}")
    m = re.search(r"\(([\d.]+) fps\)", res["out"])
    return {"wall": round(wall, 2), "fps": float(m.group(1)) if m else float("nan"),
            "rss_mb": round(res["rss_kb"] / 1024)}


def combine(runs: List[dict]) -> dict:
    """Repeated measurements of one command → the median fps (and wall time), the largest
    peak RSS, and every run's fps (``fps_runs``)."""
    fps = sorted(r["fps"] for r in runs)
    walls = sorted(r["wall"] for r in runs)
    return {"wall": walls[len(walls) // 2], "fps": fps[len(fps) // 2],
            "rss_mb": max(r["rss_mb"] for r in runs), "fps_runs": [r["fps"] for r in runs]}


def read_all(path: Path) -> np.ndarray:
    from neuralcodec.video_io import read_frames
    return np.stack(list(read_frames(path)))


def bench(a) -> dict:
    src = Path(a.input) if a.input else default_input()
    if src is None or not src.exists():
        raise SystemExit("error: no input clip (pass --input)")
    work = Path(tempfile.mkdtemp(prefix="mgv-speed-"))
    base = work / "base"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(base),
                    a.baseline], check=True)
    trees = {"base": base, "this": ROOT}
    res: Dict = {"input": str(src), "baseline": a.baseline, "threads": a.threads, "repeat": a.repeat,
                 "load_before": os.getloadavg()[0], "sizes": {}}
    try:
        sizes = {k: v for k, v in SIZES.items() if k in a.sizes}
        for name, (n, w, h) in sizes.items():
            clip = work / f"{name}.mkv"
            ref = make_input(src, clip, n, w, h)
            runs: Dict[str, Dict[str, List[dict]]] = {}
            rows = {}
            for rep in range(a.repeat):  # round robin: a slow spell of the machine hits every config
                for cname, (tree, fast, extra, dextra) in CONFIGS.items():
                    if cname not in a.configs:
                        continue
                    mgv, out = work / f"{name}-{cname}.mgv", work / f"{name}-{cname}.mkv"
                    enc = run_measured(trees[tree], fast, ["encode", str(clip), "-o", str(mgv), *extra],
                                       a.threads)
                    dec = run_measured(trees[tree], fast, ["decode", str(mgv), "-o", str(out), *extra,
                                                           *dextra], a.threads)
                    got = runs.setdefault(cname, {"encode": [], "decode": []})
                    got["encode"].append(enc)
                    got["decode"].append(dec)
                    quality = rows[cname]["psnr"] if rep else round(psnr(ref, read_all(out)), 3)
                    rows[cname] = {"encode": combine(got["encode"]), "decode": combine(got["decode"]),
                                   "bytes": mgv.stat().st_size, "psnr": quality}
                    print(f"{name} {cname} (run {rep + 1}/{a.repeat}): encode {enc['fps']:.2f} fps "
                          f"{enc['rss_mb']} MB, decode {dec['fps']:.2f} fps {dec['rss_mb']} MB, "
                          f"{rows[cname]['psnr']:.2f} dB", flush=True)
            res["sizes"][name] = {"frames": n, "width": w, "height": h, "repeat": a.repeat,
                                  "configs": rows}
        if a.long:
            n = int(25 * a.long)
            clip = work / "long.mkv"
            make_input(src, clip, n, 1920, 1080)
            mgv, out = work / "long.mgv", work / "long.mkv.out.mkv"
            enc = run_measured(ROOT, True, ["encode", str(clip), "-o", str(mgv)], a.threads)
            dec = run_measured(ROOT, True, ["decode", str(mgv), "-o", str(out)], a.threads)
            res["long"] = {"frames": n, "seconds": a.long, "encode": enc, "decode": dec,
                           "threads": a.threads}
            print(f"1080p {a.long:g} s ({n} frames) shipped: encode {enc['fps']:.2f} fps "
                  f"{enc['rss_mb']} MB, decode {dec['fps']:.2f} fps {dec['rss_mb']} MB", flush=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)])
        shutil.rmtree(work, ignore_errors=True)
    res["load_after"] = os.getloadavg()[0]
    return res


def report(res: dict, prefix: Path) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    lines = [
        "# Speed, memory and quality of the command line: release against this tree",
        "",
        f"`python -m benchmarks.bench_speed` — {time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()}-core CPU, torch threads {res['threads']}, one command at a time, "
        f"load average {res['load_before']:.2f} before / {res['load_after']:.2f} after. Input: "
        f"`{Path(res['input']).name}` area-scaled, FFV1. `release` = commit `{res['baseline']}`. "
        "fps as `mgv` prints it (decode includes loading the model; with several runs per "
        "command, configs in turn, the median: `run` says how many), peak RSS of the process, "
        "PSNR-RGB of the decoded frames against the input.",
        "",
        "| size | frames | config | encode fps | encode RSS (MB) | decode fps | decode RSS (MB) | "
        "bytes | PSNR (dB) | encode × release | decode × release | run |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    order = list(SIZES)
    for name, s in sorted(res["sizes"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99):
        rel = s["configs"].get("release")
        for c, r in s["configs"].items():
            ex = (f"{r['encode']['fps'] / rel['encode']['fps']:.2f}×",
                  f"{r['decode']['fps'] / rel['decode']['fps']:.2f}×") if rel else ("", "")
            lines.append(f"| {name} | {s['frames']} | {c} | {r['encode']['fps']:.2f} | "
                         f"{r['encode']['rss_mb']} | {r['decode']['fps']:.2f} | {r['decode']['rss_mb']} | "
                         f"{r['bytes']} | {r['psnr']:.2f} | {ex[0]} | {ex[1]} | {s.get('run', '')}"
                         f"{' (median of %d)' % s['repeat'] if s.get('repeat', 1) > 1 else ''} |")
    if "long" in res:
        lg = res["long"]
        lines += ["", f"Long clip, shipped configuration: 1080p, {lg['seconds']:g} s ({lg['frames']} "
                  f"frames): encode {lg['encode']['fps']:.2f} fps in {lg['encode']['rss_mb']} MB, "
                  f"decode {lg['decode']['fps']:.2f} fps in {lg['decode']['rss_mb']} MB peak RSS "
                  f"(torch threads {lg.get('threads', res['threads'])}, run {lg.get('run', '')})."]
    prefix.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", default=None, help="source clip [default: a 1080p training clip]")
    ap.add_argument("--baseline", default=BASELINE, help="git revision of the release")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES),
                    help="sizes to compare (none: only --long)")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every command this many times (configs in turn) and report the "
                         "median fps (an odd number; these machines are noisy)")
    ap.add_argument("--long", type=float, default=0.0, help="also a 1080p clip of this many seconds")
    ap.add_argument("--report", default=None, help="write PREFIX.md and PREFIX.json")
    ap.add_argument("--merge", default=None,
                    help="a previous PREFIX.json whose sizes / long clip this run did not measure "
                         "are kept in the report (each row says which run it came from)")
    a = ap.parse_args(argv)
    if a.repeat < 1:
        ap.error("--repeat must be >= 1")
    res = bench(a)
    res["run"] = time.strftime("%Y-%m-%d %H:%M")
    for s in res["sizes"].values():
        s["run"] = res["run"]
    if "long" in res:
        res["long"]["run"] = res["run"]
    if a.merge:
        old = json.loads(Path(a.merge).read_text())
        for k, v in old.get("sizes", {}).items():
            res["sizes"].setdefault(k, {**v, "run": v.get("run", old.get("run", "?"))})
        if "long" not in res and "long" in old:
            res["long"] = {**old["long"], "run": old["long"].get("run", old.get("run", "?")),
                           "threads": old["long"].get("threads", old.get("threads"))}
    if a.report:
        report(res, Path(a.report))


if __name__ == "__main__":
    main()
