"""Issue 32 probe (session 21): the order of decoder adaptation and code refinement.

    nice python -m lab.studies.adapt_refine_order CLIP.y4m BITS ADAPT REFINE

Validation clips only (cut from ../shared/data/train). Encodes CLIP plainly, fits the update to
the encoder's codes (``finetune.fit_adaptation``), then re-encodes with REFINE steps of
refinement through the *adapted* decoder (the one the stream's decode runs) and inserts the
update; prints both the adapted-only and the adapt-then-refine stream (bytes, PSNR-RGB, MS-SSIM).
It is what ``mgv encode --adapt N --refine M`` does since session 21 (the encoder's test shows
its segments equal refinement through ``refine.refine_model(model, ad)``). Results:
lab/notes/adapt_refine.md. Appends a JSON line to runs/adapt_refine.jsonl.
"""
import io
import json
import os
import sys
import time

import torch

from neuralcodec import codec, finetune, refine, adapt, sampling
from neuralcodec.evaluate import frame_mse, psnr_from_mse, ms_ssim_rgb
from neuralcodec.model import for_inference
from neuralcodec.options import EncodeOptions
from neuralcodec.video_io import read_rgb
from neuralcodec.weights import decoder_variant, load_model


def main() -> None:
    torch.set_num_threads(2)
    clip, bits, steps, rsteps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    model = for_inference(load_model("mgv-default-v6"), "cpu")
    frames = read_rgb(clip)
    t, h, w, _ = frames.shape
    meta, _ = codec.open_video(frames)
    hdr = codec.stream_header(model, meta, EncodeOptions.of(None, bits=bits).checked(model))
    sampler = sampling.FrameSampler(hdr.segment_frames, t, w, h, model.cfg.temporal_factor)
    buf = io.BytesIO()
    t0 = time.perf_counter()
    codec.compress_to_file(model, (meta, sampler.wrap(iter(frames))), buf, bits=bits)
    stream = buf.getvalue()
    ad, summ = finetune.fit_adaptation(model, stream, sampler.samples(), steps)
    t1 = time.perf_counter()
    print("fit", t1 - t0, {k: summ.get(k) for k in ("gain_db", "update_bytes", "kept", "candidate")}, flush=True)
    if ad is None:
        return print("update not kept")
    fast = decoder_variant(model, "auto")
    ada = adapt.adapted_model(fast, ad)   # the adapted fast decoder, as the decode makes it
    ada.decoder.to(dtype=next(model.parameters()).dtype)
    refine.decoder_variant = lambda m, choice="auto", models_dir=None: None  # refine through ada itself
    rb = io.BytesIO()
    codec.compress_to_file(ada, frames, rb, bits=bits, refine=rsteps)
    t2 = time.perf_counter()
    o = io.BytesIO()
    codec.insert_adaptation(rb.getvalue(), ad.to_payload(), o)
    def meas(data):
        _, rec = codec.decompress(data)
        return float(psnr_from_mse(float(frame_mse(frames, rec).mean()))), ms_ssim_rgb(frames, rec).get("ms_ssim")
    o2 = io.BytesIO(); codec.insert_adaptation(stream, ad.to_payload(), o2)
    row = {"clip": clip, "bits": bits, "adapt": steps, "refine": rsteps,
           "adapted_only": [len(o2.getvalue()), *meas(o2.getvalue())],
           "adapt_then_refine": [len(o.getvalue()), *meas(o.getvalue())], "fit_s": t1 - t0, "refine_s": t2 - t1}
    print(json.dumps(row), flush=True)
    os.makedirs("runs", exist_ok=True)
    open("runs/adapt_refine.jsonl", "a").write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
