"""What the whole-clip benchmarks (bench_adapt, bench_decoders) share: their common options,
the clips of ``--inputs`` and the results file they resume from."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List

import torch

from neuralcodec.video_io import VIDEO_EXTS


def add_clip_options(ap: argparse.ArgumentParser) -> None:
    """``--frames``, ``--threads`` and ``--out`` (results path without suffix)."""
    ap.add_argument("--frames", type=int, default=None, help="first N frames only (default all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True, help="results path without suffix")


def start(args: argparse.Namespace) -> tuple[List[Path], Path, dict]:
    """Set the torch threads → (the clips of ``args.inputs``: a clip or a folder's videos,
    sorted; OUT.json; its results so far, or a fresh ``{"clips": {}}``)."""
    torch.set_num_threads(args.threads)
    clips = [args.inputs] if args.inputs.is_file() else sorted(
        p for p in args.inputs.iterdir() if p.suffix.lower() in VIDEO_EXTS)
    js = args.out.with_suffix(".json")
    return clips, js, json.loads(js.read_text()) if js.exists() else {"clips": {}}
