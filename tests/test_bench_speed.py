"""benchmarks/bench_speed.py: inputs, the fast-path switch of its worker, one measured command
and the report (the measurements themselves are the script's job, not a test's)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks import bench_speed as B
from neuralcodec import video_io as vio
from neuralcodec import video_out as vout

ROOT = Path(__file__).resolve().parents[1]


def test_make_input_scales_and_loops(tmp_path):
    src = tmp_path / "src.mkv"
    frames = np.random.default_rng(0).integers(0, 256, (3, 24, 32, 3), dtype=np.uint8)
    vout.write_video(src, vio.VideoMeta(32, 24, B.Fraction(25), 3, "rgb24"), iter(frames), kind="mkv")
    out = tmp_path / "x.mkv"
    arr = B.make_input(src, out, 5, 16, 12)
    assert arr.shape == (5, 12, 16, 3)
    np.testing.assert_array_equal(arr[3], arr[0])  # looped
    got = np.stack(list(vio.read_frames(out)))
    np.testing.assert_array_equal(got, arr)  # the reference is what the codec will read


def test_worker_switches_the_fast_path_off():
    code = B._WORKER.replace("from neuralcodec.cli import main", "import neuralcodec.layers as M")
    code = code.replace("main()", "print(M.fast_path())")
    for flag, want in (("1", "True"), ("0", "False")):
        r = subprocess.run([sys.executable, "-c", "import torch\ntorch.set_grad_enabled(False)\n" + code,
                            flag], capture_output=True, text=True, cwd=ROOT)
        assert r.stdout.strip() == want, r.stderr


def test_run_measured_and_report(tmp_path):
    src = tmp_path / "s.mkv"
    frames = np.full((2, 24, 32, 3), 100, np.uint8)
    vout.write_video(src, vio.VideoMeta(32, 24, B.Fraction(25), 2, "rgb24"), iter(frames), kind="mkv")
    r = B.run_measured(ROOT, True, ["encode", str(src), "-o", str(tmp_path / "s.mgv")], 1)
    assert r["rss_mb"] > 10 and r["wall"] > 0 and r["fps"] > 0
    res = {"input": "clip.mkv", "baseline": "abc", "threads": 2, "load_before": 0.1, "load_after": 0.2,
           "sizes": {"360p": {"frames": 9, "width": 640, "height": 360, "run": "now", "configs": {
               c: {"encode": {"fps": f, "rss_mb": 100}, "decode": {"fps": f / 2, "rss_mb": 200},
                   "bytes": 10, "psnr": 20.0} for c, f in (("release", 1.0), ("fast-bf16", 3.0))}}},
           "long": {"frames": 250, "seconds": 10, "encode": {"fps": 1, "rss_mb": 1500},
                    "decode": {"fps": 0.5, "rss_mb": 1800}}}
    res["sizes"] = {"1080p": {**res["sizes"]["360p"], "repeat": 3}, **res["sizes"]}  # merged: out of order
    B.report(res, tmp_path / "speed")
    md = (tmp_path / "speed.md").read_text()
    assert md.index("| 360p |") < md.index("| 1080p |") and "now (median of 3) |" in md
    assert "| 360p | 9 | fast-bf16 | 3.00 | 100 | 1.50 | 200 | 10 | 20.00 | 3.00× | 3.00× | now |" in md
    assert "1800 MB" in md and json.loads((tmp_path / "speed.json").read_text())["baseline"] == "abc"


def test_repeated_runs_report_the_median():
    runs = [{"wall": w, "fps": f, "rss_mb": m} for w, f, m in ((3.0, 2.0, 100), (1.0, 6.0, 300), (2.0, 3.0, 200))]
    got = B.combine(runs)
    assert got == {"wall": 2.0, "fps": 3.0, "rss_mb": 300, "fps_runs": [2.0, 6.0, 3.0]}
