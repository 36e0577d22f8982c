"""Issue 32 probe (session 26): fit the decoder update and refine the codes *jointly*, in passes
over the whole clip, instead of one after the other.

    nice python -m lab.studies.joint_fit CLIP.y4m --bits 18 --epochs 20 --final 5 --out runs/joint.jsonl

Validation clips only (cut from ../shared/data/train), never eval/. What ``--preset veryslow``
does today: the update is fitted (Adam, 500 steps per group of segments) on random crops of
sampled windows with the encoder's codes fixed, then the codes are refined (20 Adam steps per
decoder chunk) through the adapted decoder. Both decode the same frames forward and backward;
here one pass does both: each epoch walks every segment chunk by chunk (the decoder's causal
state carried as the decode carries it), and each chunk's step moves its codes (refinement's
Adam, straight-through, the RDO's choice decoded, the rate term) and the update (the adaptation's
tensors and learning rate, cosine decay over all steps) with the same gradient — whole frames,
every frame of the clip. Then the update is quantized as the encoder quantizes it (``all``,
Δ ≈ rms), and ``--final`` refinement steps per chunk adjust the codes to the quantized decoder
(``refine.refine_latents``, which keeps the best codes it visits). The stream is written by the
codec's own writer (the codes swapped in) with the ADAPT record inserted; bytes and PSNR-RGB /
MS-SSIM of its decode are printed and appended to ``--out``.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import time

import numpy as np
import torch

from neuralcodec import codec, finetune, refine
from neuralcodec.adapt import Adaptation, TensorUpdate, tensor_names
from neuralcodec.chunks import decoder_step, encode_segment, frames_to_tensor, latent_chunks
from neuralcodec.configs import DEFAULT_RDO, REFINE_LR, REFINE_RATE, REFINE_RATE_CAP
from neuralcodec.evaluate import frame_mse, ms_ssim_rgb, psnr_from_mse
from neuralcodec.layers import StreamingModule, streaming
from neuralcodec.losses import distortion
from neuralcodec.model import for_inference, inference_dtype
from neuralcodec.options import EncodeOptions
from neuralcodec.video_io import read_rgb
from neuralcodec.weights import decoder_variant, load_model


def detach_state(dec) -> None:
    """Cut the carried causal state from the graph of the step that made it."""
    for m in dec.modules():
        if isinstance(m, StreamingModule):
            b = getattr(m, "buffer", None)
            if isinstance(b, torch.Tensor):
                m.buffer = b.detach()
            elif isinstance(b, list):
                m.buffer = [x.detach() for x in b]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("clip")
    ap.add_argument("--bits", type=int, default=18)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--final", type=int, default=5)
    ap.add_argument("--lr", type=float, default=finetune.ADAPT_LR)
    ap.add_argument("--zlr", type=float, default=REFINE_LR)
    ap.add_argument("--msssim", type=float, default=finetune.ADAPT_MSSSIM)
    ap.add_argument("--frames", type=int, default=0)
    ap.add_argument("--out", default="runs/joint.jsonl")
    a = ap.parse_args()
    torch.set_num_threads(2)
    model = for_inference(load_model("mgv-default-v6"), "cpu")
    frames = read_rgb(a.clip)
    if a.frames:
        frames = frames[:a.frames]
    t_all, h, w, _ = frames.shape
    meta, _ = codec.open_video(frames)
    opts = EncodeOptions.of(None, bits=a.bits).checked(model)
    hdr = codec.stream_header(model, meta, opts)
    seg = hdr.segment_frames
    t0 = time.perf_counter()
    # the encoder's latents of each segment (fresh causal state per segment, as the codec does)
    segs = []
    for s0 in range(0, t_all, seg):
        fr = list(frames[s0:s0 + seg])
        n, lat = encode_segment(model, iter(fr), meta, len(fr))
        segs.append((fr, lat.float()))
    fm = finetune._float_model(model)
    variant = decoder_variant(fm, "auto")
    fm = variant.float().eval() if variant is not None else fm
    for p in fm.parameters():
        p.requires_grad_(False)
    names = finetune.adapt_names(fm)
    params = dict(fm.named_parameters())
    train = [params[n] for n in names]
    base = [p.detach().clone() for p in train]
    for p in train:
        p.requires_grad_(True)
    popt = torch.optim.Adam(train, lr=a.lr)
    q, dec = fm.quantizer, fm.decoder
    tf = fm.cfg.temporal_factor
    step = decoder_step(w, h, tf)
    auto = inference_dtype("cpu") == torch.bfloat16
    # per chunk: its z (unbounded values) and its own Adam
    zs = []
    for fr, lat in segs:
        zc = []
        for c0, n in latent_chunks(lat.shape[2], step):
            z = q.unbounded(lat[:, :, c0:c0 + n]).clone().requires_grad_(True)
            zc.append((c0, n, z, torch.optim.Adam([z], lr=a.zlr)))
        zs.append(zc)
    total = a.epochs * sum(len(zc) for zc in zs)
    k = 0
    rdo = opts.rdo
    fm.train()
    for ep in range(a.epochs):
        ep_loss = []
        for (fr, lat), zc in zip(segs, zs):
            prev = None
            with streaming(dec):
                for c0, n, z, zopt in zc:
                    f0 = 0 if c0 == 0 else 1 + tf * (c0 - 1)
                    f1 = min(len(fr), 1 + tf * (c0 + n - 1))
                    target = fm.pad_spatial(frames_to_tensor(list(fr[f0:f1]), "cpu"))
                    f = 0.5 * (1 + math.cos(math.pi * min(1.0, k / total)))
                    for g in popt.param_groups:
                        g["lr"] = a.lr * (finetune.LR_FLOOR + (1 - finetune.LR_FLOOR) * f)
                    with torch.autocast("cpu", torch.bfloat16, enabled=auto):
                        stored = refine._stored(q, z, a.bits, rdo, prev)
                        rec = dec(refine._codes(fm, z, stored))
                        loss = distortion(rec[:, :, :f1 - f0].clamp(-1, 1), target, a.msssim)
                        if REFINE_RATE > 0:
                            loss = loss + REFINE_RATE * refine._repeat_cost(q, z, prev, stored, REFINE_RATE_CAP)
                    zopt.zero_grad(set_to_none=True)
                    popt.zero_grad(set_to_none=True)
                    loss.backward()
                    zopt.step()
                    if all(torch.isfinite(p.grad).all() for p in train if p.grad is not None):
                        popt.step()
                    detach_state(dec)
                    prev = stored[:, :, -1:]
                    ep_loss.append(loss.item())
                    k += 1
        print(f"epoch {ep} loss {np.mean(ep_loss):.5f} {time.perf_counter() - t0:.0f} s", flush=True)
    fm.eval()
    t1 = time.perf_counter()
    # the update, quantized as the encoder's "all" candidate
    sha = fm.decoder_sha256
    order = [nm for nm in tensor_names(fm) if sha is None or nm.startswith("decoder.")]
    tensors = []
    with torch.no_grad():
        for nm, p, p0 in zip(names, train, base):
            e, v = finetune.quantize(p - p0, 1.0)
            if np.any(v):
                tensors.append(TensorUpdate(order.index(nm), e, int(np.abs(v).max()), v))
    tensors.sort(key=lambda t: t.index)
    ad = Adaptation(hdr.model_sha256, 0, len(segs), tuple(tensors),
                    None if sha is None else bytes.fromhex(sha)[:16])
    net = refine.refine_model(model, ad)
    lats = []
    for (fr, lat), zc in zip(segs, zs):
        l0 = torch.cat([q.latents(z.detach()) for _, _, z, _ in zc], 2).float()
        lats.append(refine.refine_latents(net, fr, l0, a.bits, a.final, rdo=rdo) if a.final else l0)
    t2 = time.perf_counter()
    queue = list(lats)

    def swapped(m, it, meta_, seg_frames, bits, steps, progress=None, rdo=0.0):
        n, _ = 0, None
        got = []
        for f in it:
            got.append(f)
            if len(got) == seg_frames:
                break
        if not got:
            return 0, None
        return len(got), queue.pop(0)

    codec.encode_refined = swapped
    buf = io.BytesIO()
    codec.compress_to_file(net, frames, buf, bits=a.bits)
    out = io.BytesIO()
    codec.insert_adaptation(buf.getvalue(), ad.to_payload(), out)
    data = out.getvalue()
    _, rec = codec.decompress(data)
    psnr = float(psnr_from_mse(float(frame_mse(frames, rec).mean())))
    ms = ms_ssim_rgb(frames, rec)["ms_ssim"]
    row = {"clip": a.clip, "frames": int(t_all), "bits": a.bits, "epochs": a.epochs, "final": a.final,
           "lr": a.lr, "zlr": a.zlr, "msssim": a.msssim, "bytes": len(data),
           "update_bytes": len(ad.to_payload()), "psnr_rgb": psnr, "ms_ssim": ms,
           "joint_s": t1 - t0, "final_s": t2 - t1, "total_s": time.perf_counter() - t0}
    print(json.dumps(row), flush=True)
    with open(a.out, "a") as fo:
        fo.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
