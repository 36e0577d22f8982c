"""The recipe study (lab/studies/bench_recipes.py) without training: every variant's flags are
valid train.py flags that differ from the control, the validation split holds clips apart,
the curve comes from eval.csv, and the report and plot are written from results."""
import argparse
import json

import pytest

from lab.studies import bench_recipes as R
from lab.train.args import parse_train_args


def _argv(args: dict):
    out = []
    for k, v in {**R.COMMON, **args}.items():
        out += [f"--{k}", v]
    return out


def test_every_variant_is_a_valid_recipe_and_differs_from_the_control():
    control = parse_train_args(_argv({}))
    assert control.clock == "cpu" and control.threads == 1 and control.cpu_bf16
    seen = set()
    for name, v in R.VARIANTS.items():
        assert v["desc"], name
        tc = parse_train_args(_argv(v["args"]))
        tc.tokenizer_config()  # the architecture overrides are valid
        if name != "control":
            assert tc != control, name
        key = json.dumps(v["args"], sort_keys=True)
        assert key not in seen, f"{name} repeats another variant"
        seen.add(key)
    assert len(R.VARIANTS) >= 8


def test_split_holds_validation_clips_apart(tmp_path):
    data = tmp_path / "train"
    data.mkdir()
    for n in list(R.VAL_CLIPS) + ["a.mp4", "b.mkv", "notes.txt"]:
        (data / n).write_bytes(b"x")
    tr, va = R.make_split(data, tmp_path / "split")
    assert sorted(p.name for p in va.iterdir()) == sorted(R.VAL_CLIPS)
    assert sorted(p.name for p in tr.iterdir()) == ["a.mp4", "b.mkv"]
    assert all(p.is_symlink() for p in tr.iterdir())
    (data / R.VAL_CLIPS[0]).unlink()
    with pytest.raises(SystemExit):
        R.make_split(data, tmp_path / "split2")


def test_curve_and_report(tmp_path):
    run = tmp_path / "control"
    run.mkdir()
    (run / "eval.csv").write_text("step,minutes,bits,bpp,psnr,ms_ssim\n50,1.5,18,0.08,16.0,0.6\n"
                                  "50,1.5,6,0.03,15.0,0.5\n100,3.0,18,0.08,17.0,0.62\n")
    assert R.curve(run) == [[1.5, 16.0], [3.0, 17.0]]
    assert R.curve(tmp_path / "missing") == []

    def res(name, top):
        return {"variant": name, "desc": R.VARIANTS[name]["desc"], "bits": 18, "params": 1,
                "dec_macs_px": 9e4, "enc_macs_px": 2e4, "steps": 200, "cpu_minutes": 6.0,
                "steps_per_cpu_min": 33.3, "decode_fps": 3.0, "decode_size": [256, 448],
                "rates": [{"bits": b, "psnr": top - (18 - b) / 10, "ms_ssim": 0.6,
                           "coded_bpp": b / 2000, "raw_bpp": b / 256} for b in (2, 6, 10, 14, 18)],
                "curve": [[3.0, top - 1], [6.0, top]]}

    a = argparse.Namespace(cpu_minutes=6.0, val_short_side=256, threads=1, parallel=2,
                           notes="## notes\n")
    R.write_report([res("control", 17.5), res("dec-wide", 18.3)], tmp_path / "recipes", a)
    md = (tmp_path / "recipes.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| dec-wide") or ln.startswith("| control")]
    assert rows[0].startswith("| dec-wide") and "+0.80" in rows[0]  # best first, Δ vs control
    assert "## notes" in md
    pytest.importorskip("matplotlib")
    assert (tmp_path / "recipes.png").stat().st_size > 1000


def test_psnr_at_one_coded_rate():
    """The report's equal-rate column: linear in log bpp between the points around the rate,
    None outside the curve."""
    rates = [{"bits": 2, "coded_bpp": 0.002, "psnr": 16.0}, {"bits": 18, "coded_bpp": 0.008, "psnr": 18.0},
             {"bits": 6, "coded_bpp": 0.004, "psnr": 17.5}]
    assert R.psnr_at_bpp(rates, 0.004) == pytest.approx(17.5)
    assert R.psnr_at_bpp(rates, 0.002 * 2 ** 0.5) == pytest.approx(16.75)  # halfway in log bpp
    assert R.psnr_at_bpp(rates, 0.001) is None and R.psnr_at_bpp(rates, 0.01) is None
