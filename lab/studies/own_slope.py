"""Issue 32 probe (session 24): the RD slope the encoder measures for its update decision
(``finetune.Fitting.own_slope``) on a clip's default-preset streams, to compare with the chords
of the clip's plain curve (``mgv encode --bits B`` at the ladder's points).

    nice python -m lab.studies.own_slope CLIP.y4m BITS [BITS ...]

Validation clips only (cut from ../shared/data/train). Prints bits, stream bytes, the slope
(dB per doubling of bytes), whether it was measured above the rate, the windows it used, seconds.
"""
import io
import sys
import time

import torch

from neuralcodec import codec, finetune, sampling
from neuralcodec import container as ct
from neuralcodec.video_io import read_rgb
from neuralcodec.weights import load_model


def main() -> None:
    torch.set_num_threads(2)
    net = load_model()
    clip = read_rgb(sys.argv[1])
    for b in map(int, sys.argv[2:]):
        data = codec.compress(net, clip, bits=b)
        seg = ct.Reader(io.BytesIO(data)).header.segment_frames
        s = sampling.FrameSampler(seg, len(clip), clip.shape[2], clip.shape[1],
                                  net.cfg.temporal_factor)
        list(s.wrap(iter(clip)))
        t = time.time()
        fit = finetune.Fitting(net, data, s.samples())
        secs = time.time() - t
        above = fit.slope_above() is not None
        print(b, len(data), round(fit.slope, 3), "above" if above else "below/fallback",
              len(fit.evals), round(secs, 1), flush=True)


if __name__ == "__main__":
    main()
