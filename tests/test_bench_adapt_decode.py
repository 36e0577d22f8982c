"""benchmarks/bench_adapt_decode.py: the plain and the adapted stream of a clip, each decoded in
turn as `mgv decode` does, medians and ratio reported (the shipped model on a tiny clip)."""
import json

import numpy as np
import pytest

from benchmarks import bench_adapt_decode as B
from neuralcodec import finetune


def write_y4m(path, frames):
    t, h, w = frames.shape[:3]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F25:1 Ip A1:1 C420jpeg\n".encode())
        for y in frames:
            f.write(b"FRAME\n" + y.tobytes() + np.full(h * w // 2, 128, np.uint8).tobytes())


def test_plain_and_adapted_decodes_in_turn(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.integers(0, 9, (9, 64, 64)), axis=2).astype(np.uint8)
    write_y4m(tmp_path / "c.y4m", x)
    monkeypatch.setattr(finetune.Fitting, "own_slope", lambda self, segs: float("-inf"))  # always send
    calls = []
    real = B.decode_s
    monkeypatch.setattr(B, "decode_s", lambda data: calls.append(data) or real(data))
    out = tmp_path / "r"
    assert B.main(["--inputs", str(tmp_path / "c.y4m"), "--bits", "6", "--adapt", "2",
                   "--repeat", "2", "--out", str(out)]) == 0
    r = json.loads(out.with_suffix(".json").read_text())["clips"]["c.y4m"]
    assert r["updates"] == 1 and r["adapted_bytes"] > r["plain_bytes"]
    assert [len(d) for d in calls] == [r["plain_bytes"], r["adapted_bytes"]] * 2  # in turn
    assert r["adapted_s"] == pytest.approx(float(np.median(r["times"]["adapted"])))
    assert "| c.y4m | 9 | 6 | 2 |" in out.with_suffix(".md").read_text()
