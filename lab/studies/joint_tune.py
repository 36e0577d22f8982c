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


def add_extra(prefixes, scale: float) -> None:
    """Probe only: the joint fit's update also moves the decoder parameters named by
    ``prefixes``, at ``scale`` × its learning rate (a second Adam parameter group)."""
    extra_ids = set()

    def names(fm):
        base = finetune.adapt_names(fm)
        more = [f"decoder.{n}" for n, _ in fm.decoder.named_parameters()
                if n.startswith(tuple(prefixes)) and f"decoder.{n}" not in base]
        params = dict(fm.named_parameters())
        extra_ids.update(id(params[n]) for n in more)
        return sorted(base + more)

    class Adam(torch.optim.Adam):  # every Adam of this process: the update's gets two groups
        def __init__(self, params, lr):
            params = list(params)
            if not any(id(p) in extra_ids for p in params):
                super().__init__(params, lr=lr)
                return
            super().__init__([{"params": [p for p in params if id(p) not in extra_ids], "scale": 1.0},
                              {"params": [p for p in params if id(p) in extra_ids], "scale": scale}],
                             lr=lr)

        def step(self, closure=None):
            lrs = [g["lr"] for g in self.param_groups]
            for g in self.param_groups:
                g["lr"] *= g.get("scale", 1.0)
            out = super().step(closure)
            for g, lr in zip(self.param_groups, lrs):
                g["lr"] = lr
            return out

    jointfit.adapt_names = names
    torch.optim.Adam = Adam


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("clip")
    ap.add_argument("--passes", type=int, required=True)
    ap.add_argument("--refine", type=int, default=5)
    ap.add_argument("--lr-update", type=float, default=jointfit.JOINT_LR)
    ap.add_argument("--lr-codes", type=float, default=jointfit.REFINE_LR)
    ap.add_argument("--q", type=float, default=1.0, help="the update's quantization step (× rms)")
    ap.add_argument("--msssim", type=float, default=jointfit.ADAPT_MSSSIM)
    ap.add_argument("--extra", default="",
                    help="comma list of decoder parameter-name prefixes whose weights join the update "
                         "(e.g. levels.2.,ups.2.,out.conv.weight)")
    ap.add_argument("--extra-lr-scale", type=float, default=0.2,
                    help="their learning rate as a fraction of the update's (conv weights want less)")
    ap.add_argument("--bits", type=int, default=18)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(2)
    jointfit.JOINT_LR, jointfit.REFINE_LR, jointfit.ADAPT_MSSSIM = a.lr_update, a.lr_codes, a.msssim
    jointfit.quantize = lambda d, q=1.0: finetune.quantize(d, a.q)
    if a.extra:
        add_extra(a.extra.split(","), a.extra_lr_scale)
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
