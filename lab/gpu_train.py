#!/usr/bin/env python3
"""Train on a borrowed GPU machine (one H200 for at most 30 minutes, lent without notice):
stage here, three device calls there, import here. A wrapper over lab/train/__main__.py and the
package's training loop, not a second loop.

    python3 -m lab.gpu_train stage                 # → .gpu_stage/ and the exact device calls
    #   device call 1: python3 -m lab.gpu_train remote start    (setup, detached training, log)
    #   device call 2: python3 -m lab.gpu_checks remote; python3 -m lab.gpu_train remote follow
    #   device call 3: python3 -m lab.gpu_train remote finish   (EMA weights in pieces → $OUT)
    python3 -m lab.gpu_train import --from DIR --name mgv-gpu-20261124
    python3 -m lab.gpu_train dry-run --minutes 1   # all of it on this CPU (tiny config)

``stage`` decodes the training clips here (PyAV) at the training resolution and re-encodes
them as H.264 (.mp4), which the machine decodes with OpenCV (it has no PyAV); it checks that
the working tree and the staged folder fit in what a call carries. The recipe is
:data:`GPU_RECIPE`; ``--recipe-args`` appends train.py flags (the last one wins).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import List, Optional

from neuralcodec.configs import DEFAULT_MODEL

from .gpu_lease import (COMMAND_LIMIT_S, OUT_MAX_FILES, PIECE_BYTES, ROOT, ToolError,
                       check_carry, check_out, copy_into, gpu_load, group_alive, hardware,
                       join_pieces, launch_detached, mib, out_dir, path_bytes, read_json, run_main,
                       split_file, stop_group)

PROG = "gpu_train"
# The GPU recipe: lab/train/__main__.py flags (--data, --out, --cache and --device are added on the
# machine). The best measured: the recipe that made mgv-default-v3 (the bit-plane config `p6`,
# warm start from the default model, its rate points and learning rate, Adam β2 0.95; session
# 8 in lab/notes/recipes.md) with v4's rebalanced mix (a clip's sampling weight counts
# at most 300 frames), sign-magnitude planes and the fourth bit plane of mgv-default-v6 (24 bits,
# half the steps at the nested rates 2-21: v6's CPU run, session 15), GPU-sized
# batches (8× the CPU recipe's clips, 2× the frames, the same 128² crops) in bf16 autocast,
# 8 loader processes of the machine's 16 cores, a checkpoint every 2 minutes.
GPU_RECIPE = (
    "--model", "p6", "--arch", '{"sign_magnitude": true, "bits": 24, "planes": 4}',
    "--init", DEFAULT_MODEL,
    "--clip-frames", "300",
    "--batch", "32", "--frames", "17", "--crop", "128",
    "--image-frac", "0.3", "--image-batch", "64", "--image-crop", "192",
    "--lr", "5e-4", "--warmup", "200", "--lr-floor", "0.05", "--adam-beta2", "0.95",
    "--nested-bits", "2,4,6,9,12,15,18,21", "--nested-prob", "0.5",
    "--bf16", "true", "--workers", "8", "--threads", "4",
    "--short-side", "360", "--ckpt-minutes", "2", "--log-every", "25",
)
# Training minutes (the loop's own clock): machine start ~2 + setup ~1 + these + final
# checkpoint and export ~1 must stay inside the 30-minute lease.
GPU_MINUTES = 22.0
# Minutes after launch up to which device calls 1 and 2 follow the log (each call < 10 min).
FOLLOW_1, FOLLOW_2 = 8.5, 17.5
# A dry run on this CPU: the tiny config, tiny batches, no loader processes.
DRY_RUN_ARGS = (
    "--model", "tiny", "--arch", "", "--init", "", "--batch", "2", "--frames", "5", "--crop", "32",
    "--image-batch", "2", "--image-crop", "32", "--workers", "0", "--threads", "1",
    "--warmup", "5", "--short-side", "64", "--ckpt-minutes", "0.05", "--log-every", "2",
)
STAGE_DIR = ROOT / ".gpu_stage"
RUN_DIR = Path("/tmp/gpu_run")
CHECKS_DIR = ROOT / ".gpu_checks"
MACHINE_ARGS = ("--data", "--out", "--cache", "--device")  # set on the machine, not in a recipe


# ---- stage ----------------------------------------------------------------------------------
def _rel(p: Path) -> str:
    """``p`` relative to the repository root when inside it (commands run there), else absolute."""
    p = Path(p).resolve()
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


def train_config(args: List[str]):
    """train.py flags → TrainConfig (ToolError on a bad flag, via the same parser)."""
    import contextlib
    import io

    from lab.train.args import parse_train_args

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parse_train_args(args)
    except SystemExit:
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        raise ToolError(f"bad train.py flags {shlex.join(args)}: {lines[-1] if lines else ''}") from None


def collapse_args(args: List[str]) -> List[str]:
    """train.py flags (each takes one value) with repeats collapsed: the last value wins, in
    the order the flags first appear."""
    if len(args) % 2:
        raise ToolError(f"train.py flags come in pairs (flag value): {shlex.join(args)}")
    vals = {}
    for flag, value in zip(args[::2], args[1::2]):
        if not flag.startswith("--"):
            raise ToolError(f"{flag!r} is not a train.py flag")
        vals[flag] = value
    return [x for kv in vals.items() for x in kv]


def check_recipe(args: List[str], clips: Optional[List[dict]] = None):
    """Check a recipe on the CPU before the lease: flags, warm-start config, the export's
    pieces against the files that come back and (given ``clips``) crop sizes against the
    staged clips → TrainConfig."""
    from neuralcodec.errors import InputError
    from neuralcodec.model import Tokenizer, count_parameters
    from lab.train.surgery import init_weights

    for a in args:
        if a.split("=")[0] in MACHINE_ARGS:
            raise ToolError(f"{a} is set on the machine; leave it out of the recipe")
    tc = train_config(args)
    try:
        cfg = tc.tokenizer_config()
        if tc.init:
            init_weights(tc.init, cfg)  # same config, or fewer bits (grown on the machine)
    except InputError as e:
        raise ToolError(f"{e} (use --init '' for a fresh model)") from None
    if (tc.batches.frames - 1) % cfg.temporal_factor:
        raise ToolError(f"--frames {tc.batches.frames} is not 1 + {cfg.temporal_factor}k")
    if clips is not None and not any(c["frames"] >= tc.batches.frames and min(c["width"], c["height"]) >= tc.batches.crop
                                     for c in clips):
        raise ToolError(f"no staged clip has {tc.batches.frames} frames of {tc.batches.crop}x{tc.batches.crop} pixels")
    if clips is not None and not any(min(c["width"], c["height"]) >= tc.batches.image_crop for c in clips):
        raise ToolError(f"no staged clip is {tc.batches.image_crop} pixels on its short side (--image-crop)")
    fp16 = 2 * count_parameters(Tokenizer(cfg)) + 2 ** 20  # + header and metadata, generously
    pieces = math.ceil(fp16 / PIECE_BYTES)
    if pieces + len(RESULT_FILES) > OUT_MAX_FILES:
        raise ToolError(f"config {tc.model}: {pieces} weight pieces + {len(RESULT_FILES)} files "
                        f"exceed the {OUT_MAX_FILES} files that come back")
    return tc


def stage_clips(data: Path, dest: Path, short_side: int, crf: int) -> List[dict]:
    """Decode every video in ``data`` here (PyAV, area downscale to ``short_side``) and
    re-encode it as H.264 ``dest/NAME.mp4`` (CRF ``crf``, yuv420p) → one dict per clip."""
    from neuralcodec.video_io import VideoMeta
    from neuralcodec.video_out import write_video
    from lab.train.data import VIDEO_EXTS, decode_video_rgb
    from neuralcodec.weights import file_sha256

    files = sorted(p for p in data.iterdir() if p.suffix.lower() in VIDEO_EXTS and p.is_file())
    if not files:
        raise ToolError(f"no videos in {data}")
    dest.mkdir(parents=True)
    clips = []
    for p in files:
        arr = decode_video_rgb(p, short_side)
        t, h, w, _ = arr.shape
        out = dest / f"{p.stem}.mp4"
        if out.exists():
            raise ToolError(f"two clips named {p.stem} in {data}")
        write_video(out, VideoMeta(w, h, Fraction(25), t, "yuv420p"), arr, crf=crf)
        clips.append({"file": out.name, "source": p.name, "source_sha256": file_sha256(p),
                      "frames": t, "width": w, "height": h, "bytes": out.stat().st_size,
                      "sha256": file_sha256(out)})
        print(f"  {p.name}: {t} frames {w}x{h} → {out.name} {mib(out.stat().st_size)}", flush=True)
    return clips


def device_calls(stage: Path, run: Path, device: str, python: str, follow: tuple,
                 deadline: float, poll: Optional[float] = None,
                 checks: Optional[Path] = None) -> List[dict]:
    """The device calls, in order: [{"command", "carry", "timeout_s", "minutes", "what"}].
    Paths and device are named only when they differ from the machine's defaults."""
    common: List[str] = []
    if Path(stage).resolve() != STAGE_DIR:
        common += ["--stage", _rel(stage)]
    if Path(run) != RUN_DIR:
        common += ["--run", str(run)]
    if poll is not None:
        common += ["--poll", str(poll)]
    tool = [python, "-m", "lab.gpu_train", "remote"]
    start = tool + ["start", *common, "--follow-until", str(follow[0])]
    if device != "cuda":
        start += ["--device", device]
    follow_cmd = shlex.join(tool + ["follow", *common, "--until", str(follow[1])])
    carry2: List[str] = []
    if checks is not None:
        c = [python, "-m", "lab.gpu_checks", "remote"]
        if Path(checks).resolve() != CHECKS_DIR:
            c += ["--stage", _rel(checks)]
        if device != "cuda":
            c += ["--device", device]
        follow_cmd = shlex.join(c) + "; " + follow_cmd
        carry2 = [_rel(checks)]
    return [
        {"what": "set up, start the training detached, follow the log", "command": shlex.join(start),
         "carry": [_rel(stage)], "timeout_s": COMMAND_LIMIT_S, "minutes": follow[0] + 0.5},
        {"what": ("GPU checks while it trains, then " if checks else "") + "follow the log",
         "command": follow_cmd, "carry": carry2, "timeout_s": COMMAND_LIMIT_S,
         "minutes": follow[1] - follow[0]},
        {"what": "wait for the end, export the EMA weights in pieces with the logs",
         "command": shlex.join(tool + ["finish", *common, "--deadline", str(deadline)]),
         "carry": [], "timeout_s": COMMAND_LIMIT_S, "minutes": max(0.5, deadline - 2 - follow[1]) + 0.5},
    ]


def do_stage(a) -> dict:
    """``stage``: the folder to carry and the device calls → the stage manifest (dict)."""
    data = Path(a.data)
    if not data.is_dir():
        raise ToolError(f"{data}: not a folder")
    if "eval" in data.resolve().parts:
        raise ToolError(f"{data}: refusing to stage evaluation data for training")
    dest = Path(a.stage_dir)
    if dest.exists():
        if not a.force:
            raise ToolError(f"{dest} exists (use --force to replace it)")
        shutil.rmtree(dest)
    recipe = list(a.recipe) + shlex.split(a.recipe_args)
    if a.model:
        recipe += ["--model", a.model]
    if a.init is not None:
        recipe += ["--init", a.init]
    recipe = collapse_args(recipe + ["--minutes", str(a.minutes)])
    short_side = a.short_side or check_recipe(recipe).short_side
    print(f"staging {data} at short side {short_side}, H.264 CRF {a.crf} → {dest}", flush=True)
    try:
        clips = stage_clips(data, dest / "clips", short_side, a.crf)
        tc = check_recipe(recipe, clips)
        deadline = a.minutes + 3.0
        manifest = {
            "format": "neuralcodec-gpu-stage-1", "name": a.name, "created": _now(),
            "data": str(data), "short_side": short_side, "crf": a.crf, "clips": clips,
            "train_args": recipe, "model": tc.model, "init": tc.init, "minutes": a.minutes,
            "deadline": deadline, "device": a.device,
        }
        (dest / "stage.json").write_text(json.dumps(manifest, indent=2) + "\n")
        sizes = check_carry([dest], a.limit_mib * 2 ** 20, Path(a.tree))
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    checks = Path(a.checks) if a.checks and Path(a.checks).exists() else None
    if checks is not None:
        check_carry([checks], a.limit_mib * 2 ** 20, Path(a.tree))
    calls = device_calls(dest, Path(a.run), a.device, a.python, a.follow, deadline, a.poll, checks)
    manifest["calls"] = calls
    (dest / "stage.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"staged {len(clips)} clips, {sum(c['frames'] for c in clips)} frames: {mib(path_bytes(dest))}; "
          f"working tree {mib(sizes['tree'])}; a call carries {mib(sizes['total'])} of {mib(sizes['limit'])}")
    if checks is None:
        print(f"(no {_rel(CHECKS_DIR)}/: stage it with python3 -m lab.gpu_checks stage to run the GPU checks in call 2)")
    print_calls(calls, a.minutes, a.name)
    return manifest


def print_calls(calls: List[dict], minutes: float, name: str) -> None:
    print("\ndevice calls, back to back (the machine goes back 30 s after a call returns):")
    for i, c in enumerate(calls, 1):
        print(f"  {i}. run(command={json.dumps(c['command'])}, carry={json.dumps(c['carry'])}, "
              f"timeout_s={c['timeout_s']})\n     ~{c['minutes']:.1f} min: {c['what']}")
    total = 2 + sum(c["minutes"] for c in calls)
    print(f"  about {total:.0f} device minutes with ~2 min of machine start ({minutes:g} min of training)")
    print(f"then here: python3 -m lab.gpu_train import --from FILES_AT_OF_CALL_3 --name {name}")


# ---- remote ---------------------------------------------------------------------------------
_STEP = re.compile(r"^step (\d+) ([\d.]+)min lr (\S+) loss (\S+) psnr (\S+) bits=(\S+) val_ema (\S+)")


def _state(run: Path) -> dict:
    return read_json(run / "state.json", "run state")


def _exit_code(run: Path) -> Optional[int]:
    f = run / "exit_code"
    if not f.exists():
        return None
    try:
        return int(f.read_text().strip() or "1")
    except ValueError:
        return 1


class Follower:
    """Reads ``train.log`` as it grows and prints progress: every ``every`` seconds a line
    with the step, minutes of training, loss, PSNR, steps/s and the GPU's memory and load;
    other lines (warm start, resume, errors) at once."""

    def __init__(self, run: Path, every: float) -> None:
        self.log, self.every = run / "train.log", every
        self.pos, self.partial, self.last = 0, "", None
        self.printed_at, self.printed_step = 0.0, None
        self.launched = _state(run)["launched"]

    def poll(self) -> None:
        if not self.log.exists():
            return
        with open(self.log, "rb") as f:
            f.seek(self.pos)
            chunk = f.read()
        self.pos += len(chunk)
        lines = (self.partial + chunk.decode("utf-8", "replace")).split("\n")
        self.partial = lines.pop()
        for ln in lines:
            m = _STEP.match(ln)
            if m:
                self.last = (time.time(), int(m.group(1)), m)
            elif ln.strip():
                print(f"[{self.since():5.1f} min] {ln[:300]}", flush=True)
        if time.time() - self.printed_at >= self.every:
            self.report()

    def since(self) -> float:
        return (time.time() - self.launched) / 60

    def report(self, only_new: bool = False) -> None:
        if only_new and (self.last is None or (self.printed_step and self.printed_step[1] == self.last[1])):
            return
        self.printed_at = time.time()
        if self.last is None:
            print(f"[{self.since():5.1f} min] setting up (decoding the clips, first steps) {gpu_load()}",
                  flush=True)
            return
        t, step, m = self.last
        rate = ""
        if self.printed_step is not None and step > self.printed_step[1]:
            rate = f", {(step - self.printed_step[1]) / max(t - self.printed_step[0], 1e-6):.2f} steps/s"
        self.printed_step = (t, step)
        print(f"[{self.since():5.1f} min] step {step}, {m.group(2)} min trained, loss {m.group(4)}, "
              f"psnr {m.group(5)}, val_ema {m.group(7)}{rate} {gpu_load()}", flush=True)


def follow(run: Path, until_min: float, poll: float, every: float, cap_s: float) -> Optional[int]:
    """Follow the log until ``until_min`` minutes after launch, the end of the training or
    ``cap_s`` seconds → the training's exit status, or None while it runs."""
    f = Follower(run, every)
    t0 = time.time()
    while True:
        f.poll()
        code = _exit_code(run)
        if code is not None:
            f.poll()
            f.report(only_new=True)
            return code
        if f.since() >= until_min or time.time() - t0 >= cap_s:
            f.report(only_new=True)
            return None
        time.sleep(poll)


def _report_end(run: Path, code: Optional[int], out: Optional[Path]) -> int:
    if out is not None:
        copy_into(out, run / "train.log")
    if code is None:
        print("training runs on; follow it with: remote follow, or end it with: remote finish")
        return 0
    if code == 0:
        print("training ended (budget reached); export it with: remote finish")
        return 0
    tail = (run / "train.log").read_text(errors="replace").splitlines()[-25:]
    print("\n".join(tail))
    print(f"training failed (exit status {code}); fix the recipe and start it again with: "
          f"remote start --recipe-args '...' (resumes from its last checkpoint)", file=sys.stderr)
    return 1


def remote_start(a) -> int:
    stage_dir = Path(a.stage)
    st = read_json(stage_dir / "stage.json", "stage manifest")
    from neuralcodec.weights import file_sha256

    for c in st["clips"]:
        p = stage_dir / "clips" / c["file"]
        if not p.is_file() or file_sha256(p) != c["sha256"]:
            raise ToolError(f"staged clip {c['file']} is missing or damaged")
    run = Path(a.run)
    run.mkdir(parents=True, exist_ok=True)
    prev = _state(run) if (run / "state.json").exists() else None
    if prev is not None and _exit_code(run) is None and group_alive(prev["pgid"]):
        raise ToolError(f"a training run is already running in {run} (pid {prev['pgid']}); use remote follow")
    device = a.device or st["device"]
    args = list(st["train_args"]) + shlex.split(a.recipe_args)
    tc = train_config(args)
    print(f"{hardware()}; python {sys.version.split()[0]}; {_versions()}", flush=True)
    cmd = [sys.executable, "-m", "lab.train", *args, "--data", str(stage_dir / "clips"),
           "--out", str(run / "train"), "--cache", str(run / "cache"), "--device", device]
    shutil.copyfile(stage_dir / "stage.json", run / "stage.json")  # for finish, whatever stays
    path = [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "PYTHONUNBUFFERED": "1"}
    pgid = launch_detached(cmd, run / "train.log", run / "exit_code", env)
    state = {"pgid": pgid, "launched": prev["launched"] if prev else time.time(),
             "starts": (prev["starts"] if prev else []) + [{"time": _now(), "cmd": cmd}],
             "hardware": hardware(), "device": device, "model": tc.model, "minutes": tc.minutes,
             "name": st["name"], "versions": _versions()}
    (run / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    print(f"training started (pid {pgid}, {tc.minutes:g} min, {device}): {shlex.join(cmd[1:])}", flush=True)
    code = follow(run, a.follow_until, a.poll, a.every, COMMAND_LIMIT_S - 30)
    return _report_end(run, code, _maybe_out(a.out))


def remote_follow(a) -> int:
    run = Path(a.run)
    code = follow(run, a.until, a.poll, a.every, a.cap)
    return _report_end(run, code, _maybe_out(a.out))


RESULT_FILES = ("manifest.json", "log.csv", "losses.png", "train_config.json", "train.log")


def remote_finish(a) -> int:
    """Wait for the training's end (or stop it at the deadline), export the EMA weights of
    the last checkpoint (fp16 safetensors, as lab/export.py) in pieces, with a manifest and
    the logs, into $OUT."""
    from lab.train.config import TrainConfig
    from lab.train.loop import load_run, plot_log
    from neuralcodec.weights import save_weights

    run, out = Path(a.run), out_dir(a.out)
    state = _state(run)
    deadline = a.deadline if a.deadline is not None else state["minutes"] + 3
    code = follow(run, deadline, a.poll, a.every, a.cap)
    how = "budget reached"
    if code is None:
        print(f"stopping the training at the deadline ({deadline:g} min after launch); "
              f"exporting its last checkpoint", flush=True)
        stop_group(state["pgid"])
        code, how = _exit_code(run), "stopped at the deadline (last checkpoint)"
    elif code != 0:
        how = f"failed (exit status {code}; last checkpoint)"
    train_dir = run / "train"
    copy_into(out, run / "train.log", train_dir / "log.csv", train_dir / "train_config.json")
    ckpt = train_dir / "checkpoint.pt"
    if not ckpt.exists():
        raise ToolError(f"no checkpoint in {train_dir}: nothing to export (see train.log)")
    tc = TrainConfig.from_dict(json.loads((train_dir / "train_config.json").read_text()))
    model = load_run(train_dir)  # the EMA weights, in the run's architecture (--arch included)
    st = {"step": model.step, "elapsed": model.elapsed}
    export = run / "export"
    export.mkdir(exist_ok=True)
    wfile = export / f"{state['name']}.safetensors"
    sha = save_weights(model, wfile, state["name"])
    pieces = split_file(wfile, out)
    plot_log(train_dir / "log.csv", out / "losses.png")
    stage = read_json(run / "stage.json", "stage manifest")
    manifest = {
        "format": "neuralcodec-gpu-run-1", "name": state["name"], "config": tc.model,
        "arch": tc.arch, "config_dict": model.cfg.to_dict(),
        "file": wfile.name, "size": wfile.stat().st_size, "sha256": sha, "pieces": pieces,
        "step": int(st["step"]), "train_minutes": float(st["elapsed"]) / 60,
        "wall_minutes": (time.time() - state["launched"]) / 60, "ended": how,
        "hardware": state["hardware"], "device": state["device"], "versions": state["versions"],
        "starts": state["starts"], "finished": _now(),
        "stage": {k: stage[k] for k in ("data", "short_side", "crf", "clips", "train_args", "created")},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    files = check_out(out)
    print(f"exported {wfile.name}: step {manifest['step']}, {manifest['train_minutes']:.1f} min trained "
          f"({how}), sha256 {sha[:16]}…, {len(pieces)} pieces; {len(files)} files in {out}")
    return 0


def _maybe_out(arg: Optional[str]) -> Optional[Path]:
    return out_dir(arg) if arg or os.environ.get("OUT") else None


def _versions() -> str:
    import torch
    return f"torch {torch.__version__}"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# ---- import ---------------------------------------------------------------------------------
def do_import(a) -> int:
    """Reassemble the pieces, check the sha256s, load the weights with the package loader,
    write NAME.safetensors + registry entry + model card into the models folder."""
    from neuralcodec import weights
    from neuralcodec.configs import TokenizerConfig
    from lab.configs import LAB_CONFIGS as CONFIGS
    from neuralcodec.model import count_parameters

    src = Path(a.src)
    man = read_json(src / "manifest.json", "run manifest")
    if man.get("format") != "neuralcodec-gpu-run-1":
        raise ToolError(f"{src / 'manifest.json'}: not a gpu_train run manifest")
    name = a.name or man["name"]
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
        raise ToolError(f"model name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    models_dir = Path(a.models_dir) if a.models_dir else None
    folder = models_dir or weights.MODELS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    if name in weights.registry(models_dir) and not a.force:
        raise ToolError(f"model {name} is already registered in {folder} (use --force to replace it)")
    file = f"{name}.safetensors"
    with tempfile.TemporaryDirectory() as td:
        whole = join_pieces(src, man["pieces"], Path(td) / man["file"], man["sha256"], man["size"])
        model = weights.load_weights_file(whole, man["sha256"])
        want = man.get("config_dict")
        want = TokenizerConfig.from_dict(want) if want is not None else CONFIGS.get(man["config"])
        if model.cfg != want:
            raise ToolError(f"the weights' config is not the manifest's ({man['config']!r} {man.get('arch', '')})")
        if name == man["name"]:  # its metadata already names it: keep the file as trained
            shutil.copyfile(whole, folder / file)
            sha = man["sha256"]
        else:
            sha = weights.save_weights(model, folder / file, name)
    weights.register(name, file, sha, models_dir)
    docs = Path(a.docs_dir) if a.docs_dir else (ROOT / "docs" if models_dir is None else folder)
    png = None
    if (src / "losses.png").is_file():
        docs.mkdir(parents=True, exist_ok=True)
        png = docs / f"{name}-training.png"
        shutil.copyfile(src / "losses.png", png)
    card = folder / f"{name}.md"
    card.write_text(model_card(name, man, sha, (folder / file).stat().st_size,
                               count_parameters(model), src, png, card.parent))
    print(f"imported {name}: {man['config']}, step {man['step']}, {man['train_minutes']:.1f} min on "
          f"{man['hardware']}; sha256 {sha}; card {card}")
    return 0


def model_card(name: str, man: dict, sha: str, size: int, params: int, src: Path,
               png: Optional[Path], card_dir: Path) -> str:
    st = man["stage"]
    clips = ", ".join(f"{c['source']} ({c['frames']} frames)" for c in st["clips"])
    rows = _rows(src / "log.csv")
    last = rows[-1] if rows else {}
    val = "n/a"
    vals = [r for r in rows if r.get("val_psnr_ema") not in (None, "", "nan")]
    if vals:
        val = f"{vals[-1]['val_psnr_ema']} dB at step {vals[-1]['step']}"
    args = " ".join(shlex.quote(x) for x in st["train_args"])
    curve = f"[{png.name}]({os.path.relpath(png, card_dir)})" if png else "not returned"
    return f"""# Model card: {name}

| | |
|---|---|
| name | `{name}` (imported {_now()} with `python3 -m lab.gpu_train import`) |
| weights | `{name}.safetensors`, float16, {size / 1e6:.1f} MB, sha256 `{sha}` (EMA weights{'' if sha == man['sha256'] else '; as transferred: `' + man['sha256'] + '`'}) |
| config | `{man['config']}` in `neuralcodec/configs.py`{(' with ' + man['arch']) if man.get('arch') else ''}, {params:,} parameters |
| hardware | {man['hardware']}, {man['versions']}, device `{man['device']}` |
| training | {man['step']:,} steps, {man['train_minutes']:.1f} min of training steps, {man['wall_minutes']:.1f} min from launch to export (setup and export included), finished {man['finished']}; ended: {man['ended']} |
| recipe | `python3 -m lab.train {args}` (plus `--data`, `--out`, `--cache`, `--device` on the machine) |
| data | **only** `{st['data']}`, staged {st['created']}: decoded with PyAV, area-downscaled to short side {st['short_side']}, re-encoded H.264 CRF {st['crf']} (yuv420p) and decoded on the machine with OpenCV; {len(st['clips'])} clips, {sum(c['frames'] for c in st['clips']):,} frames: {clips}. No evaluation footage. |
| last log row | step {last.get('step', '?')}: loss {last.get('loss', '?')}, train PSNR {last.get('psnr', '?')} dB; EMA PSNR on the fixed train batch {val} |
| loss curves | {curve} |
| evaluation | not measured yet: `python3 -m tools.eval_model --model {name} --data ../shared/data/eval --frames 97 --bits 18 14 10 6 4 2` |
"""


def _rows(log_csv: Path) -> List[dict]:
    import csv
    if not log_csv.is_file():
        return []
    with open(log_csv, newline="") as f:
        return list(csv.DictReader(f))


# ---- dry run --------------------------------------------------------------------------------
_BLOCK = '''"""Imitates the bare GPU machine in gpu_train's dry run: PyAV and constriction are absent."""
import importlib.abc
import sys


class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("av", "constriction"):
            raise ImportError(f"{name} is not installed on the GPU machine")
        return None


sys.meta_path.insert(0, _Absent())
'''


def do_dry_run(a) -> int:
    """Stage, run the three device calls' commands on this CPU (a temporary folder standing
    in for the machine, with PyAV and constriction hidden when OpenCV is here), import into
    a temporary models folder, then encode and decode a clip with the imported model."""
    import subprocess

    import numpy as np

    t0 = time.time()
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="gpu_dry_"))
    work.mkdir(parents=True, exist_ok=True)
    m = a.minutes
    stage_args = argparse.Namespace(
        data=a.data, stage_dir=str(work / "stage"), force=True, recipe=GPU_RECIPE + DRY_RUN_ARGS,
        recipe_args=a.recipe_args, model=None, init=None, minutes=m, short_side=None, crf=a.crf,
        name=f"mgv-dryrun-{datetime.date.today():%Y%m%d}", device="cpu", run=str(work / "machine" / "run"),
        python=sys.executable, follow=(round(0.3 * m, 3), round(0.6 * m, 3)), poll=0.2,
        checks=None, limit_mib=a.limit_mib, tree=a.tree)
    print("== stage", flush=True)
    manifest = do_stage(stage_args)
    env = dict(os.environ)
    try:
        import cv2  # noqa: F401
        site = work / "machine" / "site"
        site.mkdir(parents=True, exist_ok=True)
        (site / "sitecustomize.py").write_text(_BLOCK)
        env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)])
        print("(machine stand-in: PyAV and constriction hidden; clips decoded with OpenCV)")
    except ImportError:
        env["PYTHONPATH"] = str(ROOT)
        print("(OpenCV is not installed here: the machine stand-in decodes the clips with PyAV)")
    for i, call in enumerate(manifest["calls"], 1):
        out = work / "machine" / f"out{i}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        print(f"== device call {i}: {call['command']}", flush=True)
        r = subprocess.run(["bash", "-c", call["command"]], cwd=str(ROOT), env={**env, "OUT": str(out)},
                           timeout=call["timeout_s"])
        check_out(out)
        if r.returncode != 0:
            raise ToolError(f"device call {i} failed (exit status {r.returncode})")
    print("== import", flush=True)
    name = stage_args.name
    do_import(argparse.Namespace(src=str(work / "machine" / "out3"), name=name,
                                 models_dir=str(work / "models"), force=True, docs_dir=None))
    from neuralcodec import codec, weights
    from lab.train.data import decode_video_rgb

    model = weights.load_model(name, work / "models")
    clip = manifest["clips"][0]
    frames = decode_video_rgb(work / "stage" / "clips" / clip["file"], 10 ** 6, max_frames=9)
    data = codec.compress(model, frames, entropy="none")
    _, dec = codec.decompress(data, model=model)
    mse = float(np.mean((dec.astype(np.float64) - frames) ** 2))
    psnr = 10 * math.log10(255 ** 2 / max(mse, 1e-10))
    print(f"== {name} from {work / 'models'}: {frames.shape[0]} frames {frames.shape[2]}x{frames.shape[1]} "
          f"→ {len(data)} bytes → PSNR {psnr:.2f} dB; dry run done in {time.time() - t0:.0f} s ({work})")
    if not a.work and not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


# ---- command line ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gpu_train.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stage", help="stage the training clips and print the device calls")
    s.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "train"), help="training videos")
    s.add_argument("--stage-dir", default=str(STAGE_DIR), help="folder to carry (gitignored)")
    s.add_argument("--model", help="tokenizer config name (default: the recipe's, 'default')")
    s.add_argument("--init", help="warm start: registered model or .safetensors ('' = random init; "
                                  "default: the recipe's, the default model)")
    s.add_argument("--minutes", type=float, default=GPU_MINUTES, help="training minutes on the machine")
    s.add_argument("--recipe-args", default="", help="train.py flags appended to the recipe (last wins)")
    s.add_argument("--short-side", type=int, help="short side of the staged clips (default: the recipe's)")
    s.add_argument("--crf", type=int, default=16, help="H.264 CRF of the staged clips")
    s.add_argument("--name", default=f"mgv-gpu-{datetime.date.today():%Y%m%d}", help="name of the result")
    s.add_argument("--device", default="cuda", help="device on the machine")
    s.add_argument("--run", default=str(RUN_DIR), help="run folder on the machine's disk")
    s.add_argument("--checks", default=str(CHECKS_DIR), help="gpu_checks stage folder, run in call 2 if present")
    s.add_argument("--limit-mib", type=float, default=64, help="what one device call may carry")
    s.add_argument("--tree", default=str(ROOT),
                   help="the working tree whose files travel with every device call [default: this checkout]")
    s.add_argument("--force", action="store_true", help="replace an existing stage folder")
    s.set_defaults(recipe=GPU_RECIPE, python="python3", follow=(FOLLOW_1, FOLLOW_2), poll=None)

    r = sub.add_parser("remote", help="on the GPU machine")
    rs = r.add_subparsers(dest="remote", required=True)
    for name, hlp in (("start", "set up and start the training detached, then follow the log"),
                      ("follow", "follow the log"), ("finish", "wait for the end, export to $OUT")):
        p = rs.add_parser(name, help=hlp)
        p.add_argument("--stage", default=str(STAGE_DIR), help="the carried stage folder")
        p.add_argument("--run", default=str(RUN_DIR), help="run folder on the machine's disk")
        p.add_argument("--out", help="folder whose files come back (default $OUT)")
        p.add_argument("--poll", type=float, default=5.0, help="seconds between looks at the log")
        p.add_argument("--every", type=float, default=30.0, help="seconds between progress lines")
        p.add_argument("--cap", type=float, default=COMMAND_LIMIT_S - 30, help="seconds this command may wait")
    rs.choices["start"].add_argument("--device", help="cuda (default from the stage) or cpu")
    rs.choices["start"].add_argument("--recipe-args", default="", help="train.py flags appended (last wins)")
    rs.choices["start"].add_argument("--follow-until", type=float, default=FOLLOW_1,
                                     help="follow until this many minutes after launch")
    rs.choices["follow"].add_argument("--until", type=float, default=FOLLOW_2,
                                      help="minutes after launch to follow until")
    rs.choices["finish"].add_argument("--deadline", type=float,
                                      help="minutes after launch at which a run still going is stopped "
                                           "and its last checkpoint exported (default minutes + 3)")

    i = sub.add_parser("import", help="reassemble, check and register a returned model")
    i.add_argument("--from", dest="src", required=True, help="folder of the files of the last call")
    i.add_argument("--name", help="registered name (default: the staged name)")
    i.add_argument("--models-dir", help="models folder (default: the package's neuralcodec/models)")
    i.add_argument("--docs-dir", help="where the loss plot goes (default docs/, or the models folder)")
    i.add_argument("--force", action="store_true", help="replace a registered model of that name")

    d = sub.add_parser("dry-run", help="stage, the device calls, import: all on this CPU, tiny config")
    d.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "train"), help="training videos")
    d.add_argument("--minutes", type=float, default=1.0, help="training minutes")
    d.add_argument("--recipe-args", default="", help="train.py flags appended to the dry-run recipe")
    d.add_argument("--crf", type=int, default=16, help="H.264 CRF of the staged clips")
    d.add_argument("--work", help="folder for the dry run (default: a temporary one, removed)")
    d.add_argument("--keep", action="store_true", help="keep the temporary folder")
    d.add_argument("--limit-mib", type=float, default=64, help="what one device call may carry")
    d.add_argument("--tree", default=str(ROOT),
                   help="the working tree whose files travel with every device call [default: this checkout]")
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if a.cmd == "stage":
        do_stage(a)
        return 0
    if a.cmd == "remote":
        return {"start": remote_start, "follow": remote_follow, "finish": remote_finish}[a.remote](a)
    if a.cmd == "import":
        return do_import(a)
    return do_dry_run(a)


if __name__ == "__main__":
    run_main(PROG, main)
