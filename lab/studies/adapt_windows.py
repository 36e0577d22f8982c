"""Issue 32 follow-up study: where the encoder's adaptation windows come from (the first 17
frames of each segment vs windows spread over every segment), how many steps, and which tensors
(biases/norms/AdaGN at lr 1e-2, plus the last decoder level's convolution weights at lr 1e-3).

    nice python -m lab.studies.adapt_windows CLIP.y4m --bits 18 --out runs/adapt_windows.json

Validation clips only (cut from ../shared/data/train), never eval/. One plain encode per clip
(mgv-default-v6, the model as `mgv encode` loads it); each variant trains a
``neuralcodec.finetune.Fitting`` on that stream's sampled windows, and at each snapshot the
update is quantized (the encoder's own candidates), inserted as the stream's ADAPT record and the
whole clip decoded as `mgv decode` does (the network the record adapts) → PSNR-RGB over all
frames, bytes counted. A variant is NAME:STEPS[,STEPS…] (snapshots): ``first…`` trains on the
first window of each segment only, ``fast…`` adapts v6's fast decoder variant (else v6's own),
``…+last`` adds the last level's convolution weights at lr 1e-3 (``…+lastup``: and its
upsampling's), ``…-hi`` doubles the learning rate, ``…-whole`` trains on whole frames (no crop), ``…-cos`` decays the learning rate (cosine)
over the last snapshot's steps, ``…-gN`` fits one update per group of N consecutive segments (an
ADAPT record each, ranges not overlapping; STEPS per group, one snapshot). Results: lab/notes/adapt_windows.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import re
import json
import time
from pathlib import Path


from neuralcodec import codec, finetune, sampling
from neuralcodec.evaluate import frame_mse, psnr_from_mse
from neuralcodec.model import for_inference
from neuralcodec.options import EncodeOptions
from neuralcodec.video_io import read_rgb
from neuralcodec.weights import decoder_variant, load_model


def last_level_weights(model, ups: bool = False) -> list:
    """Convolution weights of the decoder's last level (its residual blocks; with ``ups`` also
    its last upsampling) and output layer."""
    dec = model.decoder
    last = max(i for i, lv in enumerate(dec.levels) if any(True for _ in lv.parameters()))
    heads = (f"levels.{last}.", "out.") + ((f"ups.{len(dec.ups) - 1}.",) if ups else ())
    return sorted(f"decoder.{n}" for n, p in model.decoder.named_parameters()
                  if n.endswith("weight") and p.dim() == 5 and n.startswith(heads))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("clip")
    ap.add_argument("--bits", type=int, default=18)
    ap.add_argument("--out", required=True)
    ap.add_argument("--variants", nargs="+", default=["first:200", "all:200,400,600",
                                                      "all+last:200,400,600",
                                                      "fast-all:200,400,600"])
    a = ap.parse_args()
    out = Path(a.out)
    res = json.loads(out.read_text()) if out.exists() else {}
    finetune.Fitting.own_slope = lambda self, segs: float("-inf")  # measure every update
    step_pixels = finetune.STEP_PIXELS
    model = for_inference(load_model("mgv-default-v6"), "cpu")
    frames = read_rgb(a.clip)
    t, h, w, _ = frames.shape
    meta, _ = codec.open_video(frames)
    hdr = codec.stream_header(model, meta, EncodeOptions.of(None, bits=a.bits).checked(model))
    sampler = sampling.FrameSampler(hdr.segment_frames, t, w, h, model.cfg.temporal_factor)
    buf = io.BytesIO()
    t0 = time.perf_counter()
    codec.compress_to_file(model, (meta, sampler.wrap(iter(frames))), buf, bits=a.bits)
    stream = buf.getvalue()
    key = f"{Path(a.clip).name}@{a.bits}"
    r = res.setdefault(key, {"frames": t, "size": [w, h], "variants": {}})

    def measure(data: bytes, decoder: str) -> float:
        _, rec = codec.decompress(data, decoder=decoder)
        return float(psnr_from_mse(float(frame_mse(frames, rec).mean())))

    def save():
        out.write_text(json.dumps(res, indent=1))

    if "plain" not in r:
        r["plain"] = {"bytes": len(stream), "bpp": 8 * len(stream) / (t * h * w),
                      "psnr_full": measure(stream, "full"), "psnr_auto": measure(stream, "auto"),
                      "encode_s": time.perf_counter() - t0}
        save()
    print(key, r["plain"], flush=True)
    def fit_groups(name, n, steps, samples, groups):
        segs = sorted({k[0] for k, _ in samples})
        payloads, secs, rows = [], 0.0, []
        for g0 in range(0, len(segs), n):
            mine = segs[g0:g0 + n]
            fit = finetune.Fitting(model, stream, [(k, f) for k, f in samples if k[0] in mine],
                                   groups=groups, decoder="fast" if name.startswith("fast") else "full",
                                   total=steps if "-cos" in name else None)
            t1 = time.perf_counter()
            fit.train(steps)
            secs += time.perf_counter() - t1
            ad, summ = fit.decide()
            ad = dataclasses.replace(ad, first_segment=mine[0], segments=mine[-1] - mine[0] + 1)
            payloads.append(ad.to_payload())
            rows.append({k: summ[k] for k in ("gain_db", "candidate", "update_bytes")})
            print(name, "group", mine, rows[-1], flush=True)
        o = io.BytesIO()
        codec.insert_adaptation(stream, payloads, o)
        data = o.getvalue()
        size, psnr = len(data), measure(data, "auto")
        row = {"train_s": secs, "bytes": size, "bpp": 8 * size / (t * h * w), "psnr": psnr,
               "windows": len(samples), "groups": rows,
               "update_bytes": sum(x["update_bytes"] for x in rows)}
        r["variants"].setdefault(name, {})[str(steps)] = row
        save()
        print(name, steps, row, "gain", row["psnr"] - r["plain"]["psnr_full"], flush=True)

    for spec in a.variants:
        name, snaps = spec.split(":")
        snaps = [int(x) for x in snaps.split(",")]
        if all(str(s) in r["variants"].get(name, {}) for s in snaps):
            continue
        samples = sampler.samples()
        if name.startswith("first"):
            samples = [(k, f) for k, f in samples if k[1] == 0]
        net = decoder_variant(model, "fast") if name.startswith("fast") else model
        lr = finetune.ADAPT_LR * (2 if "-hi" in name else 1)  # -hi: twice the learning rate
        groups = [(finetune.adapt_names(net), lr)]
        if "+last" in name:  # +last: the last level; +lastup: and its upsampling
            groups.append((last_level_weights(net, "+lastup" in name), 1e-3))
        # -whole: train on whole frames (no crop: a step costs frames × frame pixels)
        finetune.STEP_PIXELS = 10 ** 12 if "-whole" in name else step_pixels
        per = re.search(r"-g(\d+)", name)
        if per:  # one update per group of segments, trained and sent on its own
            fit_groups(name, int(per.group(1)), snaps[-1], samples, groups)
            continue
        fit = finetune.Fitting(model, stream, samples, groups=groups,
                               decoder="fast" if name.startswith("fast") else "full",
                               total=snaps[-1] if "-cos" in name else None)
        done, secs = 0, 0.0
        for s in snaps:
            t1 = time.perf_counter()
            fit.train(s - done)
            secs += time.perf_counter() - t1
            done = s
            ad, summ = fit.decide()
            o = io.BytesIO()
            codec.insert_adaptation(stream, ad.to_payload(), o)
            data = o.getvalue()
            size, psnr = len(data), measure(data, "auto")  # the network the record names, adapted
            row = {"train_s": secs, "bytes": size, "bpp": 8 * size / (t * h * w),
                   "psnr": psnr, "windows": len(samples),
                   "est_gain": summ["gain_db"], "candidate": summ["candidate"],
                   "update_bytes": summ["update_bytes"]}
            r["variants"].setdefault(name, {})[str(s)] = row
            save()
            print(name, s, row, "gain", row["psnr"] - r["plain"]["psnr_full"], flush=True)


if __name__ == "__main__":
    main()
