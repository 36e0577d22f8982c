"""What decoder adaptation (:mod:`neuralcodec.finetune`) works on: the segments each update
covers, and the frames the encoder keeps — training windows spread over the whole video, in
bounded memory, taken from the frames as they stream past the encoder (one pass over the input)."""
from __future__ import annotations

from typing import Iterator, List, Optional, Tuple

import numpy as np

from .tokenfile import MAX_ADAPT_RECORDS

WINDOW_LATENTS = 5  # latent frames of a training window (17 or 20 frames of the shipped model)
SAMPLE_WINDOWS = 256  # training windows whose frames the encoder keeps …
SAMPLE_BYTES = 256 << 20  # … within this many bytes of frames (at least one window)
# One update per group of at most this many consecutive segments (about 8 s at the default
# segment length), each trained for the steps asked: a video's scenes get their own decoder.
ADAPT_SEGMENTS = 4


def window_frames(j: int, tf: int) -> Tuple[int, int]:
    """Frames (first, end) of a segment that the latent frames ``j … j+WINDOW_LATENTS-1``
    decode to: latent 0 → frame 0, latent i ≥ 1 → frames ``tf·(i−1)+1 … tf·i``."""
    first = 0 if j == 0 else 1 + tf * (j - 1)
    return first, 1 + tf * (j + WINDOW_LATENTS - 1)


class FrameSampler:
    """Wraps a frame iterator and keeps the frames of up to :data:`SAMPLE_WINDOWS` training
    windows within :data:`SAMPLE_BYTES`: each segment's latent frames cut into windows of
    :data:`WINDOW_LATENTS` (starting at latent 0, W, 2W, …), the kept ones spread evenly over
    a stream of ``frames`` frames (the first windows when the count is unknown)."""

    def __init__(self, seg_frames: int, frames: Optional[int], width: int, height: int,
                 temporal_factor: int) -> None:
        tf = self.tf = temporal_factor
        self.seg_frames = seg_frames
        per = tf * WINDOW_LATENTS * width * height * 3
        n = max(1, min(SAMPLE_WINDOWS, SAMPLE_BYTES // per))
        lengths = ([min(seg_frames, frames - f) for f in range(0, frames, seg_frames)] if frames
                   else [seg_frames] * n)
        every = [(i, j) for i, length in enumerate(lengths)
                 for j in range(0, 1 + -(-(length - 1) // tf), WINDOW_LATENTS)]
        pick = sorted(set(int(i) for i in np.linspace(0, len(every) - 1, min(n, len(every))).round()))
        self.kept = {every[i]: [] for i in pick}

    def wrap(self, it: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for k, f in enumerate(it):
            seg, pos = divmod(k, self.seg_frames)
            latent = 0 if pos == 0 else 1 + (pos - 1) // self.tf
            key = (seg, latent // WINDOW_LATENTS * WINDOW_LATENTS)
            if key in self.kept:
                self.kept[key].append(f)
            yield f

    def samples(self) -> List[Tuple[Tuple[int, int], List[np.ndarray]]]:
        """((segment, first latent frame), its frames ``H×W×3`` uint8) of every kept window."""
        return [(key, fr) for key, fr in self.kept.items() if fr]


def segment_groups(count: int, per: Optional[int] = None) -> List[Tuple[int, int]]:
    """The (first, count) ranges of the updates of a stream of ``count`` segments: as few
    consecutive groups of at most ``per`` (default :data:`ADAPT_SEGMENTS`) segments as cover
    it, of sizes differing by at most 1, the larger first — and at most
    :data:`~neuralcodec.tokenfile.MAX_ADAPT_RECORDS` groups (the records a tokens file carries;
    longer streams get larger groups)."""
    n = min(MAX_ADAPT_RECORDS, max(1, -(-count // (per or ADAPT_SEGMENTS))))
    cuts = [-(-i * count // n) for i in range(n + 1)]
    return [(a, b - a) for a, b in zip(cuts, cuts[1:])]
