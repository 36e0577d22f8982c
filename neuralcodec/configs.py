"""Tokenizer configurations.

A configuration fixes the architecture of the causal video tokenizer (and so the layout of
its weights). Configs are plain frozen dataclasses; the registry in :mod:`neuralcodec.weights`
pairs a config with a weights file under a stable model name.

Layout conventions used throughout the package:

* video: ``B×3×T×H×W``, float in [-1, 1] (RGB).
* latent codes: ``B×K×t×h×w``, float in {-1, +1} (0 marks a dropped bit), with
  ``t = 1 + (T - 1) / temporal_factor`` and ``h = H / spatial_factor``.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Tuple

# The registered model that encodes when none is named (its weights and card live in
# neuralcodec/models/; neuralcodec.weights loads it). Here, in a module without torch, so that
# the command line's help can name it without importing torch.
DEFAULT_MODEL = "mgv-default-v6"

# Default λ of the encoder's rate–distortion choice to repeat a token of the previous latent
# frame (neuralcodec.rdo; `mgv encode --rdo`): the squared quantization error, in steps, a
# repeat may add to a token; tuned on the validation clips held apart from ../shared/data/train
# (python -m lab.studies.rdo_sweep → lab/notes/rdo.md), never on eval/.
DEFAULT_RDO = 2.0

# Encoder-side latent refinement (neuralcodec.refine; `mgv encode --refine N`): Adam steps per
# decoder chunk (0 = off, the default: each step costs about 3 decoder passes) and their
# learning rate on the unbounded channel values. The rate was chosen on the validation clips
# (12 bits, λ 2, 10 steps; 2026-11-24): 0.02 → 23.55 dB @ 0.01089 bpp, 0.05 → 23.62 @ 0.01112,
# 0.1 → 23.65 @ 0.01158, 0.2 → 23.65 @ 0.01276 (no refinement: 23.04 @ 0.01020).
DEFAULT_REFINE = 0
REFINE_LR = 0.05
# The refinement's rate term (neuralcodec.refine): its weight against the MSE, and the cap (in
# squared quantization steps) of a token's pull toward the previous latent frame's codes. Chosen
# on the validation clips (lab/notes/refine_rate.md): 1e-3 while the RDO ran after refinement
# (2026-12-07, 18 bits: 13–18% fewer bytes than no term for 0.02–0.29 dB); 2e-3 since each step
# judges the codes the RDO stores (session 24, 65 frames of car and juggle at 6 and 18 bits: of
# 1e-3, 2e-3 and 3e-3 the one at or above the earlier refinement's curve on all four points).
REFINE_RATE = 2e-3
REFINE_RATE_CAP = 4.0
# Weight of the MS-SSIM term of the refinement's distortion (neuralcodec.losses.distortion).
REFINE_MSSSIM = 0.0
# Largest frame (pixels) refinement accepts: the backward pass through one decoder chunk of
# 4 frames peaks at 7 GB at 1280×720 and 14 GB at 1920×1080 (float32 model, bf16 autocast).
REFINE_MAX_PIXELS = 1920 * 1088

# Encoder effort presets (`mgv encode --preset`), fastest first: each sets the encoder's choice of
# codes (rdo λ, refinement steps) and how long it fits the decoder to the video (adapt steps,
# neuralcodec.finetune; sent as an ADAPT record when it pays); an --rdo, --refine or --adapt
# given explicitly overrides it. Encode time and gain of each, measured on the validation clips:
# docs/cli.md ("Presets"). Veryslow's limit is time: a 300-frame CIF clip in 20 minutes on 2 cores.
# Since session 26 it fits the update and the codes together (--joint, neuralcodec.jointfit: on
# validation cuts +0.9 dB over adapt 500 + refine 20 in less time, lab/notes/joint_fit.md), 25
# passes then 5 refinement steps through the quantized update.
PRESETS = {
    "fast": {"rdo": DEFAULT_RDO, "refine": DEFAULT_REFINE, "adapt": 0, "joint": 0},  # RDO only (the encoder before presets)
    "medium": {"rdo": DEFAULT_RDO, "refine": 4, "adapt": 0, "joint": 0},
    "slow": {"rdo": DEFAULT_RDO, "refine": 10, "adapt": 200, "joint": 0},
    "veryslow": {"rdo": DEFAULT_RDO, "refine": 5, "adapt": 0, "joint": 25},
}
# The preset an encode uses when none is named (keeps DEFAULT_RDO / DEFAULT_REFINE).
DEFAULT_PRESET = "fast"


# Most LFQ bits per token anywhere in the package: the header's u8 bit fields (spec §3), the
# kernels' int32 token indices and the entropy coder all stop at 32.
MAX_BITS = 32

# `--decoder` choices besides a variant's name (neuralcodec.weights.decoder_variant): the
# registry's default decoder variant of the model (else its own decoder), and its own decoder.
DECODER_AUTO, DECODER_FULL = "auto", "full"
# The TokenizerConfig fields a decoder variant of a model may change (TokenizerConfig.same_code).
DECODER_LAYERS = ("dec_channels", "dec_blocks")

# TokenizerConfig.quantizer values (neuralcodec.quantizer implements them).
QUANTIZERS = ("lfq", "planes")


def latent_size(height: int, width: int, spatial_factor: int) -> Tuple[int, int]:
    """Token rows and columns of a ``height×width`` frame: (ceil(H / s), ceil(W / s)) (the
    frame is edge-padded to multiples of s)."""
    s = spatial_factor
    return -(-height // s), -(-width // s)


def latent_frames(frames: int, temporal_factor: int) -> int:
    """Latent frames of ``frames`` (>= 1) frames: 1 + ceil((frames - 1) / f) (the first frame
    alone, then f frames per latent frame; the last group is padded by repeating a frame)."""
    return 1 + -(-(max(frames, 1) - 1) // temporal_factor)



@dataclass(frozen=True)
class TokenizerConfig:
    """Architecture of a causal LFQ video tokenizer (MAGVIT-v2, §3)."""

    # Number of bits per token (K; LFQ signs or bit planes); the vocabulary has 2**K entries.
    bits: int = 18
    # Space-to-depth factor of the stem: the encoder starts by folding p×p pixel blocks into
    # channels and the decoder ends with the inverse depth-to-space. 1 = no stem folding.
    stem_patch: int = 2
    # Encoder channels per level; level 0 runs at H/stem_patch.
    enc_channels: Tuple[int, ...] = (32, 64, 128, 128)
    # Decoder channels per level (same level numbering as the encoder).
    dec_channels: Tuple[int, ...] = (32, 96, 160, 192)
    # Residual blocks per encoder level.
    enc_blocks: Tuple[int, ...] = (1, 1, 2, 1)
    # Residual blocks per decoder level.
    dec_blocks: Tuple[int, ...] = (1, 2, 2, 2)
    # Spatial ×2 downsampling between level i and i+1 (len = levels - 1).
    spatial_down: Tuple[bool, ...] = (True, True, False)
    # Temporal ×2 downsampling between level i and i+1 (len = levels - 1); deferred to the
    # last transitions as in the paper.
    temporal_down: Tuple[bool, ...] = (False, True, True)
    # True: every 3×3×3 convolution is factorized into a 1×3×3 spatial and a causal 3×1×1
    # temporal convolution (cheaper); False: full 3D kernels as in the paper.
    factorized: bool = True
    # Groups of the (per-frame) group normalization.
    norm_groups: int = 8
    # How the encoder's latents become the K bits of a token: "lfq" — one sign bit per latent
    # channel (MAGVIT-v2's lookup-free quantizer); "planes" — K / planes bounded latent
    # channels, each uniformly quantized to 2**planes levels (finite scalar quantization) and
    # sent as bit planes, the most significant plane of every channel first (so the first b
    # bits are a coarser quantization of the same channels); see neuralcodec.quantizer.
    quantizer: str = "lfq"
    # Bit planes per latent channel of the "planes" quantizer (2**planes levels each); 1 for "lfq".
    planes: int = 1
    # "planes" only: send the planes after the first as sign-magnitude bits (bit 1 = the channel's
    # magnitude is in the outer half of the cell) instead of offset-binary ones (bit 1 = above the
    # cell's middle). Same levels, same decoder; the magnitude bits are what neighbouring tokens
    # share, so the context coder codes them in fewer bytes (neuralcodec.quantizer.PlaneQuantizer).
    sign_magnitude: bool = False

    def __post_init__(self) -> None:
        levels = len(self.enc_channels)
        for name in ("dec_channels", "enc_blocks", "dec_blocks"):
            if len(getattr(self, name)) != levels:
                raise ValueError(f"{name} must have {levels} entries")
        for name in ("spatial_down", "temporal_down"):
            if len(getattr(self, name)) != levels - 1:
                raise ValueError(f"{name} must have {levels - 1} entries")
        if not 1 <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must be in 1..{MAX_BITS}")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {', '.join(QUANTIZERS)}")
        if self.planes < 1 or self.bits % self.planes or (self.quantizer == "lfq" and self.planes != 1):
            raise ValueError("planes must divide bits (and be 1 for the lfq quantizer)")
        if self.sign_magnitude and self.quantizer != "planes":
            raise ValueError("sign_magnitude needs the planes quantizer")
        if self.stem_patch < 1:
            raise ValueError("stem_patch must be >= 1")
        for c in self.enc_channels + self.dec_channels:
            if c % self.norm_groups:
                raise ValueError(f"channels {c} not divisible by norm_groups {self.norm_groups}")

    @property
    def latent_channels(self) -> int:
        """Channels of the encoder's output: K for "lfq", K / planes for "planes"."""
        return self.bits // self.planes

    @property
    def spatial_factor(self) -> int:
        """Total spatial downsampling (pixels per token side)."""
        return self.stem_patch * 2 ** sum(self.spatial_down)

    @property
    def temporal_factor(self) -> int:
        """Total temporal downsampling: 1 + k·f frames map to 1 + k latent frames."""
        return 2 ** sum(self.temporal_down)

    def same_code(self, other: "TokenizerConfig") -> bool:
        """True when ``other`` differs from this config at most in :data:`DECODER_LAYERS`: the
        same encoder, quantizer and geometry, so a decoder of either config decodes the other's
        tokens (a decoder variant, :mod:`neuralcodec.weights`)."""
        a, b = self.to_dict(), other.to_dict()
        return all(a[k] == b[k] for k in a if k not in DECODER_LAYERS)

    def to_dict(self) -> dict:
        """JSON-serializable form (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TokenizerConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)

    def with_json(self, text: str) -> "TokenizerConfig":
        """This config with the fields of ``text``, a JSON object (e.g. ``'{"sign_magnitude":
        true}'``), replaced; ValueError when it is not an object, names an unknown field or
        makes an invalid config."""
        over = json.loads(text)
        if not isinstance(over, dict):
            raise ValueError("not a JSON object")
        return TokenizerConfig.from_dict({**self.to_dict(), **over})


# The default CPU configuration: space-to-depth stem, factorized convolutions, a decoder wider
# than its encoder; same factors (8× space, 4× time) and bit count as the paper.
DEFAULT = TokenizerConfig()

# The default's layers with the "planes" quantizer: 6 latent channels × 8 levels sent as 3 bit
# planes (18 bits per token, as the default), and the encoder's shortcut from the token's mean
# colour (Encoder.skip). The first 6 bits are the sign of every channel, 12 bits a 4-level code.
P6 = dataclasses.replace(DEFAULT, quantizer="planes", planes=3)

# A tiny configuration for unit tests (a few thousand parameters).
TINY = TokenizerConfig(
    bits=6,
    stem_patch=2,
    enc_channels=(8, 8, 8),
    dec_channels=(8, 8, 8),
    enc_blocks=(1, 1, 1),
    dec_blocks=(1, 1, 1),
    spatial_down=(True, False),
    temporal_down=(True, True),
    factorized=True,
    norm_groups=4,
)

# The configurations by name (the shipped models store their own config in their weights file;
# experiment-only configurations live in the lab, lab/configs.py).
CONFIGS = {"default": DEFAULT, "p6": P6, "tiny": TINY}
