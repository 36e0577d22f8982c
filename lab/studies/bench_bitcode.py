"""Offset-binary vs sign-magnitude bit planes: coded size of the same tokens.

For a "planes" model, tokenizes each clip (first ``--frames`` frames, short side
``--short-side``; the encoder's default RDO) twice, with the planes after the first sent as
offset-binary bits and as sign-magnitude bits (``TokenizerConfig.sign_magnitude``; same
weights, same decoded frames), codes both with the ``context`` coder (spec §7) and reports the
payload bytes at each ``--bits``. Markdown table on stdout.

    nice -n 19 python -m lab.studies.bench_bitcode --data runs/recipes/split/val

(``lab/notes/bitcode.md`` was measured with mgv-default-v3, retired since; its weights
are at commit 9fb2336.)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Tuple

import torch

from neuralcodec.configs import DEFAULT_MODEL
from neuralcodec.entropy import encode_bits
from neuralcodec.model import Tokenizer
from neuralcodec.tokens import tokenize
from lab.train.data import VIDEO_EXTS, decode_video_rgb
from neuralcodec.weights import load_model


def coded_bytes(model, video, bits: int) -> int:
    tok = tokenize(model, video, bits=bits)
    return sum(len(encode_bits(tok.segment_bits(i))) for i in range(len(tok.segments)))


def bit_codings(model: Tokenizer) -> Tuple[Tokenizer, Tokenizer]:
    """``model``'s weights as two planes models: offset-binary and sign-magnitude lower planes
    (``TokenizerConfig.sign_magnitude``), each with ``model``'s identity, in eval mode; ``model``
    itself is left as it is. Raises ValueError if ``model`` has no bit planes."""
    if model.cfg.quantizer != "planes":
        raise ValueError(f"{model.name} is not a planes model (quantizer {model.cfg.quantizer!r})")
    off, sm = (model.with_config(model.cfg.with_json(json.dumps({"sign_magnitude": v}))).eval()
               for v in (False, True))
    return off, sm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help="a registered planes model")
    ap.add_argument("--data", required=True, help="folder of clips (never eval/ for decisions)")
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--short-side", type=int, default=256)
    ap.add_argument("--bits", type=int, nargs="+", default=[18, 12, 9, 6])
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    try:
        models = bit_codings(load_model(a.model))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"model {a.model}, {a.frames} frames, short side {a.short_side}\n\n"
          "| clip | bits | offset-binary bytes | sign-magnitude bytes | change |\n|---|---|---|---|---|")
    for p in sorted(Path(a.data).iterdir()):
        if p.suffix.lower() not in VIDEO_EXTS:
            continue
        video = decode_video_rgb(p, a.short_side, a.frames)
        for b in a.bits:
            sizes = [coded_bytes(m, video, b) for m in models]
            print(f"| {p.name} | {b} | {sizes[0]} | {sizes[1]} | {100 * (sizes[1] - sizes[0]) / sizes[0]:+.1f}% |",
                  flush=True)


if __name__ == "__main__":
    main()
