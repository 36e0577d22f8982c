"""Write a benchmark's results: ``results.json`` (every number), ``report.md``, ``headline.md`` and
one RD plot per sequence (``rd_<sequence>.png``)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional

from .runner import BD_METRICS

PLOT_METRICS = {"psnr_yuv": "PSNR-YUV 6:1:1 (dB)", "psnr_rgb": "PSNR-RGB (dB)",
                "ms_ssim_db": "MS-SSIM (dB)", "vmaf": "VMAF", "lpips": "LPIPS (lower is better)"}


def _shown(results: dict, metrics) -> list:
    """The metrics of ``metrics`` this run computed (VMAF and LPIPS are optional)."""
    return [m for m in metrics if results["metrics"].get(m, True)]


def _fmt(v, spec=".2f", na="–") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return na
    return format(v, spec)


def _bd(d: Optional[dict]) -> str:
    if not d or d.get("value") is None:
        return "n/a"
    s = f"{d['value']:+.1f}%"
    if d.get("reason"):
        s += "*"
    return s


def write_json(results: dict, path: Path) -> None:
    Path(path).write_text(json.dumps(results, indent=1, sort_keys=False, default=str))


def headline_table(results: dict) -> str:
    """Markdown table: mean BD-rate per metric vs the anchor, and speed, per codec."""
    anchor = results["anchor"]
    metrics = _shown(results, BD_METRICS)
    head = "| codec | " + " | ".join(f"BD-rate {BD_METRICS[m]}" for m in metrics) + " | encode fps | decode fps |"
    lines = [head, "|" + "---|" * (len(metrics) + 3)]
    for c in results["codecs"]:
        sp = results["speed"].get(c, {})
        cells = ["0% (anchor)" if c == anchor else _bd(results["bd_rate"][m][c]["mean"]) for m in metrics]
        fps = []
        for k in ("encode", "decode"):
            f = _fmt(sp.get(f"{k}_fps"), ".2f")
            if sp.get(f"{k}_fps_reported"):
                f += f" ({sp[f'{k}_fps_reported']:.2f})"
            fps.append(f)
        lines.append(f"| {c} | " + " | ".join(cells) + f" | {fps[0]} | {fps[1]} |")
    return "\n".join(lines)


def plot_sequence(results: dict, seq: str, path: Path) -> None:
    """RD curves of one sequence: bpp (log scale) vs each quality metric, one line per codec."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = _shown(results, PLOT_METRICS)
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    cols = 2 if len(metrics) > 2 else len(metrics)
    rows = (len(metrics) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    for ax, m in zip(axes.flat, metrics):
        for c in results["codecs"]:
            es = sorted((e for e in results["entries"]
                         if e["sequence"] == seq and e["codec"] == c and "error" not in e and m in e),
                        key=lambda e: e["bpp"])
            if not es:
                continue
            style = dict(lw=2.4, color="black") if c == results["anchor"] else dict(lw=1.4)
            if c.startswith("mgv"):
                style = dict(lw=2.4, color="tab:red", ls="--" if "@" in c else "-")  # @: other model
            ax.plot([e["bpp"] for e in es], [e[m] for e in es], marker="o", ms=3.5, label=c, **style)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(PLOT_METRICS[m])
        ax.grid(True, which="both", alpha=0.3)
    info = next(s for s in results["sequences"] if s["name"] == seq)
    fig.suptitle(f"{seq} ({info['width']}x{info['height']}, {info['frames']} frames)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_report(results: dict) -> str:
    """The full markdown report (settings, versions, headline, per-sequence tables and plots)."""
    m = results["machine"]
    cfg = results["config"]
    L: List[str] = ["# Rate-distortion benchmark", ""]
    L += [f"- Date: {results['date']}",
          f"- Machine: {m['cpu']}, {m['cores']} cores, {m['os']}, Python {m['python']}, torch {m['torch']} "
          f"({m['torch_threads']} threads)",
          f"- Command: `{results['command']}`",
          f"- Sequences: {len(results['sequences'])}, first {cfg['frames']} frames, "
          f"area-downscaled to fit {cfg['max_size'][0]}x{cfg['max_size'][1]}" if cfg.get("max_size") else
          f"- Sequences: {len(results['sequences'])}, first {cfg['frames']} frames, native size",
          f"- Anchor for BD-rates: **{results['anchor']}**; FFmpeg: `{results['ffmpeg']['version']}`",
          f"- Points computed in this run: {results['cache']['misses']} (the other {results['cache']['hits']} come "
          "from the cache and keep the speed measured when they were computed; see `date` in results.json)",
          f"- {results['metrics']['lpips_note']}; VMAF "
          f"{'computed (libvmaf, vmaf_v0.6.1)' if results['metrics']['vmaf'] else 'not available'}",
          ""]
    if results["skipped"]:
        L += ["Skipped codecs:", ""] + [f"- {c}: {why}" for c, why in results["skipped"].items()] + [""]
    L += ["## Headline", "",
          f"Mean BD-rate over sequences against {results['anchor']} (negative = fewer bits for the same "
          "quality; n/a = curves without a common quality range; * = caveat, see per-sequence tables). "
          "Speed: frames / wall seconds of the encoder or decoder process over all rate points and "
          "sequences, same machine, same run; in parentheses the tool's own timing without process "
          "start-up and model load, where it reports one. Mean 1-minute load average while measuring: "
          + ", ".join(f"{c} {v['loadavg_1min']:.1f}" for c, v in results["speed"].items()) + ".", "",
          headline_table(results), ""]
    L += ["## Tool versions", "", "| codec | version |", "|---|---|"]
    L += [f"| {c} | {v} |" for c, v in results["versions"].items()] + [""]
    metrics = _shown(results, BD_METRICS)
    for s in results["sequences"]:
        seq = s["name"]
        L += [f"## {seq} ({s['width']}x{s['height']}, {s['frames']} frames, {s['fps']} fps)", "",
              f"![RD curves of {seq}](rd_{seq}.png)", "",
              "| codec | " + " | ".join(f"BD {BD_METRICS[k]}" for k in metrics) + " |",
              "|" + "---|" * (len(metrics) + 1)]
        for c in results["codecs"]:
            if c == results["anchor"]:
                continue
            cells = []
            for k in metrics:
                d = results["bd_rate"][k][c]["per_sequence"][seq]
                cells.append(_bd(d) + (f" ({d['reason']})" if d.get("reason") else ""))
            L.append(f"| {c} | " + " | ".join(cells) + " |")
        L += ["", "| codec | point | bpp | PSNR-YUV | PSNR-RGB | MS-SSIM | VMAF | LPIPS | enc fps | dec fps |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for e in results["entries"]:
            if e["sequence"] != seq:
                continue
            if "error" in e:
                L.append(f"| {e['codec']} | {e['label']} | failed: {e['error'][:80]} | | | | | | | |")
                continue
            L.append(f"| {e['codec']} | {e['label']} | {e['bpp']:.4f} | {_fmt(e.get('psnr_yuv'))} | "
                     f"{_fmt(e.get('psnr_rgb'))} | {_fmt(e.get('ms_ssim'), '.4f')} | {_fmt(e.get('vmaf'))} | "
                     f"{_fmt(e.get('lpips'), '.4f')} | "
                     f"{e['encode_fps']:.1f} | {e['decode_fps']:.1f} |")
        L.append("")
    L += ["## Method", "",
          "- Each input is decoded once (PyAV), cut to the frame limit, area-downscaled (aspect kept, even sizes) "
          "and written as 8-bit yuv420p .y4m (and as 10-bit, `v << 2`, for vvenc); every codec reads these.",
          "- bpp = 8 × size of the whole output file (headers included) / (width × height × frames).",
          "- Every metric is computed by the same code on the decoded frames (10-bit output rounded to 8-bit) "
          "against the 8-bit source: PSNR per frame then averaged (a frame without error counts 100 dB); "
          "PSNR-YUV = (6·Y + U + V)/8; PSNR-RGB after a BT.601 limited-range conversion applied to both sides; "
          "MS-SSIM (pytorch-msssim) on RGB; VMAF with FFmpeg's libvmaf; LPIPS(AlexNet) on RGB, offline weights.",
          "- BD-rate: `bjontegaard` package, PCHIP, over each curve's Pareto front, at least 4 points per "
          "curve, integrated over the common quality range; MS-SSIM in dB (−10·log10(1−MS-SSIM)); "
          "LPIPS negated (lower is better).",
          "- x265 `-ld`: `bframes=0` (low delay, P only); `-ra`: x265's default GOP with B-frames. vvenc: "
          "`-qpa 0`, fixed QP, default random-access GOP, 10-bit. All FFmpeg encoders use their default "
          "threading; mgv runs the PyTorch CPU model (threads as listed above). Encode time includes the "
          "process start (and for mgv the model load).", ""]
    return "\n".join(L)


def write_report(results: dict, out: Path) -> Dict[str, Path]:
    """Write results.json, report.md, headline.md and the plots into ``out`` → their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "report": out / "report.md", "headline": out / "headline.md"}
    write_json(results, paths["json"])
    for s in results["sequences"]:
        p = out / f"rd_{s['name']}.png"
        plot_sequence(results, s["name"], p)
        paths[f"plot:{s['name']}"] = p
    paths["report"].write_text(markdown_report(results))
    m = results["machine"]
    paths["headline"].write_text(
        f"{headline_table(results)}\n\n{len(results['sequences'])} sequences, {results['config']['frames']} "
        f"frames; {m['cpu']} ({m['cores']} cores), {results['date'][:10]}.\n")
    return paths
