"""The command line of the training entry point (``tools/train.py``): every
:class:`~neuralcodec.train.loop.TrainConfig` and :class:`~neuralcodec.train.losses.LossWeights`
field is a ``--flag``. Other tools (``tools/gpu_train.py``) parse and check a recipe with the
same parser before it is sent anywhere."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Optional, Sequence

from .losses import LossWeights
from .loop import TrainConfig

_STR = ("model", "data", "out", "cache", "stills", "device", "eval_dir", "init", "arch", "clock",
        "train_only")
_INT = ("batch", "frames", "crop", "image_batch", "image_crop", "warmup", "threads", "seed",
        "short_side", "log_every", "steps", "ckpt_every", "workers", "eval_every",
        "eval_frames", "eval_short_side", "disc_channels", "disc_layers")
_FLOAT = ("lr", "minutes", "image_frac", "nested_prob", "ema", "ckpt_minutes", "lr_floor", "clip",
          "still_frac", "disc_lr", "image_first", "adam_beta2")
_INTS = ("nested_bits", "eval_bits")


def _ints(s: str):
    return tuple(int(v) for v in s.split(",") if v.strip())


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {s}")


def build_parser(**kw) -> argparse.ArgumentParser:
    """An ArgumentParser with one flag per training setting (defaults from TrainConfig and
    LossWeights); ``kw`` goes to ArgumentParser."""
    ap = argparse.ArgumentParser(**kw)
    d = TrainConfig()
    for name in _STR:
        ap.add_argument(f"--{name.replace('_', '-')}", dest=name, default=getattr(d, name))
    for name in _INT:
        ap.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=getattr(d, name))
    for name in _FLOAT:
        ap.add_argument(f"--{name.replace('_', '-')}", dest=name, type=float, default=getattr(d, name))
    for name in _INTS:
        ap.add_argument(f"--{name.replace('_', '-')}", dest=name, type=_ints, default=getattr(d, name),
                        help="comma-separated bit counts")
    ap.add_argument("--bf16", type=_bool, default=d.bf16, help="bf16 autocast on CUDA (true/false)")
    ap.add_argument("--cpu-bf16", type=_bool, default=d.cpu_bf16,
                    help="bf16 autocast on CPU too (true/false; fast with AVX512-BF16 or AMX)")
    ap.add_argument("--init-partial", type=_bool, default=d.init_partial,
                    help="with --init: copy only tensors whose name and shape match (true/false)")
    lw = LossWeights()
    for f in dataclasses.fields(LossWeights):
        ap.add_argument(f"--{f.name.replace('_', '-')}", dest=f"loss_{f.name}", type=type(getattr(lw, f.name)),
                        default=getattr(lw, f.name), help=f"loss weight / setting {f.name}")
    return ap


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    """Parsed flags of :func:`build_parser` → :class:`TrainConfig`."""
    a = dict(vars(a))
    loss = LossWeights(**{f.name: a.pop(f"loss_{f.name}") for f in dataclasses.fields(LossWeights)})
    return TrainConfig(loss=loss, **a)


def parse_train_args(argv: Optional[Sequence[str]] = None, **kw) -> TrainConfig:
    """``tools/train.py`` flags (``argv``; default ``sys.argv[1:]``) → :class:`TrainConfig`.
    A bad flag or value exits with argparse's usage message (status 2)."""
    return config_from_args(build_parser(**kw).parse_args(argv))
