#!/usr/bin/env python3
"""Quality per unit of compute: train each recipe variant for the same CPU budget and compare.

    python3 -m lab.studies.bench_recipes --data ../shared/data/train --cpu-minutes 8 --parallel 2
    python3 -m lab.studies.bench_recipes --variants control,lr2e-3 --cpu-minutes 1   # a subset
    python3 -m lab.studies.bench_recipes --report-only                              # table + plot

Every variant is one run of the package's training loop (``lab/train/__main__.py``: same seed, same
data, same validation clips) that differs from the control in the fields listed in
:data:`VARIANTS`. The budget is **CPU time** of the training process (``--clock cpu``, one
thread each), so runs that share the machine (``--parallel``) or other work beside them do
not change how much compute a variant gets; the time spent on validation during training is
not counted.

Validation set: whole clips held apart from ``--data`` (:data:`VAL_CLIPS`; never the eval
folder). The training runs see the other clips only (a folder of links under ``OUT/split``).
During training the EMA model is evaluated on the validation clips every ``--eval-every``
steps (full rate) → the PSNR-vs-CPU-minutes curve. After training each variant's EMA model is
measured once, sequentially, with ``--threads`` threads: PSNR-RGB and MS-SSIM at every rate
point, bpp coded by the codec's real entropy coder (:func:`neuralcodec.payload.encode_payload`,
the segment payload of a ``.mgv`` stream), decoder MAC/px and CPU decode fps.

Writes ``OUT/results.json`` and, with ``--report PREFIX``, ``PREFIX.md`` (table) and
``PREFIX.png`` (validation PSNR vs CPU minutes). Finished runs are reused: re-running the
command continues where it stopped.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

import torch

from neuralcodec import container as ct
from neuralcodec.payload import encode_payload
from neuralcodec.model import count_parameters, macs_per_pixel
from lab.train.data import VIDEO_EXTS
from lab.train.evaluate import evaluate, load_eval_clips
from lab.train.loop import load_run

ROOT = Path(__file__).resolve().parents[2]

# Clips of ../shared/data/train held apart as the validation set (one of each kind of footage:
# hand-held natural scene, street surveillance, webcam signing).
VAL_CLIPS = ("sam2_juggle.mp4", "intel_car_detection.mp4", "intel_asl_walk.mkv")

# Fields shared by every run of the study (on top of TrainConfig's defaults): one thread per
# run, CPU-time budget, bf16 autocast (the current recipe), a short warm-up for short budgets.
COMMON = {"cpu-bf16": "true", "threads": "1", "clock": "cpu", "warmup": "50", "seed": "0",
          "log-every": "25", "ckpt-minutes": "2"}

# the study's widest-and-shallowest decoder at about the control's MACs
DEC_WIDE = json.dumps({"dec_channels": [32, 112, 176, 240], "dec_blocks": [1, 1, 1, 1]})
# the first study's winners in one recipe
COMBO = {"arch": DEC_WIDE, "adam-beta2": "0.95", "ema": "0.99", "image-first": "0.4"}

# The control is the current recipe (TrainConfig's defaults + COMMON); each variant lists what
# it changes. Keys are lab/train/__main__.py options without the leading dashes.
VARIANTS: Dict[str, dict] = {
    "control": {"desc": "current recipe: lr 1e-3, 8×9×64² clips, 30% image batches, nested "
                        "2..14, L2+0.1·L1, entropy 0.01, EMA 0.999, β2 0.99", "args": {}},
    "control-seed1": {"desc": "the control with seed 1 (run-to-run noise of this study)",
                      "args": {"seed": "1"}},
    "lr2e-3": {"desc": "peak LR 2e-3", "args": {"lr": "2e-3"}},
    "batch4": {"desc": "batch 4 clips / 8 images (twice the steps)",
               "args": {"batch": "4", "image-batch": "8"}},
    "beta2-0.95": {"desc": "Adam β2 0.95, EMA 0.99", "args": {"adam-beta2": "0.95", "ema": "0.99"}},
    "image-first": {"desc": "first 40% of the budget on image batches, then mixed",
                    "args": {"image-first": "0.4"}},
    "dec-wide": {"desc": "decoder wide and shallow: (32,112,176,240)×(1,1,1,1) blocks",
                 "args": {"arch": DEC_WIDE}},
    "dec-deep": {"desc": "decoder narrow and deep: (32,80,128,160)×(1,3,4,4) blocks",
                 "args": {"arch": json.dumps({"dec_channels": [32, 80, 128, 160],
                                              "dec_blocks": [1, 3, 4, 4]})}},
    "k32": {"desc": "K = 32 bits, nested 2..24", "args": {
        "arch": json.dumps({"bits": 32}), "nested-bits": "2,4,6,10,14,18,24"}},
    "t2": {"desc": "temporal factor 2 (2× the tokens per second)", "args": {
        "arch": json.dumps({"temporal_down": [False, True, False]})}},
    "entropy-0.003": {"desc": "entropy penalty 0.003 (from 0.01)", "args": {"entropy": "0.003"}},
    "l1": {"desc": "L1 loss only (no MSE)", "args": {"mse": "0", "l1": "1.0"}},
    "fp32": {"desc": "float32 (no bf16 autocast)", "args": {"cpu-bf16": "false"}},
    "rate-0.01": {"desc": "rate term 0.01 (LFQ's marginal bit rate; about cancels the entropy "
                          "penalty's codebook-entropy half)", "args": {"rate": "0.01"}},
    "rate-0.01-seed1": {"desc": "rate term 0.01 with seed 1", "args": {"rate": "0.01", "seed": "1"}},
    "rate-0.005": {"desc": "rate term 0.005", "args": {"rate": "0.005"}},
    "rate-0.03": {"desc": "rate term 0.03 (bits that carry little pushed to a constant)",
                  "args": {"rate": "0.03"}},
    "combo": {"desc": "the winners together: dec-wide + Adam β2 0.95 / EMA 0.99 + image-first 0.4",
              "args": COMBO},
    "combo-rate": {"desc": "combo + rate term 0.01", "args": {**COMBO, "rate": "0.01"}},
}


def make_split(data: Path, out: Path) -> tuple:
    """Folders of links ``out/train`` (every video of ``data`` but VAL_CLIPS) and ``out/val``."""
    tr, va = out / "train", out / "val"
    for d in (tr, va):
        d.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in data.iterdir() if p.suffix.lower() in VIDEO_EXTS)
    missing = [v for v in VAL_CLIPS if v not in names]
    if missing:
        sys.exit(f"error: validation clips missing from {data}: {', '.join(missing)}")
    for n in names:
        link = (va if n in VAL_CLIPS else tr) / n
        if not link.exists():
            link.symlink_to((data / n).resolve())
    return tr, va


def run_variant(name: str, a, tr: Path, va: Path) -> Path:
    """Train one variant (resuming a stopped run; a finished one is left alone) → run folder."""
    out = Path(a.out) / name
    done_file = out / "done"
    if done_file.exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    args = {**COMMON, "data": str(tr), "out": str(out), "minutes": str(a.cpu_minutes),
            "eval-dir": str(va), "eval-every": str(a.eval_every), "eval-frames": "17",
            "eval-short-side": str(a.val_short_side), "eval-bits": str(VARIANT_BITS),
            "cache": a.cache, **VARIANTS[name]["args"]}
    cmd = [sys.executable, "-m", "lab.train"]
    for k, v in args.items():
        cmd += [f"--{k}", v]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t = time.time()
    with open(out / "stdout.log", "a") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if rc != 0:
        raise SystemExit(f"error: variant {name} failed (exit {rc}); see {out / 'stdout.log'}")
    done_file.write_text(f"{time.time() - t:.0f}\n")
    print(f"[{name}] trained in {(time.time() - t) / 60:.1f} wall-min", flush=True)
    return out


# the coded rate (bits per pixel) at which the report compares every variant's PSNR
EQUAL_BPP = 0.003


def psnr_at_bpp(rates, bpp: float):
    """PSNR at coded rate ``bpp`` on a variant's curve (``rates``: dicts with "coded_bpp" and
    "psnr"), linear in log bpp between the nearest points below and above; None outside."""
    pts = sorted((x["coded_bpp"], x["psnr"]) for x in rates if x["coded_bpp"] > 0)
    for (b0, p0), (b1, p1) in zip(pts, pts[1:]):
        if b0 <= bpp <= b1:
            f = 0.0 if b1 == b0 else (math.log(bpp) - math.log(b0)) / (math.log(b1) - math.log(b0))
            return p0 + f * (p1 - p0)
    return None


# rate points measured at the end (leading bits kept; the model's K is always added)
RATES = (2, 6, 10, 14)
# rates evaluated during training: the full rate only ("" → the loop adds K)
VARIANT_BITS = ""


@torch.no_grad()
def decode_fps(model, clip, reps: int = 2) -> float:
    """CPU decode speed (frames/s) of ``model`` on ``clip`` at full rate, after one warm-up."""
    codes = model.encode(clip.video)
    model.decode(codes)
    t0 = time.perf_counter()
    for _ in range(reps):
        model.decode(codes)
    return reps * clip.video.shape[2] / (time.perf_counter() - t0)


@torch.no_grad()
def measure(name: str, run: Path, clips, threads: int) -> dict:
    """Final measurements of one finished run (EMA weights)."""
    torch.set_num_threads(threads)
    model = load_run(run)
    k = model.cfg.bits
    rates = sorted({b for b in RATES if b < k} | {k})
    rows = {r["bits"]: r for r in evaluate(model, clips, rates)}
    coded = {b: 0 for b in rates}
    npix = 0
    for c in clips:
        codes = model.encode(c.video)
        _, _, t, h, w = c.video.shape
        npix += t * h * w
        for b in rates:
            _, payload = encode_payload(codes[:, :b], ct.ENTROPY_CONTEXT)
            coded[b] += 8 * len(payload)
    fps = decode_fps(model, clips[0])
    with open(run / "log.csv", newline="") as f:
        log = list(csv.DictReader(f))
    steps = int(log[-1]["step"]) if log else model.step
    minutes = model.elapsed / 60
    return {
        "variant": name, "desc": VARIANTS.get(name, {}).get("desc", ""), "bits": k,
        "params": count_parameters(model), "dec_macs_px": macs_per_pixel(model)["decoder"],
        "enc_macs_px": macs_per_pixel(model)["encoder"],
        "steps": steps, "cpu_minutes": minutes, "steps_per_cpu_min": steps / max(minutes, 1e-9),
        "decode_fps": fps, "decode_size": list(clips[0].video.shape[-2:]),
        "rates": [{"bits": b, "psnr": rows[b]["psnr"], "ms_ssim": rows[b]["ms_ssim"],
                   "coded_bpp": coded[b] / npix, "raw_bpp": rows[b]["bpp"]} for b in rates],
        "curve": curve(run),
    }


def curve(run: Path) -> List[list]:
    """[(CPU minutes, validation PSNR at full rate)] from the run's eval.csv and log.csv."""
    try:
        with open(run / "eval.csv", newline="") as f:
            ev = list(csv.DictReader(f))
    except OSError:
        return []
    k = max((int(r["bits"]) for r in ev), default=0)
    return [[float(r["minutes"]), float(r["psnr"])] for r in ev if int(r["bits"]) == k]


def write_report(results: List[dict], prefix: Path, a) -> None:
    """Markdown table + PNG curve."""
    ctrl = next((r for r in results if r["variant"] == "control"), None)

    def top(r):
        return r["rates"][-1]

    def at(r, b):
        return next((x for x in r["rates"] if x["bits"] == b), None)

    def cell_at_bpp(r):
        v = psnr_at_bpp(r["rates"], EQUAL_BPP)
        return f"{v:.2f}" if v is not None else "–"

    lines = [
        "# Recipe study: validation quality per CPU budget",
        "",
        f"Each variant: one run of `lab/train/__main__.py` from scratch for **{a.cpu_minutes:g} CPU-minutes** "
        "(process CPU time, 1 thread, bf16 autocast unless noted, seed 0, 50 warm-up steps), trained "
        f"on `../shared/data/train` minus the validation clips ({', '.join(VAL_CLIPS)}); EMA "
        f"weights measured on the first 17 frames of those clips at short side {a.val_short_side} px "
        "(never `eval/`). PSNR-RGB over all pixels; MS-SSIM mean over frames; bpp = bits of the "
        "context-coded segment payload (the codec's entropy coder) per pixel; decode fps = "
        f"`model.decode` at full rate on the first clip ({a.val_short_side}-px short side, 17 frames), {a.threads} thread(s), measured with nothing else running on that core. Command: "
        f"`python3 -m lab.studies.bench_recipes --cpu-minutes {a.cpu_minutes:g} --parallel {a.parallel}`.",
        "",
        f"PSNR@{EQUAL_BPP} bpp compares the variants at one coded rate (PSNR interpolated over "
        "log bpp between the two rate points around it; – outside a variant's range): the code per "
        "bit, which PSNR at the top rate point does not show.",
        "",
        "| variant | change | steps | steps/CPU-min | dec MAC/px | dec fps | PSNR@2 | PSNR@6 | PSNR@10 "
        f"| PSNR@top | bpp@top | MS-SSIM@top | Δ PSNR@top vs control | PSNR@{EQUAL_BPP} bpp |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(results, key=lambda r: -top(r)["psnr"]):
        cells = []
        for b in (2, 6, 10):
            x = at(r, b)
            cells.append(f"{x['psnr']:.2f}" if x else "–")
        t = top(r)
        d = f"{t['psnr'] - top(ctrl)['psnr']:+.2f}" if ctrl else "–"
        ms = f"{t['ms_ssim']:.3f}" if t["ms_ssim"] is not None else "–"
        lines.append(
            f"| {r['variant']} | {r['desc']} | {r['steps']} | {r['steps_per_cpu_min']:.1f} | "
            f"{r['dec_macs_px'] / 1e3:.0f}k | {r['decode_fps']:.1f} | {' | '.join(cells)} | "
            f"{t['psnr']:.2f} ({t['bits']} b) | {t['coded_bpp']:.4f} | {ms} | {d} | {cell_at_bpp(r)} |")
    lines += ["", "Coded bpp at every rate point:", "",
              "| variant | " + " | ".join(f"bpp@{b}" for b in RATES) + " | bpp@top |",
              "|---|" + "---:|" * (len(RATES) + 1)]
    for r in results:
        cells = [f"{at(r, b)['coded_bpp']:.4f}" if at(r, b) and b != r["bits"] else "–" for b in RATES]
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + f" | {top(r)['coded_bpp']:.4f} |")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".md").write_text("\n".join(lines) + "\n" + (a.notes or ""))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.cm.tab20.colors  # distinct colours for up to 20 variants
    for i, r in enumerate(results):
        c = r["curve"]
        if c:
            ctrl_run = r["variant"] == "control"
            ax.plot([p[0] for p in c], [p[1] for p in c], "o-" if ctrl_run else ".-",
                    label=r["variant"], lw=2.5 if ctrl_run else 1,
                    color="black" if ctrl_run else colors[i % len(colors)])
    ax.set_xlabel("training CPU-minutes (1 thread)")
    ax.set_ylabel("validation PSNR-RGB at full rate (dB, EMA)")
    ax.set_title("Recipe study: validation PSNR vs compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(prefix.with_suffix(".png"), dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/train", help="training videos (never eval/)")
    ap.add_argument("--out", default="runs/recipes", help="folder of the runs")
    ap.add_argument("--cache", default=".cache/frames", help="decoded-frame cache")
    ap.add_argument("--cpu-minutes", type=float, default=8.0, help="training budget per variant")
    ap.add_argument("--parallel", type=int, default=2, help="variants trained at once (1 thread each)")
    ap.add_argument("--variants", default="", help="comma-separated subset (default: all)")
    ap.add_argument("--eval-every", type=int, default=100, help="validation every this many steps")
    ap.add_argument("--val-short-side", type=int, default=256, help="short side of the validation clips")
    ap.add_argument("--threads", type=int, default=2, help="threads of the final measurements")
    ap.add_argument("--report", default="lab/notes/recipes", help="PREFIX of .md/.png ('' = none)")
    ap.add_argument("--notes", default="", help="markdown appended to the report (a file path)")
    ap.add_argument("--report-only", action="store_true", help="no training: measure finished runs")
    ap.add_argument("--refresh-fps", action="store_true",
                    help="measure decode fps again for runs measured before (e.g. on a quiet machine)")
    a = ap.parse_args()
    names = [v for v in a.variants.split(",") if v] or list(VARIANTS)
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        sys.exit(f"error: unknown variants {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    data = Path(a.data)
    if not data.is_dir():
        sys.exit(f"error: {data}: not a folder")
    if a.notes:
        a.notes = Path(a.notes).read_text()
    out = Path(a.out)
    tr, va = make_split(data, out / "split")
    if not a.report_only:
        with ThreadPoolExecutor(max(1, a.parallel)) as ex:
            list(ex.map(lambda n: run_variant(n, a, tr, va), names))
    clips = load_eval_clips(va, 17, a.val_short_side)
    results = []
    res_file = out / "results.json"
    old = {r["variant"]: r for r in json.loads(res_file.read_text())} if res_file.exists() else {}
    for n in names:
        run = out / n
        if not (run / "done").exists():
            print(f"[{n}] not finished, skipped", flush=True)
            continue
        stamp = (run / "checkpoint.pt").stat().st_mtime
        if n in old and old[n].get("stamp") == stamp:
            if a.refresh_fps:
                torch.set_num_threads(a.threads)
                old[n]["decode_fps"] = decode_fps(load_run(run), clips[0])
                print(f"[{n}] decode {old[n]['decode_fps']:.1f} fps", flush=True)
                res_file.write_text(json.dumps(list(old.values()), indent=1))
            results.append(old[n])
            continue
        r = measure(n, run, clips, a.threads)
        r["stamp"] = stamp
        results.append(r)
        t = r["rates"][-1]
        print(f"[{n}] {r['steps']} steps, top {t['psnr']:.2f} dB @ {t['coded_bpp']:.4f} bpp, "
              f"decode {r['decode_fps']:.1f} fps", flush=True)
        old[n] = r
        res_file.write_text(json.dumps(list(old.values()), indent=1))
    if a.report and results:
        write_report(results, Path(a.report), a)
        print(f"wrote {a.report}.md / .png", flush=True)


if __name__ == "__main__":
    main()
