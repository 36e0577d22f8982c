"""The encoder's distortion (neuralcodec.losses): MSE plus an optional MS-SSIM term, the term left
out where the frames are too small for 5 scales, finite gradients from a bfloat16 output."""
import pytest
import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim

from neuralcodec.losses import distortion, msssim_window


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
