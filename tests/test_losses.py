"""The encoder's distortion (neuralcodec.losses): MSE plus an optional MS-SSIM term, the term left
out where the frames are too small for 5 scales, finite gradients from a bfloat16 output; the
MS-SSIM computed on channels-last frames (the fast oneDNN path) equal to pytorch-msssim's."""
import pytest
import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim

import pytorch_msssim

from neuralcodec.losses import distortion, ms_ssim_frames, msssim_window


def clip(t=3, h=112, w=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, t, h, w, generator=g) * 2 - 1
    return torch.nn.functional.avg_pool3d(x, (1, 5, 5), 1, (0, 2, 2))  # some structure


def test_mse_alone_and_with_the_msssim_term():
    a, b = clip(), clip(seed=1)
    assert torch.equal(distortion(a, b), F.mse_loss(a, b))
    assert torch.equal(distortion(a, b, 0.0), F.mse_loss(a, b))
    win = msssim_window(112, 128)
    ref = F.mse_loss(a, b) + 0.1 * (1 - ms_ssim((a[0].transpose(0, 1) + 1) / 2, (b[0].transpose(0, 1) + 1) / 2,
                                                data_range=1.0, win_size=win))
    assert float(distortion(a, b, 0.1)) == pytest.approx(float(ref), rel=1e-6)
    assert float(distortion(a, b, 0.1)) > float(F.mse_loss(a, b))
    assert float(distortion(b, b, 0.1)) == pytest.approx(0.0, abs=1e-6)


def test_small_frames_leave_the_term_out_and_bf16_gives_finite_gradients():
    a, b = clip(h=32, w=48), clip(h=32, w=48, seed=1)
    assert msssim_window(32, 48) is None
    assert torch.equal(distortion(a, b, 0.1), F.mse_loss(a, b))
    x = clip().to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", torch.bfloat16):
        loss = distortion(x * 1, clip(seed=2), 0.1)
    g, = torch.autograd.grad(loss, [x])
    assert loss.dtype == torch.float32 and torch.isfinite(g.float()).all() and g.abs().sum() > 0


def test_channels_last_msssim_equals_the_library_and_is_the_path_that_runs(monkeypatch):
    a0, b = clip(t=4, h=176, w=192)[0].transpose(0, 1), clip(t=4, h=176, w=192, seed=1)[0].transpose(0, 1)
    a0, b = (a0 + 1) / 2, (b + 1) / 2  # N×3×H×W in [0, 1], contiguous NCHW
    got, want = [], []
    for out, fn in ((got, lambda a: ms_ssim_frames(a, b, 1.0, 11)),
                    (want, lambda a: ms_ssim(a, b, data_range=1.0, win_size=11))):
        a = a0.clone().requires_grad_(True)
        v = fn(a)
        v.backward()
        out += [v.detach(), a.grad]
    assert float(got[0]) == pytest.approx(float(want[0]), rel=1e-6)
    assert torch.allclose(got[1], want[1], rtol=1e-4, atol=1e-7)
    seen = []
    real = pytorch_msssim.ms_ssim

    def spy(x, y, **kw):
        seen.append(x.is_contiguous(memory_format=torch.channels_last)
                    and y.is_contiguous(memory_format=torch.channels_last))
        return real(x, y, **kw)

    monkeypatch.setattr(pytorch_msssim, "ms_ssim", spy)
    distortion(clip(h=176, w=192), clip(h=176, w=192, seed=1), 0.1)
    assert seen == [True]  # the encoder's loss goes through the channels-last call
