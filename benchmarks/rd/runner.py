"""Run every (sequence, codec, rate point), measure it, and compute BD-rates.

Flow for one point (skipped when the cache holds a result with the same key)::

    source.y4m (or source10.y4m) ──encode──▶ bitstream ──decode──▶ decoded YUV
        │                          (timed)       │ bytes          (timed)  │ to 8-bit
        └──────────────── reference ─────────────┴──▶ metrics ◀────────────┘
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from neuralcodec.errors import InputError

from . import metrics as M
from .bdrate import BDResult, bd_rate, mean_bd
from .cache import ResultCache
from .codecs import ANCHOR, DEFAULT_CODECS, Codec, ffmpeg_capabilities, ffmpeg_exe, make_codec
from .source import Source, find_inputs, prepare_source
from .y4m import YUVVideo, read_y4m, write_y4m

# Quality metrics that get a BD-rate, with their display names.
BD_METRICS = {"psnr_yuv": "PSNR-YUV", "psnr_rgb": "PSNR-RGB", "ms_ssim_db": "MS-SSIM (dB)", "vmaf": "VMAF",
              "lpips": "LPIPS"}
LOWER_IS_BETTER = {"lpips"}  # BD-rate integrates these negated, so that higher is better for all


@dataclass
class BenchConfig:
    """Settings of one benchmark run."""

    inputs: List[str]  # video files and/or folders of videos
    out: Path = Path("benchmarks/results")  # report, JSON, plots and cache/ go here
    work: Path = Path("benchmarks/.work")  # raw sources, bitstreams, decoded frames (scratch)
    frames: int = 33  # frames per sequence (from the start)
    max_size: Optional[Tuple[int, int]] = (640, 360)  # fit inside this box (area downscale), None = native
    codecs: Sequence = DEFAULT_CODECS  # codec names (see codecs.make_codec) or Codec instances
    anchor: str = ANCHOR  # BD-rate reference codec
    quick: bool = False  # 4 rate points per FFmpeg codec instead of 6
    use_cache: bool = True  # reuse cached results whose key matches
    vmaf: bool = True  # compute VMAF when FFmpeg has libvmaf
    lpips: bool = True  # compute LPIPS when its weights load offline
    keep_decoded: bool = False  # keep decoded frames in the work dir (large)
    command: str = ""  # the command line, recorded in the report

    def __post_init__(self):
        if self.frames < 1:
            raise InputError(f"frames must be >= 1, got {self.frames}")
        names = [c if isinstance(c, str) else c.name for c in self.codecs]
        if self.anchor not in names:
            raise InputError(f"anchor {self.anchor} is not among the codecs {names}")


def machine_info() -> Dict[str, object]:
    """CPU, cores, OS, Python and library versions of this machine."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "os": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "")}


def read_raw_yuv420(path: Path, width: int, height: int, pix_fmt: str, fps) -> YUVVideo:
    """Raw planar ``yuv420p`` / ``yuv420p10le`` file → :class:`YUVVideo`."""
    depth = 10 if pix_fmt == "yuv420p10le" else 8
    dtype = np.uint8 if depth == 8 else np.dtype("<u2")
    cw, ch = width // 2, height // 2
    n = width * height + 2 * cw * ch
    data = np.fromfile(path, dtype=dtype)
    if data.size == 0 or data.size % n:
        raise InputError(f"{path}: {data.size} samples is not a whole number of {width}x{height} frames")
    f = data.reshape(-1, n)
    y = f[:, : width * height].reshape(-1, height, width)
    u = f[:, width * height: width * height + cw * ch].reshape(-1, ch, cw)
    v = f[:, width * height + cw * ch:].reshape(-1, ch, cw)
    return YUVVideo(y, u, v, fps, depth)


def _run_timed(cmd: List[str], env: Optional[Dict[str, str]] = None) -> Tuple[float, str]:
    """Run ``cmd`` (no shell) → (wall seconds, stdout); raises RuntimeError with stderr's tail on failure."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"exit {r.returncode}: {' | '.join(tail)}")
    return dt, r.stdout


def _reported_seconds(stdout: str) -> Optional[float]:
    """The codec's own timing from its summary line (``…, 1.39 s (6.48 fps)``, as ``mgv`` prints), if any."""
    m = re.search(r"([0-9.]+) s \([0-9.]+ fps\)", stdout)
    return float(m.group(1)) if m else None


def run_point(codec: Codec, src: Source, ref: YUVVideo, point, work: Path, cfg: BenchConfig,
              ffmpeg: Optional[str]) -> dict:
    """Encode, decode and measure one rate point → result dict (``error`` set on failure)."""
    d = Path(work) / src.name / codec.name
    d.mkdir(parents=True, exist_ok=True)
    label = codec.point_label(point)
    bs = d / f"{label}.{codec.ext}"
    dec_path = d / (f"{label}.dec.y4m" if codec.decoded_pix_fmt == "y4m" else f"{label}.dec.yuv")
    dec8 = d / f"{label}.dec8.y4m"
    src_path = src.y4m10 if codec.needs_10bit else src.y4m
    enc_cmd = codec.encode_cmd(src_path, bs, point, src.width, src.height)
    dec_cmd = codec.decode_cmd(bs, dec_path)
    res = {"sequence": src.name, "codec": codec.name, "point": point, "label": label,
           "encode_cmd": enc_cmd, "decode_cmd": dec_cmd, "frames": src.frames,
           "width": src.width, "height": src.height,
           "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "loadavg_1min": os.getloadavg()[0]}
    try:
        for p in (bs, dec_path, dec8):
            p.unlink(missing_ok=True)
        enc_s, enc_out = _run_timed(enc_cmd, codec.env())
        dec_s, dec_out = _run_timed(dec_cmd, codec.env())
        for k, out in (("encode", enc_out), ("decode", dec_out)):
            t = _reported_seconds(out)
            if t:  # timing without process start-up and model load, as the tool reports it
                res[f"{k}_fps_reported"] = src.frames / t
        if codec.decoded_pix_fmt == "y4m":
            dec = read_y4m(dec_path)
        else:
            dec = read_raw_yuv420(dec_path, src.width, src.height, codec.decoded_pix_fmt, src.fps)
        dec = dec.to_8bit()
        if (dec.frames, dec.height, dec.width) != (ref.frames, ref.height, ref.width):
            raise InputError(f"decoded {dec.frames} frames of {dec.width}x{dec.height}, "
                             f"expected {ref.frames} of {ref.width}x{ref.height}")
        write_y4m(dec8, YUVVideo(dec.y, dec.u, dec.v, ref.fps, 8))
        nbytes = bs.stat().st_size
        res.update({"bytes": nbytes, "bpp": nbytes * 8 / (src.width * src.height * src.frames),
                    "kbps": nbytes * 8 * float(src.fps) / src.frames / 1000,
                    "encode_s": enc_s, "decode_s": dec_s,
                    "encode_fps": src.frames / enc_s, "decode_fps": src.frames / dec_s})
        res.update(M.all_metrics(ref, dec, ffmpeg=ffmpeg, ref_y4m=src.y4m, dec_y4m=dec8,
                                 use_vmaf=cfg.vmaf, use_lpips=cfg.lpips))
    except (RuntimeError, InputError, OSError) as e:
        res["error"] = str(e)
    finally:
        if not cfg.keep_decoded:
            dec_path.unlink(missing_ok=True)
            dec8.unlink(missing_ok=True)
    return res


def compute_bd(entries: List[dict], sequences: List[str], codecs: List[str], anchor: str) -> dict:
    """BD-rates of every codec vs ``anchor``: ``{metric: {codec: {"per_sequence": {seq: BD}, "mean": BD}}}``."""
    ok = [e for e in entries if "error" not in e]
    out: Dict[str, dict] = {}
    for metric in BD_METRICS:
        out[metric] = {}
        for codec in codecs:
            if codec == anchor:
                continue
            per: Dict[str, BDResult] = {}
            for seq in sequences:
                a = [e for e in ok if e["sequence"] == seq and e["codec"] == anchor and metric in e]
                t = [e for e in ok if e["sequence"] == seq and e["codec"] == codec and metric in e]
                sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
                per[seq] = bd_rate([e["bpp"] for e in a], [sign * e[metric] for e in a],
                                   [e["bpp"] for e in t], [sign * e[metric] for e in t])
            out[metric][codec] = {"per_sequence": {s: r.to_dict() for s, r in per.items()},
                                  "mean": mean_bd(list(per.values())).to_dict()}
    return out


def speed_summary(entries: List[dict], codecs: List[str]) -> Dict[str, dict]:
    """Per codec: total frames / total seconds for encode and decode over all its points."""
    out = {}
    for c in codecs:
        es = [e for e in entries if e["codec"] == c and "error" not in e]
        if es:
            fr = sum(e["frames"] for e in es)
            out[c] = {"encode_fps": fr / sum(e["encode_s"] for e in es),
                      "decode_fps": fr / sum(e["decode_s"] for e in es), "points": len(es),
                      "loadavg_1min": float(np.mean([e["loadavg_1min"] for e in es]))}
            for k in ("encode", "decode"):
                rep = [e for e in es if f"{k}_fps_reported" in e]
                if len(rep) == len(es):  # the tool's own timing (no process start-up / model load)
                    out[c][f"{k}_fps_reported"] = fr / sum(e["frames"] / e[f"{k}_fps_reported"] for e in rep)
    return out


def _portable(cmd: List[str]) -> List[str]:
    """A command line for a cache key: the executable by its name only (its version is keyed apart)."""
    return [Path(cmd[0]).name, *cmd[1:]]


def run_benchmark(cfg: BenchConfig, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> dict:
    """Run the whole benchmark → the results dict that :mod:`.report` writes out."""
    ffmpeg = ffmpeg_exe()
    cap = ffmpeg_capabilities(ffmpeg) if ffmpeg else {"version": "none", "filters": set()}
    codecs, skipped, versions = [], {}, {}
    for name in cfg.codecs:
        c = make_codec(name, quick=cfg.quick, ffmpeg=ffmpeg)
        usable, why = c.available()
        if usable:
            codecs.append(c)
            versions[c.name] = c.version()
        else:
            skipped[c.name] = why
            log(f"skip {c.name}: {why}")
    if cfg.anchor not in versions:
        raise InputError(f"anchor codec {cfg.anchor} is not available: {skipped.get(cfg.anchor)}")
    use_vmaf = cfg.vmaf and "libvmaf" in cap["filters"]
    lpips_ok = bool(cfg.lpips and M.lpips_model() is not None)
    lpips_id = M.lpips_id() if lpips_ok else "off"
    cfg.vmaf, cfg.lpips = use_vmaf, lpips_ok
    cache = ResultCache(Path(cfg.out) / "cache", enabled=cfg.use_cache)
    sources: List[Source] = []
    entries: List[dict] = []
    for path in find_inputs(cfg.inputs):
        src = prepare_source(path, cfg.work, cfg.frames, cfg.max_size)
        sources.append(src)
        log(f"{src.name}: {src.width}x{src.height}, {src.frames} frames")
        ref = read_y4m(src.y4m)
        for c in codecs:
            for point in c.points:
                label = c.point_label(point)
                key_fields = {"source_sha256": src.sha256, "codec": c.name, "version": versions[c.name],
                          "encode_cmd": _portable(c.encode_cmd(Path("{src}"), Path("{out}"), point,
                                                               src.width, src.height)),
                          "decode_cmd": _portable(c.decode_cmd(Path("{in}"), Path("{out}"))), "point": point,
                          "metrics_version": M.METRICS_VERSION, "vmaf": use_vmaf, "lpips": lpips_id}
                r = cache.get(src.name, c.name, label, key_fields)
                if r is not None:
                    r = {**r, "cached": True}
                else:
                    r = run_point(c, src, ref, point, cfg.work, cfg, ffmpeg)
                    if "error" in r:
                        log(f"  {c.name} {label}: FAILED {r['error']}")
                    else:
                        cache.put(src.name, c.name, label, key_fields, r)
                        log(f"  {c.name} {label}: {r['bpp']:.4f} bpp, PSNR-YUV {r['psnr_yuv']:.2f} dB, "
                            f"enc {r['encode_fps']:.1f} fps, dec {r['decode_fps']:.1f} fps")
                entries.append(r)
    names = [c.name for c in codecs]
    seqs = [s.name for s in sources]
    cached = {"hits": cache.hits, "misses": cache.misses}
    log(f"cache: {cache.hits} reused, {cache.misses} computed")
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": cfg.command,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in
                   ((f.name, getattr(cfg, f.name)) for f in fields(cfg)) if k != "codecs"},
        "machine": machine_info(),
        "ffmpeg": {"path": ffmpeg, "version": cap["version"]},
        "versions": versions,
        "skipped": skipped,
        "metrics": {"vmaf": use_vmaf, "lpips": lpips_ok, "lpips_weights": lpips_id,
                    "lpips_note": f"LPIPS computed ({lpips_id})" if lpips_ok else
                    "LPIPS skipped: not requested or its weights are not available offline"},
        "anchor": cfg.anchor,
        "sequences": [s.to_dict() for s in sources],
        "codecs": names,
        "entries": entries,
        "bd_rate": compute_bd(entries, seqs, names, cfg.anchor),
        "speed": speed_summary(entries, names),
        "cache": cached,
    }
