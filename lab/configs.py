"""Experiment-only tokenizer configurations (never shipped as a model) and the lab's table of all
configurations by name: the package's :data:`neuralcodec.configs.CONFIGS` plus these."""
import dataclasses

from neuralcodec.configs import CONFIGS, DEFAULT, TokenizerConfig

# The paper's tokenizer (MAGVIT-v2, Table 7 / Open-MAGVIT2 sizes): full 3D kernels, 128 base
# channels, 4 residual blocks per level, 8× spatial and 4× temporal downsampling, 18 bits.
PAPER = TokenizerConfig(
    bits=18,
    stem_patch=1,
    enc_channels=(128, 256, 256, 512),
    dec_channels=(128, 256, 256, 512),
    enc_blocks=(4, 4, 4, 4),
    dec_blocks=(4, 4, 4, 4),
    spatial_down=(True, True, True),
    temporal_down=(False, True, True),
    factorized=False,
    norm_groups=32,
)

# The default's layers at 4× space, 4× time: its second spatial ×2 step left out, so levels 2
# and 3 run at H/4 and a token covers 4×4 pixels of 4 frames (4× the tokens of `default`, the
# same weights' shapes except one decoder Upsample; lab/train/surgery.py's change_factors converts).
S4 = dataclasses.replace(DEFAULT, spatial_down=(True, False, False))

# The default's layers at 8× space, 2× time: its last temporal ×2 step left out, so the deepest
# level runs at half the frame rate and a token covers 8×8 pixels of 2 frames (2× the tokens of
# `default`; the same weights' shapes except the deepest decoder Upsample, converted by
# lab/train/surgery.py's change_factors).
T2 = dataclasses.replace(DEFAULT, temporal_down=(False, True, False))


# Every configuration the lab can train or export, by name.
LAB_CONFIGS = {**CONFIGS, "paper": PAPER, "s4": S4, "t2": T2}

__all__ = ["LAB_CONFIGS", "PAPER", "S4", "T2", "TokenizerConfig"]
