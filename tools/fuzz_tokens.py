"""Structure-aware fuzzer of tokens files (``mgv tokens`` / ``mgv detokenize``,
``bitstream_spec.md`` appendix B).

Seeds are real tokens files of the tiny model's streams (raw and context-coded, several
segments, with and without sub-tokens). Each case parses a seed into its safetensors header
(the tensor table and the ``mgv`` metadata JSON) and its data, then forges one to four things
at their limits: the header length word, the JSON text (deep nesting, truncation, huge
integers, NaN / Infinity), metadata values (fps ``1/0`` or ``1e999999999``, non-finite or
huge sizes, segment bit counts, sub-token splits, strings, missing and extra keys), tensor
names, dtypes (BF16, F8_E4M3, F8_E5M2, floats, bools), shapes, ``data_offsets`` (out of the
file, overlapping, swapped), the data (values out of range, truncation) and the file size
(sparse files of up to 4 GiB that contradict or match the header). It then runs the public
API on the file: :meth:`neuralcodec.tokens.TokensFile.open`, :meth:`~TokensFile.read_arrays` and
:func:`neuralcodec.tokens.detokenize_frames` with the tiny model (at most :data:`FRAME_CAP`
frames). A case passes when it ends in frames of the header's size or an
:class:`neuralcodec.errors.MGVError`; any other exception, or a case past its time limit, fails
and its file is saved.

    python -m tools.fuzz_tokens --cases 10000 [--seed 0] [--save tests/fuzz_corpus_tokens]

Runs with ``MGV_MAX_MEMORY`` (``--max-memory``, default 1G), so reading and decoding refuse
what would need more; the peak RSS of the run is printed.
"""
from __future__ import annotations

import io
import json
import os
import random
import struct
import sys
import tempfile
import traceback
from pathlib import Path
from typing import List, Optional

from neuralcodec import tokens as tk
from neuralcodec.errors import MGVError
from tools import fuzz_mgv

FRAME_CAP = 40  # frames consumed per decode
BAD_DTYPES = ("BF16", "F8_E4M3", "F8_E5M2", "F16", "F32", "F64", "BOOL", "I4", "", "i32", 7, None)
INTS = (0, 1, -1, 2, 3, 31, 32, 33, 255, 4096, 8192, 8193, 65537, 1 << 20, 1 << 24, (1 << 31) - 1,
        1 << 32, 1 << 53, (1 << 64) - 1, 10 ** 30)
ODD = (None, True, False, 1.5, -0.0, "1", "x" * 300, [], {}, [1, 2], {"a": 1})
FPS = ("1/0", "0/1", "0/0", "1e999999999", "1e9", "Infinity", "NaN", "-1/2", "30000/1001",
       "1000/1", "1001/1", "1/1001", "25", "9" * 8 + "/1", "1/" + "9" * 7, "25/1 ", " 25/1", "", 25,
       25.0, None, "1" * 5000)
JSON_LITERALS = ("Infinity", "-Infinity", "NaN", "1e999999999", "1" * 5000, "-" + "9" * 30)


def seed_files(model) -> List[bytes]:
    """Real tokens files of small streams of the tiny model (and one with sub-tokens)."""
    streams = fuzz_mgv.seed_streams(model)[:3]
    out = []
    with tempfile.TemporaryDirectory() as d:
        for k, s in enumerate(streams):
            tok = tk.tokens_from_stream(io.BytesIO(s))
            for split in (None, (tok.header.bits // 2, tok.header.bits - tok.header.bits // 2)):
                p = Path(d) / f"s{k}.safetensors"
                tok.save(p, split=split)
                out.append(p.read_bytes())
    return out


def _parse(data: bytes):
    (n,) = struct.unpack_from("<Q", data)
    table = json.loads(data[8:8 + n])
    return table, json.loads(table["__metadata__"]["mgv"]), data[8 + n:]


def _pack(table: dict, md, data: bytes, md_text: Optional[str] = None) -> bytes:
    table = dict(table)
    table["__metadata__"] = dict(table["__metadata__"], mgv=md_text if md_text is not None
                                 else json.dumps(md))
    text = json.dumps(table).encode()
    return struct.pack("<Q", len(text)) + text + data


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def forge(seed: bytes, rng: random.Random) -> tuple:
    """One forged file → (bytes, sparse size or None)."""
    table, md, data = _parse(seed)
    names = [k for k in table if k != "__metadata__"]
    md_text = None
    sparse = None
    for _ in range(rng.randint(1, 4)):
        try:  # an earlier forgery may have broken what a later one edits: skip it
            op = rng.randrange(16)
            if op == 0:  # metadata number
                key = rng.choice(["width", "height", "frames", "segment_frames", "model_bits", "bits",
                                  "temporal_factor", "spatial_factor", "segments"])
                md[key] = rng.choice(INTS + ODD)
            elif op == 1:
                md["fps"] = rng.choice(FPS)
            elif op == 2:  # non-finite / huge literal spliced into the JSON text
                key = rng.choice(["width", "frames", "fps", "segment_bits", "split", "bits"])
                md_text = json.dumps(dict(md, **{key: "@@"})).replace('"@@"', rng.choice(JSON_LITERALS))
            elif op == 3:  # deep nesting
                key = rng.choice(["width", "split", "segment_bits", "extra"])
                md_text = json.dumps(dict(md, **{key: "@@"})).replace(
                    '"@@"', _nested(rng.choice([4, 100, 5000, 200000])))
            elif op == 4:
                n = min(len(md.get("segment_bits") or [1]), 1 << 20)
                md["segment_bits"] = rng.choice([[0] * n, [33] * n, [1] * (n + 1), [], None, [1.5] * n,
                                                 ["1"] * n, [md.get("bits")] * n, [1] * n, 7])
            elif op == 5:
                b = md.get("bits") if md.get("bits") in range(1, 33) else 6  # forged earlier?
                md["split"] = rng.choice([[0, b], [b], [1] * b, [1] * 1000, [b + 1], [-1, b + 1],
                                          [], 9, "9,9", [1.0] * b, [33]])
            elif op == 6:  # strings
                key = rng.choice(["model", "model_sha256", "pix_fmt", "token"])
                md[key] = rng.choice(["", "a" * 65, "x" * 100000, "../../etc", "00" * 16, "zz" * 16,
                                      "00" * 33, 5, None, "tiny-fuzz", "rgb24", "YUV"])
            elif op == 7:  # keys
                if rng.random() < 0.5 and md:
                    md.pop(rng.choice(list(md)))
                else:
                    md[rng.choice(["extra", "latent_hw", "segments"])] = rng.choice(INTS + ODD + ([1, 1],))
            elif op == 8 and names:  # dtype
                table[rng.choice(names)] = dict(table[rng.choice(names)], dtype=rng.choice(
                    BAD_DTYPES + ("I8", "U8", "I16", "U16", "U32", "I64", "U64")))
            elif op == 9 and names:  # shape
                n = rng.choice(names)
                sh = list(table[n]["shape"])
                choice = rng.randrange(5)
                if choice == 0:
                    sh[rng.randrange(3)] = rng.choice(INTS)
                elif choice == 1:
                    sh = sh[:rng.randrange(3)] or sh + [1]
                elif choice == 2:
                    sh = [rng.choice(ODD)] * 3
                elif choice == 3:
                    sh = [sh[0] * 2, sh[1], sh[2] // 2 or 1]
                else:
                    sh = [1 << 30, 1 << 30, 1 << 30]
                table[n] = dict(table[n], shape=sh)
            elif op == 10 and names:  # offsets
                n = rng.choice(names)
                b, e = table[n]["data_offsets"]
                table[n] = dict(table[n], data_offsets=rng.choice([
                    [e, b], [b, e + 4], [b + 4, e + 4], [0, e - b], [b, b], [b, 1 << 62],
                    [-1, e], [b, (1 << 64) - 1], [b, float(e)], [b], "0,4", [b, e, 0]]))
            elif op == 11 and names:  # names
                n = rng.choice(names)
                new = rng.choice(["tokens.99", "tokens.-1", "subtokens.0.9", "weights", "tokens.0 ",
                                  "tokens." + "9" * 20, "tokens.00", "subtokens.0.0", ""])
                table[new] = table.pop(n) if rng.random() < 0.5 else table[n]
            elif op == 12:  # data values / truncation
                buf = bytearray(data)
                if buf and rng.random() < 0.3:  # other valid tokens: the decode runs
                    for _ in range(rng.randint(1, 64)):
                        i = rng.randrange(len(buf))
                        buf[i - i % 4] = rng.randrange(2)
                elif buf and rng.random() < 0.6:
                    for _ in range(rng.randint(1, 8)):
                        buf[rng.randrange(len(buf))] = rng.randrange(256)
                else:
                    del buf[rng.randrange(len(buf) + 1):]
                data = bytes(buf)
            elif op == 13:  # whole geometry: large frames / many frames, consistent or not
                md.update(width=rng.choice([8192, 4096, 1920, 16]), height=rng.choice([4096, 1088, 16]),
                          frames=rng.choice([1, 9, 65537, 1 << 24]), segment_bits=None)
                if rng.random() < 0.5:
                    sparse = rng.choice([1 << 30, 1 << 32, (1 << 32) + 12345])
            elif op == 14:  # metadata not an object / table not an object / format
                which = rng.randrange(4)
                if which == 0:
                    md_text = rng.choice(["[]", "1", '"x"', "null", "", "{", "{}" * 2])
                elif which == 1:
                    table["__metadata__"] = dict(table["__metadata__"], format=rng.choice(["x", None, 1]))
                elif which == 2:
                    table["__metadata__"] = dict(table["__metadata__"], version=rng.choice(["2", "", "1.0"]))
                else:
                    table["__metadata__"] = dict(table["__metadata__"], mgv=None) if rng.random() < .5 \
                        else dict(table["__metadata__"], mgv="x" * (1 << 24))
            else:  # header length word / raw text
                out = _pack(table, md, data, md_text)
                buf = bytearray(out)
                which = rng.randrange(4)
                if which == 0:
                    struct.pack_into("<Q", buf, 0, rng.choice([0, 1, 7, len(out), 1 << 24, (1 << 24) + 1,
                                                               (1 << 64) - 1, len(out) - 8 - len(data) + 1]))
                elif which == 1:
                    (n,) = struct.unpack_from("<Q", buf)
                    buf[8 + rng.randrange(max(1, n))] = rng.choice(b'{}[]",:\x00\xff 9')
                elif which == 2:
                    del buf[rng.randrange(len(buf)):]
                else:
                    text = ("{" + '"a":' * 1 + _nested(rng.choice([10, 100000])) + "}").encode()
                    buf = bytearray(struct.pack("<Q", len(text)) + text)
                return bytes(buf), sparse
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            continue
    return _pack(table, md, data, md_text), sparse


def run_case(path: Path, model) -> Optional[str]:
    """None when the file ends in decoded frames or an MGVError; else a report."""
    try:
        f = tk.TokensFile.open(path)
        tok = tk.Tokens(*f.read_arrays())
        meta, it = tk.detokenize_frames(model, tok)
        for n, frame in enumerate(it):
            if frame.shape != (meta.height, meta.width, 3):
                return f"frame of shape {frame.shape}, header says {meta.height}x{meta.width}"
            if n + 1 >= FRAME_CAP:
                break
    except MGVError:
        pass
    except fuzz_mgv.CaseTimeout:
        raise
    except Exception:  # noqa: BLE001 - the point of the fuzzer
        return traceback.format_exc(limit=6)
    return None


def fuzz(cases: int, seed: int = 0, save: Optional[Path] = None, timeout_s: int = 10,
         model=None, seeds: Optional[List[bytes]] = None, log=print) -> dict:
    """Run ``cases`` cases → {"cases", "failures", "timeouts", "seconds", "saved",
    "peak_rss_mib", "slowest_s"}."""
    model = model or fuzz_mgv.tiny_model()
    seeds = seeds or seed_files(model)
    rng = random.Random(seed)
    with fuzz_mgv.Campaign(timeout_s, save, "safetensors", log) as camp, \
            tempfile.TemporaryDirectory() as d:
        path = Path(d) / "case.safetensors"
        for k in range(cases):
            data, sparse = forge(rng.choice(seeds), rng)
            path.write_bytes(data)
            if sparse and sparse > len(data):
                os.truncate(path, sparse)
            camp.run(k, data, lambda: run_case(path, model), note=f", sparse {sparse}")
    return camp.result(cases)


def main(argv=None) -> int:
    return fuzz_mgv.run_campaign(fuzz_mgv.campaign_parser(__doc__).parse_args(argv),
                                 "token-file cases", fuzz)


if __name__ == "__main__":
    sys.exit(main())
