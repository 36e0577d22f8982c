"""Issue 32 probe (session 24): the refinement's rate weight μ and the RDO λ once each step
decodes the codes the RDO will store (``refine.refine_latents(rdo=λ)``).

    nice python -m lab.studies.refine_rdo_sweep CLIP.y4m BITS μ,λ[,m] [μ,λ[,m] ...]

Validation clips only (cut from ../shared/data/train). Each variant encodes the clip as
``mgv encode --bits BITS --rdo λ --refine 20`` does (the shipped model, refined through the
decoder that decodes the stream), with ``refine_latents``' rate weight set to μ (and the MS-SSIM weight
of its distortion to m, default 0); prints bytes (the whole stream), PSNR-RGB and MS-SSIM over
all frames and encode seconds. 2 threads.
"""
import functools
import sys
import time

import torch

from neuralcodec import codec
from neuralcodec import refine as R
from neuralcodec.evaluate import frame_mse, ms_ssim_rgb, psnr_from_mse
from neuralcodec.video_io import read_rgb
from neuralcodec.weights import load_model


def main() -> None:
    clip_path, bits = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(2)
    clip = read_rgb(clip_path)
    model = load_model()
    orig = R.refine_latents
    for spec in sys.argv[3:]:
        mu, lam, ms = (list(map(float, spec.split(","))) + [0.0])[:3]
        R.refine_latents = functools.partial(orig, rate=mu, msssim=ms)
        t = time.time()
        data = codec.compress(model, clip, bits=bits, rdo=lam, refine=20)
        secs = time.time() - t
        _, rec = codec.decompress(data)
        p = float(psnr_from_mse(float(frame_mse(clip[:len(rec)], rec).mean())))
        print(clip_path, bits, spec, len(data), round(p, 3),
              round(ms_ssim_rgb(clip[:len(rec)], rec)["ms_ssim"], 4), round(secs, 1), flush=True)
    R.refine_latents = orig


if __name__ == "__main__":
    main()
