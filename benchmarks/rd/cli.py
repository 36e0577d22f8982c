"""Command line: ``python -m benchmarks.rd --inputs DIR_OR_FILES… [options]``."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import List, Optional

from neuralcodec.errors import MGVError

from .codecs import ANCHOR, DEFAULT_CODECS, QUICK_CODECS
from .report import write_report
from .runner import BenchConfig, run_benchmark
from .source import parse_size


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rd",
                                description="Rate-distortion and speed benchmark of mgv against x265/vvenc/x264.")
    p.add_argument("--inputs", nargs="+", required=True, help="video files and/or folders of videos")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output folder (report, cache/)")
    p.add_argument("--work", type=Path, default=Path("benchmarks/.work"), help="scratch folder")
    p.add_argument("--frames", type=int, default=None, help="frames per sequence (default 33, quick 9)")
    p.add_argument("--max-size", default=None,
                   help="fit inside WxH by area downscale, or 'native' (default 640x360, quick 320x180)")
    p.add_argument("--codecs", default=None,
                   help=f"comma-separated codec names (default {','.join(DEFAULT_CODECS)})")
    p.add_argument("--anchor", default=ANCHOR, help="BD-rate reference codec")
    p.add_argument("--quick", action="store_true",
                   help=f"9 frames, 320x180, 4 points, codecs {','.join(QUICK_CODECS)} (a few minutes)")
    p.add_argument("--no-cache", action="store_true", help="recompute every result")
    p.add_argument("--no-vmaf", action="store_true", help="skip VMAF")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS (computed when its weights load offline)")
    p.add_argument("--keep-decoded", action="store_true", help="keep decoded frames in the work folder")
    return p


def config_from_args(args: argparse.Namespace, argv: List[str]) -> BenchConfig:
    frames = args.frames if args.frames is not None else (9 if args.quick else 33)
    size = args.max_size or ("320x180" if args.quick else "640x360")
    max_size = None if size == "native" else parse_size(size)
    codecs = tuple(c.strip() for c in args.codecs.split(",")) if args.codecs else \
        (QUICK_CODECS if args.quick else DEFAULT_CODECS)
    return BenchConfig(inputs=list(args.inputs), out=args.out, work=args.work, frames=frames, max_size=max_size,
                       codecs=codecs, anchor=args.anchor, quick=args.quick, use_cache=not args.no_cache,
                       vmaf=not args.no_vmaf, lpips=not args.no_lpips, keep_decoded=args.keep_decoded,
                       command=shlex.join(["python", "-m", "benchmarks.rd", *argv]))


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args, argv)
        results = run_benchmark(cfg)
        paths = write_report(results, cfg.out)
    except MGVError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(paths["report"])
    return 0
