#!/usr/bin/env python3
"""GPU checks for a borrowed GPU machine, in one device command (they run while a training
started by lab/gpu_train.py goes on, so the timings are taken on a shared GPU):

* the LFQ kernels' effective bandwidth (``benchmarks/bench_kernels.py``: % of HBM peak and
  the ratio to the PyTorch reference) → ``$OUT/kernels.json``;
* encode and decode speed of the codec at 1080p (frames in memory, ``entropy="none"``: no
  file I/O, no range coder) with the peak GPU memory → ``$OUT/checks.json``;
* device agreement: a staged clip encoded on the GPU (``$OUT/gpu.mgv``) and decoded there
  (``$OUT/gpu_frames.npy``); the stream encoded here on the CPU at staging, decoded there
  (``$OUT/cpu_on_gpu_frames.npy``); the GPU encode again with TF32 off (``$OUT/gpu_notf32.mgv``).

    python3 -m lab.gpu_checks stage [--model mgv-default-v2]   # → .gpu_checks/ (clip.npy, cpu.mgv)
    #   device: python3 -m lab.gpu_checks remote                # (call 2 of gpu_train's stage)
    python3 -m lab.gpu_checks verify --from DIR                 # here: tokens equal? frames ±1?

``verify`` decodes the GPU's stream on the CPU and compares: the tokens with the CPU's
(fraction of differing bits), the CPU's frames with the GPU's (max abs difference, share of
values off by more than 1), both directions. Exit status 1 when a check fails.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from neuralcodec.configs import DEFAULT_MODEL

from .gpu_lease import (ROOT, ToolError, check_carry, check_out, gpu_load, hardware, mib,
                       out_dir, read_json, run_main)

PROG = "gpu_checks"
STAGE_DIR = ROOT / ".gpu_checks"
RUN_STATE = Path("/tmp/gpu_run/state.json")  # gpu_train's run on the machine, if any


def load_checked_model(stage: Path, man: dict, device: str):
    """The model of the stage manifest (a staged weights file, else the registered name),
    hash checked, on ``device``."""
    from neuralcodec import weights

    if man.get("weights"):
        m = weights.load_weights_file(stage / man["weights"], man["sha256"], name=man["model"])
    else:
        m = weights.load_model(man["model"])
        if m.sha256 != man["sha256"]:
            raise ToolError(f"model {man['model']} here is not the staged one (sha256 differs)")
    return m.to(device).eval()


def stream_bits(data: bytes):
    """``.mgv`` bytes → the LFQ bits of every segment, concatenated along time
    (``b×t×h×w`` uint8 {0, 1})."""
    import io

    import numpy as np

    from neuralcodec import container as ct
    from neuralcodec.payload import decode_payload

    r = ct.Reader(io.BytesIO(data))
    return np.concatenate([decode_payload(s, s.stored_bits(r.header)) for s in r.segments()], axis=1)


# ---- stage ----------------------------------------------------------------------------------
def do_stage(a) -> int:
    import numpy as np

    from neuralcodec import codec, weights
    from lab.train.data import decode_video_rgb

    dest = Path(a.stage_dir)
    if "eval" in Path(a.clip).resolve().parts:
        raise ToolError(f"{a.clip}: use a training clip, not evaluation footage")
    if dest.exists():
        if not a.force:
            raise ToolError(f"{dest} exists (use --force to replace it)")
        shutil.rmtree(dest)
    models_dir = Path(a.models_dir) if a.models_dir else None
    model = weights.load_model(a.model, models_dir)
    clip = decode_video_rgb(Path(a.clip), a.short_side, max_frames=a.frames)
    dest.mkdir(parents=True)
    try:
        np.save(dest / "clip.npy", clip, allow_pickle=False)
        (dest / "cpu.mgv").write_bytes(codec.compress(model, clip, entropy="none"))
        man = {"format": "neuralcodec-gpu-checks-1", "model": a.model, "sha256": model.sha256,
               "weights": None, "clip": str(a.clip), "frames": int(clip.shape[0]),
               "width": int(clip.shape[2]), "height": int(clip.shape[1])}
        if models_dir is not None:  # not in the package: it travels in the stage folder
            shutil.copyfile(weights.registry(models_dir)[a.model].path, dest / "model.safetensors")
            man["weights"] = "model.safetensors"
        (dest / "checks.json").write_text(json.dumps(man, indent=2) + "\n")
        sizes = check_carry([dest], int(a.limit_mib * 2 ** 20), Path(a.tree))
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    rel = dest.resolve().relative_to(ROOT) if dest.resolve().is_relative_to(ROOT) else dest
    print(f"staged {clip.shape[0]} frames {clip.shape[2]}x{clip.shape[1]} of {a.clip} and its CPU stream "
          f"({a.model}) in {dest}: {mib(sizes['carry'])}; a call carries {mib(sizes['total'])}")
    print(f"device call (alone, or first in gpu_train's call 2): run(command=\"python3 -m lab.gpu_checks "
          f"remote\", carry=[\"{rel}\"], timeout_s=600), ~3 min with the machine warm")
    return 0


# ---- remote ---------------------------------------------------------------------------------
def _sync(device: str) -> None:
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def speed(model, clip, device: str, frames: int, size: tuple) -> dict:
    """Encode and decode fps of ``frames`` frames of ``size`` (W, H), made by resizing and
    repeating the staged clip, in memory (entropy none) → dict with fps and peak memory."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from neuralcodec import codec

    w, h = size
    x = torch.from_numpy(clip).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    big = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    big = np.ascontiguousarray(big[np.arange(frames) % big.shape[0]])
    codec.compress(model, big[:5], entropy="none")  # warm-up (kernels, cudnn)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    t0 = time.perf_counter()
    data = codec.compress(model, big, entropy="none")
    _sync(device)
    t_enc = time.perf_counter() - t0
    enc_peak = torch.cuda.max_memory_allocated() if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    _, dec = codec.decompress(data, model=model)
    _sync(device)
    t_dec = time.perf_counter() - t0
    dec_peak = torch.cuda.max_memory_allocated() if cuda else None
    return {"frames": frames, "width": w, "height": h, "encode_s": t_enc, "decode_s": t_dec,
            "encode_fps": frames / t_enc, "decode_fps": frames / t_dec, "bytes": len(data),
            "encode_peak_GiB": enc_peak / 2 ** 30 if enc_peak else None,
            "decode_peak_GiB": dec_peak / 2 ** 30 if dec_peak else None, "decoded": list(dec.shape)}


def do_remote(a) -> int:
    import numpy as np
    import torch

    from neuralcodec import codec

    stage, out = Path(a.stage), out_dir(a.out)
    man = read_json(stage / "checks.json", "checks manifest")
    device = a.device
    res = {"hardware": hardware(), "device": device, "torch": torch.__version__,
           "python": sys.version.split()[0], "model": man["model"], "sha256": man["sha256"],
           "training_running": RUN_STATE.exists() and not (RUN_STATE.parent / "exit_code").exists(),
           "gpu_load_before": gpu_load(),
           "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32}}
    print(f"{res['hardware']}; torch {torch.__version__}; training running: {res['training_running']}", flush=True)
    if not a.no_bench:
        cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_kernels.py"), "--device", device,
               "--json", str(out / "kernels.json"), *shlex.split(a.bench_args)]
        t0 = time.time()
        r = subprocess.run(cmd, cwd=str(ROOT))
        res["bench"] = {"cmd": cmd[1:], "exit_status": r.returncode, "seconds": time.time() - t0}
        print(f"bench_kernels: exit status {r.returncode}, {time.time() - t0:.0f} s", flush=True)
    model = load_checked_model(stage, man, device)
    clip = np.load(stage / "clip.npy", allow_pickle=False)
    try:
        w, h = (int(v) for v in a.fps_size.lower().split("x"))
    except ValueError:
        raise ToolError(f"--fps-size {a.fps_size!r}: use WxH, e.g. 1920x1080") from None
    try:
        res["speed"] = speed(model, clip, device, a.fps_frames, (w, h))
        s = res["speed"]
        print(f"{w}x{h}, {a.fps_frames} frames: encode {s['encode_fps']:.2f} fps, decode {s['decode_fps']:.2f} "
              f"fps, peak {s['encode_peak_GiB']} / {s['decode_peak_GiB']} GiB", flush=True)
    except (RuntimeError, MemoryError) as e:  # an out-of-memory beside the training: report it
        res["speed"] = {"error": str(e).splitlines()[0]}
        print(f"speed: {res['speed']['error']}", flush=True)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    gpu = codec.compress(model, clip, entropy="none")
    (out / "gpu.mgv").write_bytes(gpu)
    np.save(out / "gpu_frames.npy", codec.decompress(gpu, model=model)[1], allow_pickle=False)
    cpu = (stage / "cpu.mgv").read_bytes()
    np.save(out / "cpu_on_gpu_frames.npy", codec.decompress(cpu, model=model)[1], allow_pickle=False)
    if device.startswith("cuda"):
        old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        (out / "gpu_notf32.mgv").write_bytes(codec.compress(model, clip, entropy="none"))
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
    res["gpu_load_after"] = gpu_load()
    (out / "checks.json").write_text(json.dumps(res, indent=2) + "\n")
    files = check_out(out)
    print(f"checks done: {len(files)} files in {out}")
    return 0


# ---- verify ---------------------------------------------------------------------------------
def frame_diff(a, b) -> dict:
    import numpy as np
    if a.shape != b.shape:
        return {"shape": f"{a.shape} vs {b.shape}", "ok": False}
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {"max_abs": int(d.max()), "pct_off_by_more_than_1": float(100 * np.mean(d > 1)),
            "pct_differing": float(100 * np.mean(d > 0)), "ok": bool(d.max() <= 1)}


def do_verify(a) -> int:
    import numpy as np

    from neuralcodec import codec

    src, stage = Path(a.src), Path(a.stage)
    man = read_json(stage / "checks.json", "checks manifest")
    res = read_json(src / "checks.json", "checks result")
    model = load_checked_model(stage, man, "cpu")
    cpu = (stage / "cpu.mgv").read_bytes()
    try:
        gpu = (src / "gpu.mgv").read_bytes()
        gpu_frames = np.load(src / "gpu_frames.npy", allow_pickle=False)
        cpu_on_gpu = np.load(src / "cpu_on_gpu_frames.npy", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ToolError(f"{src}: a result file is missing or unreadable: {e}") from None
    rows = []
    bc, bg = stream_bits(cpu), stream_bits(gpu)
    tok = {"ok": bc.shape == bg.shape and bool((bc == bg).all())}
    if bc.shape == bg.shape:
        tok["pct_bits_differing"] = float(100 * np.mean(bc != bg))
    rows.append(("tokens: GPU encode = CPU encode", tok))
    if (src / "gpu_notf32.mgv").is_file():
        bn = stream_bits((src / "gpu_notf32.mgv").read_bytes())
        rows.append(("tokens: GPU encode with TF32 off = CPU encode (information)",
                     {"ok": bn.shape == bc.shape and bool((bn == bc).all()),
                      "pct_bits_differing": float(100 * np.mean(bn != bc)) if bn.shape == bc.shape else None}))
    rows.append(("frames: GPU stream decoded on CPU vs on GPU",
                 frame_diff(codec.decompress(gpu, model=model)[1], gpu_frames)))
    rows.append(("frames: CPU stream decoded on GPU vs on CPU",
                 frame_diff(cpu_on_gpu, codec.decompress(cpu, model=model)[1])))
    print(f"# GPU checks: {res.get('hardware')} ({res.get('torch')}), model {man['model']}, "
          f"training running: {res.get('training_running')}\n")
    print("| check | result | details |\n|---|---|---|")
    failed = False
    for name, r in rows:
        info = "information" in name
        failed |= not r["ok"] and not info
        det = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items() if k != "ok")
        print(f"| {name} | {'PASS' if r['ok'] else ('differs' if info else 'FAIL')} | {det} |")
    s = res.get("speed", {})
    if "encode_fps" in s:
        print(f"\nspeed {s['width']}x{s['height']}, {s['frames']} frames in memory: encode {s['encode_fps']:.2f} fps, "
              f"decode {s['decode_fps']:.2f} fps, peak GPU memory {s['encode_peak_GiB']} / {s['decode_peak_GiB']} GiB")
    elif s:
        print(f"\nspeed: {s.get('error')}")
    kj = src / "kernels.json"
    if kj.is_file():
        k = json.loads(kj.read_text())
        print(f"\nkernels ({k['info']['device']}, peak {k['info']['peak_bandwidth_GBps']} GB/s):")
        for r in k["rows"]:
            if r["op"] in ("pack", "unpack"):
                pct = f"{r['pct_peak']:.1f}% of peak" if r["pct_peak"] is not None else "n/a"
                print(f"  {r['size']} {r['op']} {r['backend']}: {r['GBps']:.3g} GB/s, {pct}, "
                      f"{r['speedup_vs_torch']:.2f}x torch")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gpu_checks.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stage", help="stage a clip and its CPU stream")
    s.add_argument("--model", default=DEFAULT_MODEL, help="registered model to check [default: %(default)s]")
    s.add_argument("--models-dir", help="models folder (default: the package's)")
    s.add_argument("--clip", default=str(ROOT.parent / "shared" / "data" / "train" / "sam2_dog.mp4"),
                   help="a training clip")
    s.add_argument("--frames", type=int, default=17, help="frames of the clip")
    s.add_argument("--short-side", type=int, default=288, help="short side of the clip")
    s.add_argument("--stage-dir", default=str(STAGE_DIR), help="folder to carry (gitignored)")
    s.add_argument("--limit-mib", type=float, default=64, help="what one device call may carry")
    s.add_argument("--tree", default=str(ROOT),
                   help="the working tree whose files travel with every device call [default: this checkout]")
    s.add_argument("--force", action="store_true", help="replace an existing stage folder")
    r = sub.add_parser("remote", help="on the GPU machine: results into $OUT")
    r.add_argument("--stage", default=str(STAGE_DIR))
    r.add_argument("--out", help="folder whose files come back (default $OUT)")
    r.add_argument("--device", default="cuda")
    r.add_argument("--no-bench", action="store_true", help="skip benchmarks/bench_kernels.py")
    r.add_argument("--bench-args", default="", help="more bench_kernels.py flags")
    r.add_argument("--fps-frames", type=int, default=33, help="frames of the speed clip")
    r.add_argument("--fps-size", default="1920x1080", help="WxH of the speed clip")
    v = sub.add_parser("verify", help="here: compare the GPU's results with the CPU")
    v.add_argument("--from", dest="src", required=True, help="folder of the call's files")
    v.add_argument("--stage", default=str(STAGE_DIR))
    return ap


def main(argv: Optional[list] = None) -> int:
    a = build_parser().parse_args(argv)
    return {"stage": do_stage, "remote": do_remote, "verify": do_verify}[a.cmd](a)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    run_main(PROG, main)
