"""Issue 32 probe (session 27): the joint fit's knobs (``mgv encode --joint N``) on a validation
cut — the update's and the codes' learning rates, the update's quantization step (Δ = 2^round(
log2(q·rms))), the MS-SSIM weight of the loss — every byte counted, the stream decoded as
``mgv decode`` decodes it.

    nice python -m lab.studies.joint_tune CLIP.y4m --passes P [--refine R] [--lr-update X]
        [--lr-codes X] [--q X] [--msssim X] [--bits B] [--out F.jsonl]

Validation clips only (cut from ../shared/data/train). Prints (and appends to --out) one JSON line:
the knobs, bytes, PSNR-RGB, MS-SSIM, encode seconds, the encoder's summary per group.
"""
import argparse
import io
import json
import time

import torch

from neuralcodec import codec, finetune, jointfit
from neuralcodec.evaluate import frame_mse, ms_ssim_rgb, psnr_from_mse
from neuralcodec.options import EncodeOptions
from neuralcodec.video_io import read_rgb
from neuralcodec.weights import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("clip")
    ap.add_argument("--passes", type=int, required=True)
    ap.add_argument("--refine", type=int, default=5)
    ap.add_argument("--lr-update", type=float, default=jointfit.JOINT_LR)
    ap.add_argument("--lr-codes", type=float, default=jointfit.REFINE_LR)
    ap.add_argument("--q", type=float, default=1.0, help="the update's quantization step (× rms)")
    ap.add_argument("--msssim", type=float, default=jointfit.ADAPT_MSSSIM)
    ap.add_argument("--bits", type=int, default=18)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(2)
    jointfit.JOINT_LR, jointfit.REFINE_LR, jointfit.ADAPT_MSSSIM = a.lr_update, a.lr_codes, a.msssim
    jointfit.quantize = lambda d, q=1.0: finetune.quantize(d, a.q)
    net = load_model()
    clip = read_rgb(a.clip)
    buf = io.BytesIO()
    t = time.time()
    res = codec.compress_to_file(net, clip, buf, EncodeOptions(bits=a.bits, joint=a.passes,
                                                               refine=a.refine))
    secs = time.time() - t
    data = buf.getvalue()
    _, rec = codec.decompress(data)
    row = {k: v for k, v in vars(a).items() if k != "out"}
    row.update({"bytes": len(data), "seconds": round(secs, 1),
                "psnr": round(float(psnr_from_mse(float(frame_mse(clip[:len(rec)], rec).mean()))), 3),
                "ms_ssim": round(ms_ssim_rgb(clip[:len(rec)], rec)["ms_ssim"], 4),
                "groups": [{k: g.get(k) for k in ("gain_db", "update_bytes", "kept")}
                           for g in (res.adaptation or {}).get("groups", [res.adaptation or {}])]})
    print(json.dumps(row), flush=True)
    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
