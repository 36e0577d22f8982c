"""neuralcodec.evaluate: the one "encode, decode, measure" path and its metrics."""
import math

import numpy as np
import pytest

from neuralcodec import codec
from neuralcodec.errors import InputError
from neuralcodec.evaluate import PSNR_CAP, measure, ms_ssim_rgb, psnr, psnr_from_mse

from test_codec import clip  # noqa: E402


def test_psnr_pools_the_squared_error():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0] = 10  # frame 0: MSE 100, frame 1: exact → pooled MSE 50, not a mean of per-frame PSNRs
    assert psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 / 50))
    assert psnr(a, a) == PSNR_CAP and float(psnr_from_mse(0.0)) == PSNR_CAP
    with pytest.raises(InputError):
        psnr(a, b[:1])


def test_ms_ssim_needs_five_scales():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    assert ms_ssim_rgb(small, small) == {}
    big = rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    r = ms_ssim_rgb(big, big)
    assert r["ms_ssim"] == pytest.approx(1.0) and r["ms_ssim_win"] == 3


def test_measure_is_the_codec_round_trip(make_tiny):
    """measure() reports the real stream (its bytes are what codec.compress writes) and the
    PSNR of what codec.decompress gives back."""
    model = make_tiny(0.05)
    v = clip(t=9)
    pt = measure(model, v, bits=4, ssim=False)
    assert pt.stream == codec.compress(model, v, bits=4)
    _, rec = codec.decompress(pt.stream, model=model)
    assert pt.psnr_rgb == pytest.approx(psnr(v, rec)) and pt.psnr_rgb < PSNR_CAP
    assert (pt.bits, pt.frames, pt.height, pt.width, pt.bytes) == (4, 9, 30, 42, len(pt.stream))
    assert pt.bpp == pytest.approx(8 * len(pt.stream) / (9 * 30 * 42))
    assert pt.ms_ssim is None and "stream" not in pt.row() and pt.row()["bytes"] == pt.bytes
    assert measure(model, v, ssim=False).bits == model.cfg.bits


def test_knee_bits_stops_where_a_doubling_gains_too_little():
    from neuralcodec.evaluate import knee_bits
    # 6 → 12: 2 dB for 2x bytes; 12 → 18: 1.2 dB for 2x; 18 → 24: 0.3 dB for 1.8x
    curve = [(24, 7200, 26.5), (6, 1000, 23.0), (12, 2000, 25.0), (18, 4000, 26.2)]
    assert knee_bits(curve) == 18
    assert knee_bits(curve, min_db_per_doubling=1.5) == 12
    assert knee_bits(curve, min_db_per_doubling=0.1) == 24
    assert knee_bits([(6, 10, 20.0), (12, 10, 21.0)]) == 6  # no more bytes: no step
    with pytest.raises(ValueError):
        knee_bits([])


def test_pooled_psnr_weights_each_clip_by_its_pixels():
    from neuralcodec.evaluate import RatePoint, pooled_psnr

    def pt(mse, frames):
        return RatePoint(bits=6, frames=frames, width=4, height=4, bytes=1, bpp=0.1, mse=mse,
                         psnr_rgb=float(psnr_from_mse(mse)), ms_ssim=None, encode_s=1.0,
                         decode_s=1.0, stream=b"")

    # 1 frame at MSE 100 and 3 frames at MSE 20 → pooled MSE 40, not the mean of two PSNRs
    assert pooled_psnr([pt(100.0, 1), pt(20.0, 3)]) == pytest.approx(10 * math.log10(255 ** 2 / 40))
    assert pooled_psnr([pt(0.0, 2)]) == PSNR_CAP


def test_measure_records_the_bits_the_stream_stores(make_tiny, monkeypatch):
    """Without bits, the stream stores the model's default (a registry field): the point says so."""
    from neuralcodec import weights
    from neuralcodec.options import EncodeOptions
    model = make_tiny(0.05)
    entry = weights.ModelEntry(model.name, "x.safetensors", model.sha256, None, 4)
    monkeypatch.setattr(weights, "registry", lambda models_dir=None: {model.name: entry})
    v = clip(t=5)
    pt = measure(model, v, ssim=False)
    assert pt.bits == 4 and pt.stream == codec.compress(model, v, bits=4)
    assert measure(model, v, EncodeOptions(bits=5), ssim=False).bits == 5
