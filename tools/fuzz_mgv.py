"""Mutation fuzzer of the ``.mgv`` reader and decoder.

Seeds are real streams made with the tiny model (raw and context-coded segments, AUDIO records,
one-frame and multi-segment streams). Each case mutates one seed (bit flips, random bytes,
interesting 32-bit values in record fields, inserted / deleted / duplicated ranges, truncation),
optionally re-computes the header and record CRCs so the mutation reaches the checks behind
them, and then runs every entry point on it: strict decode, recovering decode, a frame-range
decode and ``stream_info``. A case passes when each one ends in a correct decode (frames of the
header's size, and with recovery exactly the header's frame count) or an
:class:`neuralcodec.errors.MGVError`; any other exception or a case running past its time limit
fails, and its input is saved to the corpus directory.

    python tools/fuzz_mgv.py --cases 10000 [--seed 0] [--save tests/fuzz_corpus]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import random
import signal
import struct
import sys
import time
import traceback
import zlib
from fractions import Fraction
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neuralcodec import codec  # noqa: E402
from neuralcodec import container as ct  # noqa: E402
from neuralcodec.errors import MGVError  # noqa: E402

FRAME_CAP = 300  # frames consumed per decode (a header may validly announce 2^24)
INTERESTING32 = (0, 1, 2, 3, 0x7F, 0xFF, 0x100, 0xFFFF, 0x10000, 1 << 24, 1 << 28, (1 << 28) + 1,
                 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)


class CaseTimeout(Exception):
    """A case ran past its time limit (a hang)."""


def tiny_model():
    """The tiny config with fixed random weights; identity set without a weights file."""
    import torch

    from neuralcodec.configs import CONFIGS
    from neuralcodec.model import Tokenizer

    torch.manual_seed(0)
    m = Tokenizer(CONFIGS["tiny"]).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m.name, m.sha256 = "tiny-fuzz", hashlib.sha256(b"tiny-fuzz").hexdigest()
    return m


def _clip(t: int, h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    v = np.stack([np.stack([(x * 7 + i * 5) % 256, (y * 9 + i * 3) % 256, (x + y) * 4 % 256], -1)
                  for i in range(t)]).astype(np.int16) + rng.integers(-6, 7, (t, h, w, 3))
    return np.clip(v, 0, 255).astype(np.uint8)


def _with_audio(data: bytes) -> bytes:
    """Re-write a stream with a synthetic audio track: a TRACK record up front and one
    PACKETS record after each segment."""
    r = ct.Reader(io.BytesIO(data))
    out = io.BytesIO()
    w = ct.Writer(out, r.header)
    tr = ct.AudioTrack(0, "aac", Fraction(1, 1000), 44100, 2, 0, b"\x1aE\xdf\xa3template")
    w.write_record(ct.REC_AUDIO, tr.to_payload(), critical=False)
    for i, seg in enumerate(r.segments()):
        w.write_segment(seg)
        pk = tuple(ct.AudioPacket(40 * i + k, 40 * i + k, 23, True, bytes([k] * (5 + k)))
                   for k in range(3))
        w.write_record(ct.REC_AUDIO, ct.AudioPackets(0, pk).to_payload(), critical=False)
    w.close()
    return out.getvalue()


def seed_streams(model) -> List[bytes]:
    """Small real streams: raw and context-coded, several segments, 1 frame, audio."""
    s1 = codec.compress(model, _clip(9, 16, 16, 0), segment_frames=5, entropy="none")
    s2 = codec.compress(model, _clip(13, 16, 24, 1), segment_frames=5, entropy="context")
    s3 = codec.compress(model, _clip(1, 8, 8, 2), entropy="context")
    s4 = _with_audio(codec.compress(model, _clip(6, 16, 16, 3), segment_frames=5, entropy="context",
                                    fps=Fraction(30000, 1001)))
    return [s1, s2, s3, s4]


# ---- mutations ------------------------------------------------------------------------------
def _record_offsets(data: bytes) -> List[int]:
    out, i = [], data.find(ct.RECORD_SYNC)
    while i >= 0:
        out.append(i)
        i = data.find(ct.RECORD_SYNC, i + 1)
    return out


def fix_crcs(data: bytearray) -> bytearray:
    """Recompute the header CRC and the CRC of every record that still parses."""
    if len(data) >= 16 and data[:8] == ct.MAGIC:
        hlen = struct.unpack_from("<I", data, 12)[0]
        if 16 + hlen + 4 <= len(data):
            struct.pack_into("<I", data, 16 + hlen, zlib.crc32(bytes(data[:16 + hlen])))
    for off in _record_offsets(bytes(data)):
        if off + 12 > len(data):
            continue
        length = struct.unpack_from("<I", data, off + 8)[0]
        end = off + 12 + length
        if end + 4 <= len(data):
            struct.pack_into("<I", data, end, zlib.crc32(bytes(data[off:end])))
    return data


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four random mutations of ``data``; CRCs re-fixed half of the time."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        n = len(b)
        if n == 0:
            b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
            continue
        i = rng.randrange(n)
        if op == 0:  # bit flip
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # random byte
            b[i] = rng.randrange(256)
        elif op == 2:  # interesting 32-bit value at a record field or anywhere
            offs = _record_offsets(bytes(b))
            j = (rng.choice(offs) + rng.choice((4, 8, 12, 16, 20, 24, 28))) if offs and rng.random() < 0.7 else i
            if j + 4 <= n:
                struct.pack_into("<I", b, j, rng.choice(INTERESTING32))
        elif op == 3:  # header field
            j = 16 + rng.randrange(min(44, max(1, n - 16)))
            if j < n:
                b[j] = rng.choice((0, 1, 2, 0x7F, 0x80, 0xFF))
        elif op == 4:  # truncate
            del b[rng.randrange(n):]
        elif op == 5:  # insert random bytes
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
        elif op == 6:  # delete a range
            del b[i:i + rng.randint(1, 64)]
        elif op == 7:  # duplicate a range elsewhere (spliced records)
            j = rng.randrange(n)
            b[j:j] = b[i:i + rng.randint(1, 200)]
        else:  # a sync word somewhere (false resynchronization)
            b[i:i] = ct.RECORD_SYNC
    if rng.random() < 0.5:
        fix_crcs(b)
    return bytes(b)


# ---- one case -------------------------------------------------------------------------------
def _consume(meta, it, recover: bool, header: Optional[ct.Header]) -> None:
    n = 0
    for f in it:
        if f.shape != (meta.height, meta.width, 3) or f.dtype != np.uint8:
            raise AssertionError(f"frame of shape {f.shape} {f.dtype}, header says "
                                 f"{meta.height}x{meta.width}")
        n += 1
        if n >= FRAME_CAP:
            return
    if recover and n != meta.frames:
        raise AssertionError(f"recovering decode gave {n} frames, expected {meta.frames}")


def run_case(data: bytes, model) -> Optional[str]:
    """None when every entry point ends in a correct decode or an MGVError; else a report."""
    checks: List[Callable[[], None]] = []

    def decode(recover: bool, frames=None):
        def go():
            reports = []
            meta, it = codec.decompress_from_file(
                io.BytesIO(data), model=model, frames=frames,
                on_damage=reports.append if recover else None,
                audio=codec.AudioSink())
            _consume(meta, it, recover, None)
        return go

    checks += [decode(False), decode(True), decode(True, (1, None)),
               lambda: codec.stream_info(io.BytesIO(data))]
    for c in checks:
        try:
            c()
        except MGVError:
            pass
        except CaseTimeout:
            raise
        except Exception:  # noqa: BLE001 - the point of the fuzzer
            return traceback.format_exc(limit=6)
    return None


def _alarm(signum, frame):
    raise CaseTimeout()


def fuzz(cases: int, seed: int = 0, save: Optional[Path] = None, timeout_s: int = 10,
         model=None, seeds: Optional[List[bytes]] = None, log=print) -> dict:
    """Run ``cases`` mutated cases → {"cases", "failures", "seconds", "saved"}."""
    model = model or tiny_model()
    seeds = seeds or seed_streams(model)
    rng = random.Random(seed)
    failures, saved = 0, []
    t0 = time.perf_counter()
    use_alarm = hasattr(signal, "SIGALRM")
    if use_alarm:
        old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for k in range(cases):
            base = rng.choice(seeds)
            data = mutate(base, rng) if rng.random() < 0.9 else base[:rng.randrange(len(base))]
            if use_alarm:
                signal.alarm(timeout_s)
            try:
                report = run_case(data, model)
            except CaseTimeout:
                report = f"timeout after {timeout_s} s"
            finally:
                if use_alarm:
                    signal.alarm(0)
            if report is not None:
                failures += 1
                name = f"case-{hashlib.sha256(data).hexdigest()[:12]}.mgv"
                log(f"FAIL case {k} ({name}, {len(data)} bytes):\n{report}")
                if save is not None:
                    save.mkdir(parents=True, exist_ok=True)
                    (save / name).write_bytes(data)
                    saved.append(name)
    finally:
        if use_alarm:
            signal.signal(signal.SIGALRM, old)
    return {"cases": cases, "failures": failures, "seconds": time.perf_counter() - t0, "saved": saved}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=int, default=10, help="seconds per case before it counts as a hang")
    ap.add_argument("--save", type=Path, default=None, help="directory for failing inputs")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    res = fuzz(a.cases, a.seed, a.save, a.timeout)
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{res['cases']} cases, {res['failures']} failures, {res['seconds']:.1f} s "
          f"({res['cases'] / res['seconds']:.0f} cases/s), peak RSS {rss:.0f} MiB")
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
