"""The command line of the training entry point (``python -m lab.train``), generated from the
dataclasses: every field of :class:`~lab.train.config.TrainConfig`, of its
:class:`~lab.train.data.BatchSpec` (``batches``) and of its
:class:`~lab.train.losses.LossWeights` (``loss``) is a ``--flag`` with the field's
default, type and comment as help. Other tools (``lab/gpu_train.py``) parse and check a recipe
with the same parser before it is sent anywhere."""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import typing
from typing import Dict, Optional, Sequence

from .data import BatchSpec
from .losses import LossWeights
from .config import TrainConfig

NESTED = {"batches": BatchSpec, "loss": LossWeights}  # TrainConfig fields whose fields are flags


def _ints(s: str):
    return tuple(int(v) for v in s.split(",") if v.strip())


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {s}")


def field_comments(cls) -> Dict[str, str]:
    """Field name → the comment lines written above it in the class body, joined (the
    dataclass convention of this package: one comment per field)."""
    out: Dict[str, str] = {}
    pending = []
    for line in inspect.getsource(cls).splitlines():
        s = line.strip()
        if s.startswith("#"):
            pending.append(s.lstrip("#").strip())
            continue
        m = re.match(r"(\w+)\s*:", s)
        if m and pending:
            out[m.group(1)] = " ".join(pending)
        pending = []
    return out


def _add_fields(ap: argparse.ArgumentParser, cls, default, prefix: str, seen: set) -> None:
    hints = typing.get_type_hints(cls)
    notes = field_comments(cls)
    for f in dataclasses.fields(cls):
        if prefix == "" and f.name in NESTED:
            continue
        if f.name in seen:
            raise ValueError(f"training flag --{f.name} defined twice")
        seen.add(f.name)
        tp = hints[f.name]
        if tp is bool:
            kind, metavar = _bool, "true/false"
        elif typing.get_origin(tp) is tuple:
            kind, metavar = _ints, "B,B,..."
        else:
            kind, metavar = tp, f.name.upper()
        ap.add_argument(f"--{f.name.replace('_', '-')}", dest=prefix + f.name, type=kind,
                        default=getattr(default, f.name), metavar=metavar,
                        help=notes.get(f.name, "").replace("%", "%%") + " [default: %(default)s]")


def build_parser(**kw) -> argparse.ArgumentParser:
    """An ArgumentParser with one flag per training setting (defaults, types and help from the
    dataclass fields); ``kw`` goes to ArgumentParser."""
    ap = argparse.ArgumentParser(**kw)
    d = TrainConfig()
    seen: set = set()
    _add_fields(ap, TrainConfig, d, "", seen)
    for name, cls in NESTED.items():
        _add_fields(ap, cls, getattr(d, name), name + ".", seen)
    return ap


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    """Parsed flags of :func:`build_parser` → :class:`TrainConfig`."""
    a = dict(vars(a))
    nested = {name: cls(**{f.name: a.pop(f"{name}.{f.name}") for f in dataclasses.fields(cls)})
              for name, cls in NESTED.items()}
    return TrainConfig(**a, **nested)


def parse_train_args(argv: Optional[Sequence[str]] = None, **kw) -> TrainConfig:
    """``python -m lab.train`` flags (``argv``; default ``sys.argv[1:]``) →
    :class:`TrainConfig`. A bad flag or value exits with argparse's usage message (status 2)."""
    return config_from_args(build_parser(**kw).parse_args(argv))
