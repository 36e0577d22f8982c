"""benchmarks/bench_adapt.py on a tiny model: each point is the codec's own stream and
measurement, the adapted point carries the encoder's decision, the summary compares curves."""
import numpy as np
import pytest

from benchmarks import bench_adapt as B
from neuralcodec import codec, finetune
from neuralcodec.evaluate import psnr

from test_codec import clip  # noqa: E402


def test_points_and_summary(make_tiny, tmp_path):
    model = make_tiny(0.05)
    v = clip(t=9)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(finetune.Fitting, "own_slope", lambda self, segs: float("-inf"))  # always send the update
        pts = [B.point(model, v, b, a, decoder=model) for b in (2, 4) for a in (0, 5)]
    plain = codec.compress(model, v, bits=4)
    assert pts[2]["bytes"] == len(plain) and pts[2]["adaptation"] is None
    assert abs(pts[2]["psnr_rgb"] - psnr(v, codec.decompress(plain, model=model)[1])) < 1e-9
    assert pts[3]["adaptation"]["kept"] and pts[3]["bytes"] > pts[2]["bytes"]
    clip_res = {"frames": 9, "width": v.shape[2], "height": v.shape[1], "points": pts}
    s = B.summary(clip_res)
    assert "bd_rate_psnr" in s and "gain_at_plain_18" not in s  # no 18-bit point here
    assert list(s["gain_at_plain"]) == ["2", "4"]  # the adapted curve at each plain point's rate
    for b, g in s["gain_at_plain"].items():
        p0 = next(p for p in pts if p["bits"] == int(b) and p["adapt"] == 0)
        want = B.at_rate([p for p in pts if p["adapt"]], p0["bpp"])
        assert g == (None if want is None else pytest.approx(want - p0["psnr_rgb"]))
    assert list(s["above_plain"]) == ["2", "4"]  # and each adapted point against the plain curve
    for b, g in s["above_plain"].items():
        p1 = next(p for p in pts if p["bits"] == int(b) and p["adapt"])
        want = B.at_rate([p for p in pts if not p["adapt"]], p1["bpp"])
        assert g == (None if want is None else pytest.approx(p1["psnr_rgb"] - want))
    res = {"command": "x", "machine": "m", "date": "d", "model": "tiny", "clips": {"c": clip_res}}
    B.report(res, tmp_path / "r")
    md = (tmp_path / "r.md").read_text()
    assert md.count("\n| 4 |") == 2 and "sent:" in md and "at each plain point's rate" in md


def test_at_rate_interpolates_in_log_rate():
    pts = [{"bpp": 0.01, "psnr_rgb": 20.0}, {"bpp": 0.04, "psnr_rgb": 24.0}]
    assert B.at_rate(pts, 0.02) == pytest.approx(22.0) and B.at_rate(pts, 0.1) is None
    assert np.isfinite(B.at_rate(pts, 0.04))
