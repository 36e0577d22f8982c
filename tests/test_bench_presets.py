"""benchmarks/bench_presets.py on a tiny model: one row per preset, each the codec's own
measurement of that preset's stream, and a table against the first preset."""
from benchmarks import bench_presets as B
from neuralcodec import codec
from neuralcodec.configs import PRESETS
from neuralcodec.evaluate import psnr

from test_codec import clip  # noqa: E402


def test_rows_are_the_presets_streams(make_tiny):
    model = make_tiny(0.05)
    v = clip(t=5)
    rows = B.bench(model, [v], bits=4, presets=("fast", "medium"))
    assert [r["preset"] for r in rows] == ["fast", "medium"]
    assert [r["refine"] for r in rows] == [PRESETS["fast"]["refine"], PRESETS["medium"]["refine"]]
    assert [r["adapt"] for r in rows] == [PRESETS["fast"]["adapt"], PRESETS["medium"]["adapt"]]
    assert [r["adapted"] for r in rows] == [0, 0]  # no adaptation in these presets: no ADAPT record
    data = codec.compress(model, v, bits=4, refine=PRESETS["medium"]["refine"])
    assert rows[1]["bpp"] == 8 * len(data) / v[..., 0].size
    assert abs(rows[1]["psnr_rgb"] - psnr(v, codec.decompress(data, model=model)[1])) < 1e-9
    t = B.table(rows).splitlines()
    assert len(t) == 4 and t[2].startswith("| fast | 0 | 0 | 0 | 0/1 |") and "+0.0%" in t[2]


def test_rows_count_the_streams_that_carry_an_adapt_record(make_tiny, monkeypatch):
    from neuralcodec import finetune
    model = make_tiny(0.05)
    monkeypatch.setattr(finetune.Fitting, "own_slope", lambda self, segs: float("-inf"))  # always send the update
    monkeypatch.setitem(PRESETS, "slow", {**PRESETS["slow"], "refine": 0, "adapt": 3})
    rows = B.bench(model, [clip(t=5)], bits=4, presets=("fast", "slow"))
    assert [(r["adapt"], r["adapted"]) for r in rows] == [(0, 0), (3, 1)]
    assert rows[1]["bpp"] > rows[0]["bpp"]  # the record's bytes are counted
    assert "| slow | 0 | 3 | 0 | 1/1 |" in B.table(rows)
