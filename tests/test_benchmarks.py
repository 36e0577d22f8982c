"""Tests of the rate-distortion harness (benchmarks/rd): BD-rate wrapper, metrics, y4m I/O,
codec command lines, and the cache. Only the last test needs FFmpeg (skipped without it)."""
import math
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("bjontegaard")
pytest.importorskip("pytorch_msssim")

from benchmarks.rd import codecs as C  # noqa: E402
from benchmarks.rd import metrics as M  # noqa: E402
from benchmarks.rd.bdrate import bd_rate, mean_bd, pareto_front  # noqa: E402
from benchmarks.rd.cache import ResultCache  # noqa: E402
from benchmarks.rd.runner import BenchConfig, read_raw_yuv420, run_benchmark  # noqa: E402
from benchmarks.rd.source import fit_size, make_synthetic_clip, parse_size, prepare_source  # noqa: E402
from benchmarks.rd.y4m import YUVVideo, read_y4m, write_y4m, yuv420_to_rgb  # noqa: E402
from neuralcodec.errors import InputError  # noqa: E402

RATE = [0.02, 0.05, 0.11, 0.25, 0.6]
PSNR = [28.0, 31.0, 34.5, 37.0, 40.5]


# ---------------------------------------------------------------- BD-rate
def test_bd_rate_identical_curves_is_zero():
    r = bd_rate(RATE, PSNR, RATE, PSNR)
    assert r.value == pytest.approx(0.0, abs=1e-9)
    assert r.points == (5, 5) and r.overlap == pytest.approx(1.0)


@pytest.mark.parametrize("factor, expected", [(2.0, 100.0), (0.5, -50.0), (1.1, 10.0)])
def test_bd_rate_constant_rate_factor(factor, expected):
    # the test curve needs `factor` times the anchor's rate at every quality → BD-rate = factor - 1
    r = bd_rate(RATE, PSNR, [x * factor for x in RATE], PSNR)
    assert r.value == pytest.approx(expected, rel=1e-9)


def test_bd_rate_hand_checked_shifted_curve():
    # anchor: psnr = 10·log10(rate) + 50 (a straight line in log-rate); test is 1 dB better
    # everywhere → log10 rate saving = 0.1 decades over the overlap → 10^-0.1 - 1 = -20.57 %
    ra = np.array([0.01, 0.03, 0.1, 0.3, 1.0])
    da = 10 * np.log10(ra) + 50
    r = bd_rate(ra, da, ra, da + 1.0)
    assert r.value == pytest.approx((10 ** -0.1 - 1) * 100, abs=1e-6)
    assert r.overlap < 1.0


def test_bd_rate_unequal_point_counts_and_order():
    # log-rate linear in PSNR, so PCHIP is exact whatever the number of points
    ra = np.array([0.01, 0.03, 0.1, 0.3, 1.0])
    da = 10 * np.log10(ra) + 50
    r = bd_rate(ra[::-1], da[::-1], 2 * ra[:4], da[:4])
    assert r.value == pytest.approx(100.0, rel=1e-9)


def test_bd_rate_no_overlap_and_too_few_points_are_na():
    r = bd_rate(RATE, PSNR, RATE, [p + 20 for p in PSNR])
    assert r.value is None and "overlap" in r.reason and str(r) == "n/a"
    r = bd_rate(RATE, PSNR, RATE[:3], PSNR[:3])
    assert r.value is None and "fewer than 4" in r.reason
    r = bd_rate(RATE, PSNR, RATE, [float("nan")] * 5)
    assert r.value is None


def test_pareto_front_drops_dominated_points():
    r, d = pareto_front([0.1, 0.2, 0.3, 0.4], [30.0, 29.0, 33.0, 33.0])
    assert r.tolist() == [0.1, 0.3] and d.tolist() == [30.0, 33.0]


def test_mean_bd_skips_undefined():
    a = bd_rate(RATE, PSNR, [x * 2 for x in RATE], PSNR)
    b = bd_rate(RATE, PSNR, RATE[:2], PSNR[:2])
    m = mean_bd([a, b, a])
    assert m.value == pytest.approx(100.0) and m.points == (2, 3) and "2 of 3" in m.reason
    assert mean_bd([b]).value is None


# ---------------------------------------------------------------- metrics
def _clip(t=3, h=64, w=96, seed=0, lo=40, hi=200):
    rng = np.random.default_rng(seed)
    y = rng.integers(lo, hi, (t, h, w), dtype=np.uint8)
    u = rng.integers(lo, hi, (t, h // 2, w // 2), dtype=np.uint8)
    v = rng.integers(lo, hi, (t, h // 2, w // 2), dtype=np.uint8)
    return YUVVideo(y, u, v, Fraction(25), 8)


def test_identical_frames_psnr_capped_and_msssim_one():
    a = _clip(h=192, w=192)
    p = M.psnr_metrics(a, a)
    for k in ("psnr_y", "psnr_u", "psnr_v", "psnr_yuv", "psnr_rgb"):
        assert p[k] == M.PSNR_CAP
    rgb = yuv420_to_rgb(a)
    s = M.ms_ssim_rgb(rgb, rgb)
    assert s["ms_ssim"] == pytest.approx(1.0, abs=1e-5) and s["ms_ssim_win"] == 11


def test_constant_error_gives_analytic_psnr():
    a = _clip()
    b = YUVVideo(a.y + 2, a.u, a.v, a.fps, 8)  # |error| = 2 on every luma sample → MSE 4
    p = M.psnr_metrics(a, b)
    assert p["psnr_y"] == pytest.approx(10 * math.log10(255 ** 2 / 4), abs=1e-9)
    assert p["psnr_yuv"] == pytest.approx((6 * p["psnr_y"] + 2 * M.PSNR_CAP) / 8)


def test_uniform_noise_gives_analytic_psnr():
    # integer noise uniform on {-3..3}: variance (7² - 1) / 12 = 4 → PSNR = 10·log10(255² / 4) = 42.11 dB
    a = _clip(t=4, h=128, w=128)
    rng = np.random.default_rng(1)
    noisy = [(p.astype(np.int16) + rng.integers(-3, 4, p.shape)).astype(np.uint8) for p in (a.y, a.u, a.v)]
    p = M.psnr_metrics(a, YUVVideo(*noisy, a.fps, 8))
    expected = 10 * math.log10(255 ** 2 / 4.0)
    for k in ("psnr_y", "psnr_u", "psnr_v", "psnr_yuv"):
        assert p[k] == pytest.approx(expected, abs=0.1)
    assert p["psnr_rgb"] < expected  # the YUV→RGB matrix amplifies the error


def test_psnr_from_mse_and_shape_check():
    assert M.psnr_from_mse(np.array([0.0, 255.0 ** 2])).tolist() == [M.PSNR_CAP, 0.0]
    with pytest.raises(InputError):
        M.frame_mse(np.zeros((1, 4, 4)), np.zeros((1, 4, 2)))


def test_lpips_zero_for_identical_and_positive_for_noise():
    if M.lpips_model() is None:
        pytest.skip("no LPIPS weights offline")
    yy, xx = np.mgrid[0:64, 0:64]
    smooth = np.stack([xx * 3, yy * 3, (xx + yy) * 2], -1)[None].repeat(2, 0).astype(np.int16)
    a = smooth.astype(np.uint8)
    assert M.lpips_rgb(a, a) == pytest.approx(0.0, abs=1e-6)
    rng = np.random.default_rng(0)
    d = [M.lpips_rgb(a, np.clip(smooth + rng.integers(-k, k + 1, a.shape), 0, 255).astype(np.uint8))
         for k in (5, 40)]
    assert 0 < d[0] < d[1]
    assert M.lpips_rgb(a[:, :16, :16], a[:, :16, :16]) is None  # too small for AlexNet


def test_msssim_window_for_small_frames():
    assert M.msssim_window(360, 640) == 11
    assert M.msssim_window(96, 128) == 5
    assert M.msssim_window(20, 20) is None


# ---------------------------------------------------------------- y4m and sources
def test_y4m_round_trip_8_and_10_bit(tmp_path):
    a = _clip()
    write_y4m(tmp_path / "a.y4m", a)
    b = read_y4m(tmp_path / "a.y4m")
    assert b.bit_depth == 8 and b.fps == 25 and np.array_equal(a.y, b.y) and np.array_equal(a.v, b.v)
    write_y4m(tmp_path / "a10.y4m", a.to_10bit())
    c = read_y4m(tmp_path / "a10.y4m")
    assert c.bit_depth == 10 and int(c.y.max()) == int(a.y.max()) * 4
    assert np.array_equal(c.to_8bit().u, a.u)
    (tmp_path / "bad.y4m").write_bytes(b"YUV4MPEG2 W8 H8\nFRAME\n123")
    with pytest.raises(InputError):
        read_y4m(tmp_path / "bad.y4m")


def test_raw_yuv_reader(tmp_path):
    a = _clip(t=2, h=8, w=8).to_10bit()
    raw = b"".join(np.concatenate([a.y[t].ravel(), a.u[t].ravel(), a.v[t].ravel()]).astype("<u2").tobytes()
                   for t in range(2))
    (tmp_path / "x.yuv").write_bytes(raw)
    b = read_raw_yuv420(tmp_path / "x.yuv", 8, 8, "yuv420p10le", Fraction(25))
    assert b.frames == 2 and np.array_equal(b.v, a.v)
    with pytest.raises(InputError):
        read_raw_yuv420(tmp_path / "x.yuv", 6, 8, "yuv420p10le", Fraction(25))


def test_gray_converts_to_gray_rgb():
    g = YUVVideo(np.full((1, 4, 4), 126, np.uint8), np.full((1, 2, 2), 128, np.uint8),
                 np.full((1, 2, 2), 128, np.uint8), Fraction(25))
    rgb = yuv420_to_rgb(g)
    assert (rgb == 128).all()  # (126 - 16) · 255/219 = 128.08


@pytest.mark.parametrize("size, box, expected", [
    ((1280, 720), (640, 360), (640, 360)), ((352, 288), (640, 360), (352, 288)),
    ((1920, 1080), (640, 360), (640, 360)), ((1000, 1000), (640, 360), (360, 360)),
    ((1280, 720), None, (1280, 720)), ((353, 289), (640, 360), (352, 288))])
def test_fit_size(size, box, expected):
    assert fit_size(*size, box) == expected


def test_parse_size():
    assert parse_size("640x360") == (640, 360)
    with pytest.raises(InputError):
        parse_size("640by360")


def test_prepare_source_downscales_and_limits_frames(tmp_path):
    clip = make_synthetic_clip(tmp_path / "syn.y4m", frames=6, width=128, height=96)
    src = prepare_source(clip, tmp_path / "work", frames=4, max_size=(64, 64))
    assert (src.width, src.height, src.frames) == (64, 48, 4)
    v = read_y4m(src.y4m)
    assert v.y.shape == (4, 48, 64) and read_y4m(src.y4m10).bit_depth == 10
    again = prepare_source(clip, tmp_path / "work", frames=4, max_size=(64, 64))
    assert again.sha256 == src.sha256


# ---------------------------------------------------------------- codecs
def test_x265_lowdelay_command_line():
    c = C.X265("medium", lowdelay=True, ffmpeg="ffmpeg")
    cmd = c.encode_cmd(Path("s.y4m"), Path("o.hevc"), 32, 64, 48)
    assert isinstance(cmd, list) and all(isinstance(a, str) for a in cmd)
    assert cmd[0] == "ffmpeg" and cmd[-1] == "o.hevc"
    assert cmd[cmd.index("-c:v") + 1] == "libx265" and cmd[cmd.index("-preset") + 1] == "medium"
    assert cmd[cmd.index("-crf") + 1] == "32"
    assert "bframes=0" in cmd[cmd.index("-x265-params") + 1].split(":")
    assert c.name == "x265-medium-ld" and c.point_label(32) == "crf32"
    ra = C.X265("veryslow", lowdelay=False, ffmpeg="ffmpeg")
    assert "bframes=0" not in ra.encode_cmd(Path("s"), Path("o"), 32, 64, 48)[-5] and ra.name == "x265-veryslow-ra"


def test_vvenc_command_line_is_10bit_fixed_qp_without_qpa():
    c = C.VVenC("faster", ffmpeg="ffmpeg")
    cmd = c.encode_cmd(Path("s10.y4m"), Path("o.266"), 37, 64, 48)
    assert cmd[cmd.index("-qpa") + 1] == "0" and cmd[cmd.index("-qp") + 1] == "37"
    assert cmd[cmd.index("-pix_fmt") + 1] == "yuv420p10le" and c.needs_10bit
    dec = c.decode_cmd(Path("o.266"), Path("d.yuv"))
    assert dec[dec.index("-pix_fmt") + 1] == "yuv420p10le"


def test_mgv_command_line():
    c = C.MGV(entropy="none")
    cmd = c.encode_cmd(Path("s.y4m"), Path("o.mgv"), 10, 64, 48)
    assert cmd[cmd.index("encode"):] == ["encode", "s.y4m", "-o", "o.mgv", "--bits", "10",
                                          "--entropy", "none", "-y", "-q"]
    dec = c.decode_cmd(Path("o.mgv"), Path("d.y4m"))
    assert dec[dec.index("decode"):] == ["decode", "o.mgv", "-o", "d.y4m", "-y", "-q"]
    assert C.MGV().name == "mgv" and C.MGV().points == (2, 6, 12, 18, 24)
    assert "--entropy" not in C.MGV().encode_cmd(Path("s"), Path("o"), 6, 8, 8)
    with pytest.raises(InputError):
        C.MGV(entropy="zip")


def test_make_codec_names():
    assert C.make_codec("x265-veryslow-ld").lowdelay
    assert C.make_codec("vvenc-medium", quick=True).points == C.QUICK_POINTS
    assert C.make_codec("mgv-context").entropy == "context"
    other = C.make_codec("mgv@mgv-s4-v1")  # another registered model: its own name and cache
    assert other.name == "mgv@mgv-s4-v1" and other.model == "mgv-s4-v1" and other.entropy is None
    assert other.encode_cmd(Path("s"), Path("o"), 6, 8, 8)[-4:-2] == ["--model", "mgv-s4-v1"]
    assert C.make_codec("mgv-none@m").entropy == "none"
    ref = C.make_codec("mgv-refine10")  # encoder refinement: its own name (and cache entries)
    assert ref.name == "mgv-refine10" and ref.refine == 10 and ref.entropy is None
    assert ref.encode_cmd(Path("s"), Path("o"), 6, 8, 8)[-4:-2] == ["--refine", "10"]
    assert "--refine" not in C.make_codec("mgv").encode_cmd(Path("s"), Path("o"), 6, 8, 8)
    assert C.make_codec("mgv-context-refine3@m").name == "mgv-context-refine3@m"
    slow = C.make_codec("mgv-slow")  # an encoder preset: its own name and cache entries
    assert slow.name == "mgv-slow" and slow.preset == "slow"
    assert slow.encode_cmd(Path("s"), Path("o"), 6, 8, 8)[-4:] == ["--preset", "slow", "-y", "-q"]
    with pytest.raises(InputError):
        C.make_codec("mgv-zip")
    av1 = C.make_codec("svtav1-p8")
    assert av1.name == "svtav1-p8" and av1.points == C.AV1_CRF_POINTS
    dec = av1.decode_cmd(Path("x.obu"), Path("d.yuv"))
    assert dec.index("libdav1d") < dec.index("-i")  # decoder chosen before the input
    with pytest.raises(InputError):
        C.make_codec("av2-fast")


# ---------------------------------------------------------------- pipeline and cache (no FFmpeg)
_COPY = "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2]); open(sys.argv[3], 'a').write('x')"


class CopyCodec(C.Codec):
    """A lossless fake codec: the 'bitstream' is the source .y4m itself; logs each encode."""

    ext = "bin"
    decoded_pix_fmt = "y4m"

    def __init__(self, name, log):
        self.name, self.log, self.points = name, str(log), (1, 2, 3, 4)

    def encode_cmd(self, src, out, point, width, height):
        return [sys.executable, "-c", _COPY, str(src), str(out), self.log]

    def decode_cmd(self, bitstream, out):
        return [sys.executable, "-c", _COPY, str(bitstream), str(out), self.log + ".dec"]

    def version(self):
        return "copy 1"


def test_pipeline_and_cache_second_run_recomputes_nothing(tmp_path):
    clip = make_synthetic_clip(tmp_path / "syn.y4m", frames=5, width=96, height=64)
    log = tmp_path / "encodes.log"
    cfg = dict(inputs=[str(clip)], out=tmp_path / "out", work=tmp_path / "work", frames=5, max_size=None,
               anchor="copy", vmaf=False, lpips=False)
    r1 = run_benchmark(BenchConfig(codecs=[CopyCodec("copy", log), CopyCodec("copy2", log)], **cfg),
                       log=lambda m: None)
    assert r1["cache"] == {"hits": 0, "misses": 8} and log.read_text() == "x" * 8
    e = r1["entries"][0]
    assert "error" not in e and e["psnr_yuv"] == M.PSNR_CAP and e["ms_ssim"] == pytest.approx(1.0)
    assert e["bpp"] == pytest.approx((tmp_path / "work/syn/source.y4m").stat().st_size * 8 / (96 * 64 * 5))
    assert r1["bd_rate"]["psnr_yuv"]["copy2"]["mean"]["value"] is None  # one distinct point: n/a, no crash
    r2 = run_benchmark(BenchConfig(codecs=[CopyCodec("copy", log), CopyCodec("copy2", log)], **cfg),
                       log=lambda m: None)
    assert r2["cache"] == {"hits": 8, "misses": 0} and log.read_text() == "x" * 8
    assert all(e.pop("cached") for e in r2["entries"]) and r2["entries"] == r1["entries"]
    # a new tool version invalidates only that codec's entries
    class Copy3(CopyCodec):
        def version(self):
            return "copy 2"
    r3 = run_benchmark(BenchConfig(codecs=[CopyCodec("copy", log), Copy3("copy2", log)], **cfg),
                       log=lambda m: None)
    assert r3["cache"] == {"hits": 4, "misses": 4}


def test_failed_point_is_reported_not_cached(tmp_path):
    class Broken(CopyCodec):
        def encode_cmd(self, src, out, point, width, height):
            return [sys.executable, "-c", "import sys; sys.exit('boom')"]

    clip = make_synthetic_clip(tmp_path / "syn.y4m", frames=2, width=64, height=48)
    cfg = BenchConfig(inputs=[str(clip)], out=tmp_path / "out", work=tmp_path / "work", frames=2, max_size=None,
                      codecs=[CopyCodec("copy", tmp_path / "l"), Broken("broken", tmp_path / "l")],
                      anchor="copy", vmaf=False, lpips=False)
    r = run_benchmark(cfg, log=lambda m: None)
    bad = [e for e in r["entries"] if e["codec"] == "broken"]
    assert len(bad) == 4 and all("boom" in e["error"] for e in bad)
    assert not ResultCache(tmp_path / "out" / "cache").path("syn", "broken", "1").exists()


# ---------------------------------------------------------------- real FFmpeg (skipped without it)
def test_x265_end_to_end_tiny(tmp_path):
    ff = C.ffmpeg_exe()
    if ff is None or "libx265" not in C.ffmpeg_capabilities(ff)["encoders"]:
        pytest.skip("no FFmpeg with libx265")
    from benchmarks.rd.report import write_report

    clip = make_synthetic_clip(tmp_path / "syn.y4m", frames=5, width=64, height=48)
    cfg = BenchConfig(inputs=[str(clip)], out=tmp_path / "out", work=tmp_path / "work", frames=5,
                      max_size=None, codecs=["x265-medium-ra", "x265-medium-ld"], quick=True, vmaf=False,
                      lpips=False)
    r = run_benchmark(cfg, log=lambda m: None)
    es = sorted((e for e in r["entries"] if e["codec"] == "x265-medium-ra"), key=lambda e: e["point"])
    assert all("error" not in e for e in es), es
    assert [e["point"] for e in es] == list(C.QUICK_POINTS)
    assert es[0]["bpp"] > es[-1]["bpp"] > 0 and es[0]["psnr_yuv"] > es[-1]["psnr_yuv"] > 20
    assert "HEVC" not in r["versions"]["x265-medium-ra"] and "libx265" in r["versions"]["x265-medium-ra"]
    paths = write_report(r, cfg.out)
    assert paths["report"].read_text().startswith("# Rate-distortion benchmark")
    assert paths["plot:syn"].stat().st_size > 1000


# ---------------------------------------------------------------- command line
def test_cli_quick_defaults_and_bad_input(tmp_path, capsys):
    from benchmarks.rd.cli import build_parser, config_from_args, main

    argv = ["--inputs", "a.mp4", "--quick"]
    cfg = config_from_args(build_parser().parse_args(argv), argv)
    assert (cfg.frames, cfg.max_size, tuple(cfg.codecs)) == (9, (320, 180), C.QUICK_CODECS)
    assert cfg.command.endswith("--inputs a.mp4 --quick")
    argv = ["--inputs", "a.mp4", "--max-size", "native", "--frames", "17", "--codecs", "x265-medium-ra,mgv"]
    cfg = config_from_args(build_parser().parse_args(argv), argv)
    assert (cfg.frames, cfg.max_size, tuple(cfg.codecs)) == (17, None, ("x265-medium-ra", "mgv"))
    rc = main(["--inputs", str(tmp_path / "missing.mp4"), "--codecs", "x265-medium-ra",
               "--out", str(tmp_path / "o"), "--work", str(tmp_path / "w")])
    assert rc == 2 and "missing.mp4" in capsys.readouterr().err
    assert main(["--inputs", "x", "--codecs", "mgv"]) == 2  # the anchor must be among the codecs
