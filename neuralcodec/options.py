"""Encode options: one object from the command line down, validated once against the model.

``mgv encode`` / ``mgv tokens`` build an :class:`EncodeOptions` from their flags;
:func:`neuralcodec.codec.compress_to_file` and :func:`neuralcodec.tokens.tokenize` take it (or
the same fields as keywords) and check it once, at their entry, with :meth:`EncodeOptions.checked`:
an object already checked for the same model is not checked again. Every rule about what an
encode option may be is written here and nowhere else.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch

from . import container as ct
from .configs import DEFAULT_PRESET, DEFAULT_RDO, DEFAULT_REFINE, PRESETS
from .errors import InputError
from .finetune import MAX_ADAPT
from .jointfit import MAX_JOINT
from .refine import MAX_REFINE, check_refine_size
from .weights import default_bits, model_identity

# Entropy modes of ``--entropy`` and the header value each writes (spec §5).
ENTROPY_MODES = {"none": ct.ENTROPY_NONE, "context": ct.ENTROPY_CONTEXT}


def _positive(name: str, v) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                          or not 0 < v < math.inf):
        raise InputError(f"{name} must be a positive number, got {v!r}")


@dataclass(frozen=True)
class EncodeOptions:
    """What an encode stores and how hard the encoder works (everything but the input, the
    output and where the model runs)."""

    bits: Optional[int] = None  # bits stored per token, the first b of the nested code (1..K;
    #   None: the model's default on its RD hull, all K under rate control; see stored_bits)
    entropy: str = "context"  # segment coding: "context" (entropy coded where smaller) or "none"
    segment_frames: Optional[int] = None  # frames per segment, 1 + f·k (None: about 2 s of video)
    bitrate: Optional[float] = None  # rate control: target video bits per second (None: off)
    bpp: Optional[float] = None  # rate control: target video bits per pixel (None: off)
    rdo: float = DEFAULT_RDO  # λ of the repeat-a-token choice, squared error in steps (0: off)
    refine: int = DEFAULT_REFINE  # Adam steps per decoder chunk optimising the codes (0: off)
    adapt: int = 0  # Adam steps fitting the decoder to the video, sent as an ADAPT record (0: off)
    joint: int = 0  # passes fitting the decoder and the codes together, instead of adapt (0: off)
    # (model name, sha256 prefix, K) this object was checked for; set by checked() only
    checked_for: Optional[Tuple[str, bytes, int]] = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, options: Optional["EncodeOptions"] = None, **fields) -> "EncodeOptions":
        """``options`` (default: the defaults) with ``fields`` replaced → InputError for a name
        that is not an encode option."""
        options_names = {f.name for f in dataclasses.fields(cls)} - {"checked_for"}
        unknown = set(fields) - options_names
        if unknown:
            raise InputError(f"unknown encode option(s): {', '.join(sorted(unknown))}")
        base = options if options is not None else cls()
        return dataclasses.replace(base, checked_for=None, **fields) if fields else base

    @classmethod
    def from_preset(cls, preset: Optional[str] = None, **fields) -> "EncodeOptions":
        """The options of ``preset`` (default :data:`DEFAULT_PRESET`) with ``fields`` (those not
        None) replacing its values → InputError for an unknown preset name."""
        name = DEFAULT_PRESET if preset is None else preset
        if name not in PRESETS:
            raise InputError(f"unknown preset {name!r} (use {', '.join(PRESETS)})")
        given = {k: v for k, v in fields.items() if v is not None}
        preset = dict(PRESETS[name])
        if given.get("bitrate") is not None or given.get("bpp") is not None:
            for k in ("adapt", "joint"):  # a preset's adaptation stands aside for a target rate
                if k not in given:
                    preset[k] = 0
        for k, other in (("adapt", "joint"), ("joint", "adapt")):
            if given.get(k) and other not in given:
                preset[other] = 0  # an explicit way of fitting the update replaces the preset's
        return cls.of(None, **{**preset, **given})

    def checked(self, model: torch.nn.Module) -> "EncodeOptions":
        """These options validated for ``model`` → a copy marked as checked for it (returned as it
        is when already checked for the same model) → InputError naming the bad option."""
        name, prefix = model_identity(model)
        ident = (name, prefix, int(model.cfg.bits))
        if self.checked_for == ident:
            return self
        if self.entropy not in ENTROPY_MODES:
            raise InputError(f"unknown entropy mode {self.entropy!r} (use none or context)")
        k = model.cfg.bits
        b = self.bits
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= k):
            raise InputError(f"bits must be in 1..{k} for model {name}, got {b}")
        tf = model.cfg.temporal_factor
        s = self.segment_frames
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 1 or (s - 1) % tf
                              or s > ct.MAX_SEGMENT_FRAMES):
            raise InputError(f"segment frames must be 1 + {tf}·k (<= {ct.MAX_SEGMENT_FRAMES}), got {s}")
        if self.bitrate is not None and self.bpp is not None:
            raise InputError("give a target bitrate or bpp, not both")
        _positive("bitrate", self.bitrate)
        _positive("bpp", self.bpp)
        r = self.rdo
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < math.inf:
            raise InputError(f"rdo lambda must be a number >= 0, got {r!r}")
        n = self.refine
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_REFINE:
            raise InputError(f"refine steps must be an integer in 0..{MAX_REFINE}, got {n!r}")
        a = self.adapt
        if isinstance(a, bool) or not isinstance(a, int) or not 0 <= a <= MAX_ADAPT:
            raise InputError(f"adapt steps must be an integer in 0..{MAX_ADAPT}, got {a!r}")
        j = self.joint
        if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j <= MAX_JOINT:
            raise InputError(f"joint passes must be an integer in 0..{MAX_JOINT}, got {j!r}")
        if a and j:
            raise InputError("--adapt and --joint both fit the decoder to the video: give one")
        if (a or j) and (self.bitrate is not None or self.bpp is not None):
            raise InputError(f"--{'adapt' if a else 'joint'} cannot be combined with a target rate "
                             "(its record's bytes are not budgeted): use --bits")
        return dataclasses.replace(self, checked_for=ident)

    def stored_bits(self, model: torch.nn.Module) -> int:
        """Bits per token the encode stores (at most, under rate control): ``bits`` when given;
        with rate control all K (the target decides); otherwise the model's default, its
        measured RD knee (:func:`neuralcodec.weights.default_bits`)."""
        if self.bits is not None:
            return self.bits
        if self.bitrate is not None or self.bpp is not None:
            return int(model.cfg.bits)
        return default_bits(model)

    def check_frame_size(self, width: int, height: int) -> None:
        """InputError when the encoder effort asked for cannot run on frames of this size."""
        check_refine_size(width, height, self.refine or self.joint)

    def target_bitrate(self, width: int, height: int, fps: float) -> Optional[float]:
        """The rate-control target in bits per second for this frame size and rate, or None."""
        return self.bpp * width * height * fps if self.bpp is not None else self.bitrate
