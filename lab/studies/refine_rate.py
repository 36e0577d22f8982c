"""Issue 32 probe (session 22): the rate of refined codes — a larger RDO λ after refinement, or a
rate term in the refinement (``refine.refine_latents(rate=μ)``: a capped pull of each token
toward the value of the codes of the latent frame before it).

    nice python -m lab.studies.refine_rate CLIP.y4m --bits 12 18 [--frames N] [--adapt 500]
        [--refine 20] [--variants 0:2 0:4 1e-3:2 ...] [--out runs/refine_rate.jsonl]

Validation clips only (cut from ../shared/data/train). Per bits: a plain stream (λ 2 and each
variant's λ without refinement), the update fitted to the plain codes when ``--adapt`` > 0
(``finetune.fit_adaptation``, as ``mgv encode --adapt`` does), then each variant μ:λ refines
through the (adapted) decoder that decodes the stream (``refine.refine_model``) with rate weight
μ, RDO λ, the update inserted. Every byte counted; PSNR-RGB / MS-SSIM over the frames used.
Since session 24 the refinement judges the codes the RDO will store (``refine_latents(rdo=λ)``),
so each (μ, λ) refines anew (until then one refinement per μ served every λ).
"""
import argparse
import io
import json
import os
import time

import torch

from neuralcodec import codec, finetune, refine, sampling
from neuralcodec.evaluate import frame_mse, ms_ssim_rgb, psnr_from_mse
from neuralcodec.model import for_inference
from neuralcodec.options import EncodeOptions
from neuralcodec.video_io import read_rgb
from neuralcodec.weights import load_model


def measure(frames, data):
    _, rec = codec.decompress(data)
    return [len(data), float(psnr_from_mse(float(frame_mse(frames, rec).mean()))),
            ms_ssim_rgb(frames, rec).get("ms_ssim")]


class Replay:
    """refine_latents with rate weight ``mu``, computed once per segment and replayed (a
    stream's segments are refined once however often the encode asks)."""

    def __init__(self, fn, mu, msssim=0.0):
        self.fn, self.mu, self.msssim, self.cache, self.calls = fn, mu, msssim, [], 0

    def __call__(self, *args, **kw):
        i, self.calls = self.calls, self.calls + 1
        if i == len(self.cache):
            self.cache.append(self.fn(*args, rate=self.mu, msssim=self.msssim, **kw))
        return self.cache[i]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("clip")
    ap.add_argument("--bits", type=int, nargs="+", default=[12, 18])
    ap.add_argument("--frames", type=int, default=0)
    ap.add_argument("--adapt", type=int, default=0)
    ap.add_argument("--refine", type=int, default=20)
    ap.add_argument("--variants", nargs="+", default=["0:2", "0:4", "0:8"])
    ap.add_argument("--out", default="runs/refine_rate.jsonl")
    ap.add_argument("--adapt-msssim", type=float, default=0.0, help="MS-SSIM weight of the fit")
    ap.add_argument("--refine-msssim", type=float, nargs="+", default=[0.0],
                    help="MS-SSIM weights of the refinement (each a variant)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    model = for_inference(load_model("mgv-default-v6"), "cpu")
    frames = read_rgb(a.clip)
    if a.frames:
        frames = frames[:a.frames]
    variants = [(float(m), float(l)) for m, l in (v.split(":") for v in a.variants)]
    orig = refine.refine_latents
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    for bits in a.bits:
        def emit(row):
            row.update(clip=a.clip, frames=len(frames), bits=bits, adapt=a.adapt, refine=a.refine)
            print(json.dumps(row), flush=True)
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")
        t, h, w, _ = frames.shape
        meta, _ = codec.open_video(frames)
        hdr = codec.stream_header(model, meta, EncodeOptions.of(None, bits=bits).checked(model))
        sampler = sampling.FrameSampler(hdr.segment_frames, t, w, h, model.cfg.temporal_factor)
        buf = io.BytesIO()
        codec.compress_to_file(model, (meta, sampler.wrap(iter(frames))), buf, bits=bits)
        emit({"variant": "plain", "rdo": 2.0, "stream": measure(frames, buf.getvalue())})
        for lam in sorted({l for _, l in variants} - {2.0}):
            b = io.BytesIO()
            codec.compress_to_file(model, frames, b, bits=bits, rdo=lam)
            emit({"variant": "plain", "rdo": lam, "stream": measure(frames, b.getvalue())})
        ad, payload = None, None
        if a.adapt:
            t0 = time.perf_counter()
            ad, summ = finetune.fit_adaptation(model, buf.getvalue(), sampler.samples(), a.adapt,
                                               msssim=a.adapt_msssim)
            print("fit", time.perf_counter() - t0, {k: summ.get(k) for k in ("gain_db", "update_bytes", "kept")}, flush=True)
            payload = ad.to_payload() if ad is not None else None
            if payload is not None:
                o = io.BytesIO()
                codec.insert_adaptation(buf.getvalue(), payload, o)
                emit({"variant": "adapted", "adapt_msssim": a.adapt_msssim,
                      "rdo": 2.0, "stream": measure(frames, o.getvalue())})
        rmodel = refine.refine_model(model, ad)
        # compress_to_file refines through refine_model(rmodel): rmodel's decoder itself, not
        # the registry's default variant of it (that is the unadapted fast decoder)
        variant = refine.decoder_variant
        refine.decoder_variant = lambda m, choice="auto", models_dir=None: None
        for mu, ms in [(m, s) for m in sorted({m for m, _ in variants}) for s in a.refine_msssim]:
            for lam in [l for m, l in variants if m == mu]:
                refine.refine_latents = Replay(orig, mu, ms)  # refined for this λ too
                t0 = time.perf_counter()
                b = io.BytesIO()
                codec.compress_to_file(rmodel, frames, b, bits=bits, refine=a.refine, rdo=lam)
                secs = time.perf_counter() - t0
                refine.refine_latents = orig
                data = b.getvalue()
                if payload is not None:
                    o = io.BytesIO()
                    codec.insert_adaptation(data, payload, o)
                    data = o.getvalue()
                emit({"variant": f"refine rate {mu:g}", "rate": mu, "rdo": lam, "encode_s": secs,
                      "refine_msssim": ms, "adapt_msssim": a.adapt_msssim,
                      "stream": measure(frames, data)})
        refine.decoder_variant = variant


if __name__ == "__main__":
    main()
