"""What the whole-clip benchmarks (bench_adapt, bench_decoders) share: their common options,
the clips of ``--inputs`` and the results file they resume from."""
from __future__ import annotations

import argparse
import datetime
import json
import platform
from pathlib import Path
from typing import Callable, List

import torch

from neuralcodec.video_io import VIDEO_EXTS


def add_clip_options(ap: argparse.ArgumentParser) -> None:
    """``--inputs``, ``--bits`` (rate points), ``--frames``, ``--threads`` and ``--out``
    (results path without suffix)."""
    ap.add_argument("--inputs", type=Path, required=True, help="a clip or a folder of clips")
    ap.add_argument("--bits", type=int, nargs="+", default=[6, 12, 18, 24])
    ap.add_argument("--frames", type=int, default=None, help="first N frames only (default all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True, help="results path without suffix")


def start(args: argparse.Namespace) -> tuple[List[Path], dict]:
    """Set the torch threads → (the clips of ``args.inputs``: a clip or a folder's videos,
    sorted; the results so far in OUT.json, or a fresh ``{"clips": {}}``, stamped with this
    run's machine and date)."""
    torch.set_num_threads(args.threads)
    clips = [args.inputs] if args.inputs.is_file() else sorted(
        p for p in args.inputs.iterdir() if p.suffix.lower() in VIDEO_EXTS)
    js = args.out.with_suffix(".json")
    res = json.loads(js.read_text()) if js.exists() else {"clips": {}}
    res.update(machine=f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
               date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    return clips, res


def save(res: dict, out: Path, report: Callable[[dict, Path], None]) -> None:
    """Write the results so far to OUT.json and ``report(res, out)`` (OUT.md)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    report(res, out)
