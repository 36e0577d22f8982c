"""Causal building blocks of the tokenizer.

Every layer here is causal in time: output frame t depends on input frames <= t only, and
normalization statistics are computed per frame (never across frames). Layers that look at
past frames keep that past in a *stream buffer* while streaming, so that a video encoded in
chunks gives bit-identical results to the video encoded in one piece (see
:func:`streaming`).

Tensor layout everywhere: ``B×C×T×H×W``.

**Inference fast path.** Without autograd (``torch.no_grad`` / ``inference_mode``) every
convolution runs as a 2D convolution (:func:`conv3d_fast`): a 1×kh×kw kernel on the frames
stacked into the batch, a kt×1×1 kernel as a kt×1 kernel over time × (H·W); the activations
stay channels-last (``torch.channels_last_3d``), so these are views, not copies, and oneDNN /
cuDNN run their fastest kernels (PyTorch's CPU Conv3d falls back to an im2col path for these
shapes: slow and memory-hungry). Training keeps ``nn.Conv3d``, the reference the fast path is
tested against.
"""
from __future__ import annotations

import contextlib
import itertools
from typing import Iterator, List, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn


# The inference fast path on (the default). Only benchmarks switch it off, to measure it.
FAST_PATH = True


def fast_path() -> bool:
    """True where the inference fast path runs: autograd is off (and :data:`FAST_PATH`)."""
    return FAST_PATH and not torch.is_grad_enabled()


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``B×C×T×H×W`` → the same values in ``torch.channels_last_3d`` memory format."""
    return x.contiguous(memory_format=torch.channels_last_3d)


def conv3d_fast(x: torch.Tensor, conv: nn.Conv3d) -> torch.Tensor:
    """``conv(x)`` for ``x`` ``B×C×T×H×W`` (temporal padding already applied) as one 2D
    convolution where the kernel allows: 1×kh×kw (frames into the batch) or kt×1×1 (time ×
    flattened space); other kernels use ``conv`` itself. Same values as ``conv(x)`` up to
    float rounding; channels-last in, channels-last out."""
    kt, kh, kw = conv.kernel_size
    st, sh, sw = conv.stride
    pt, ph, pw = conv.padding
    x = channels_last(x)  # a no-op on the path's own tensors; a copy where an op lost the format
    b, c, t, h, wd = x.shape
    if kt == 1 and st == 1 and pt == 0:
        y = F.conv2d(x.transpose(1, 2).reshape(b * t, c, h, wd), _fast_weight(conv, "spatial"),
                     conv.bias, stride=(sh, sw), padding=(ph, pw))
        return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)
    if kh == kw == 1 and sh == sw == 1 and ph == pw == 0 and pt == 0:
        y = F.conv2d(x.reshape(b, c, t, h * wd), _fast_weight(conv, "temporal"), conv.bias,
                     stride=(st, 1))
        return y.reshape(b, y.shape[1], y.shape[2], h, wd)
    return conv(x)


def temporal_conv(head: List[torch.Tensor], x: torch.Tensor, conv: nn.Conv3d) -> torch.Tensor:
    """A kt×1×1, stride-1 ``conv`` over the frames ``[*head, x]`` (``head``: the kt-1 frames
    before ``x``, each ``B×C×H×W``; ``x`` ``B×C×T×H×W`` channels-last) → ``B×Cout×T×H×W``
    channels-last, as kt matrix products accumulated in place (no concatenated copy of the
    input: on a CPU the copies cost as much as the products)."""
    kt = conv.kernel_size[0]
    b, c, n, h, w = x.shape
    cout = conv.out_channels
    wt = _fast_weight(conv, "taps")  # kt × Cin × Cout
    y = torch.empty((b, cout, n, h, w), dtype=x.dtype, device=x.device,
                    memory_format=torch.channels_last_3d)
    for i in range(b):
        xs = x[i].permute(1, 2, 3, 0).reshape(n, h * w, c)  # frames × pixels × C, a view
        ys = y[i].permute(1, 2, 3, 0).reshape(n, h * w, cout)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(y[0, :, 0, 0, 0])
        torch.addmm(bias, xs.reshape(-1, c), wt[kt - 1], out=ys.view(-1, cout))
        for tap in range(kt - 1):  # output j reads frame j + tap of [head, x]
            shift = kt - 1 - tap
            if n > shift:
                ys[shift:].view(-1, cout).addmm_(xs[:n - shift].reshape(-1, c), wt[tap])
            for j in range(min(shift, n)):
                ys[j].addmm_(head[j + tap][i].permute(1, 2, 0).reshape(h * w, c), wt[tap])
    return y


def cat_frames(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.cat([a, b], dim=2)`` for ``B×C×T×H×W`` into a channels-last result (where each
    frame is one contiguous block: two block copies; ``torch.cat`` takes a slow strided path
    when a one-frame input's format is ambiguous)."""
    ta = a.shape[2]
    out = torch.empty(a.shape[:2] + (ta + b.shape[2],) + a.shape[3:], dtype=a.dtype,
                      device=a.device, memory_format=torch.channels_last_3d)
    out[:, :, :ta].copy_(a)
    out[:, :, ta:].copy_(b)
    return out


def _fast_weight(conv: nn.Conv3d, kind: str) -> torch.Tensor:
    """``conv``'s weight laid out for the fast path, made once and cached on the module (the
    cache key follows the weight's storage, dtype and in-place version, so a cast, a move or a
    training step invalidates it). ``kind``: "spatial" (Cout×Cin×kh×kw), "temporal"
    (Cout×Cin×kt×1) — both channels-last, which makes the convolution choose its channels-last
    kernel even where the input's size-1 dimensions leave its format ambiguous — or "taps"
    (kt×Cin×Cout, for matrix products)."""
    w = conv.weight
    key = (kind, w.data_ptr(), w.dtype, w.device, w._version)
    hit = conv.__dict__.get("_fast_weights", {}).get(kind)
    if hit is not None and hit[0] == key:
        return hit[1]
    if kind == "spatial":
        out = w[:, :, 0].contiguous(memory_format=torch.channels_last)
    elif kind == "temporal":
        out = w[:, :, :, :, 0].contiguous(memory_format=torch.channels_last)
    else:
        out = w[:, :, :, 0, 0].permute(2, 1, 0).contiguous()
    conv.__dict__.setdefault("_fast_weights", {})[kind] = (key, out.detach())
    return out


def pointwise(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """A (1×1×1) ``nn.Conv3d`` applied to ``x``: the fast path without autograd."""
    return conv3d_fast(x, conv) if fast_path() else conv(x)


class StreamingModule(nn.Module):
    """A module with causal state carried from one chunk to the next while streaming."""

    def __init__(self) -> None:
        super().__init__()
        self.streaming = False

    def reset_stream(self) -> None:
        """Forget the carried state (start of a new independently decodable segment)."""


@contextlib.contextmanager
def streaming(model: nn.Module) -> Iterator[None]:
    """Within this context every :class:`StreamingModule` of ``model`` carries its causal
    state between calls; the state is cleared on entry and on exit."""
    mods = [m for m in model.modules() if isinstance(m, StreamingModule)]
    for m in mods:
        m.reset_stream()
        m.streaming = True
    try:
        yield
    finally:
        for m in mods:
            m.reset_stream()
            m.streaming = False


class CausalConv3d(StreamingModule):
    """3D convolution, causal in time.

    The input is padded with ``kt - 1`` copies of its first frame before and nothing after, so
    output frame j sees input frames ``<= stride·j``. Spatial padding is symmetric (zeros).
    With temporal stride s, ``1 + s·k`` frames give ``1 + k`` frames.

    While streaming, the not-yet-consumed tail of the (padded) input is kept and prepended to
    the next chunk, so chunked and one-piece outputs agree exactly.
    """

    def __init__(self, cin: int, cout: int, kernel=(3, 3, 3), stride=(1, 1, 1)) -> None:
        super().__init__()
        kt, kh, kw = kernel
        self.kt, self.st = kt, stride[0]
        self.conv = nn.Conv3d(cin, cout, kernel, stride=stride, padding=(0, kh // 2, kw // 2))
        # the stream state: the kt-1 input frames before the next chunk (a tensor, or on the
        # fast path a list of B×C×H×W frames)
        self.buffer: Union[None, torch.Tensor, List[torch.Tensor]] = None

    def reset_stream(self) -> None:
        self.buffer = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B×Cin×T×H×W`` → ``B×Cout×T'×H'×W'``."""
        if self.kt == 1 and self.st == 1:
            return conv3d_fast(x, self.conv) if fast_path() else self.conv(x)
        if self.buffer is None:
            head = x[:, :, :1].expand(-1, -1, self.kt - 1, -1, -1)
        else:
            head = self.buffer
        if fast_path() and self.st == 1 and self.conv.kernel_size[1:] == (1, 1):
            x = channels_last(x)
            frames = ([head[:, :, j] for j in range(head.shape[2])] if torch.is_tensor(head)
                      else list(head)) + [x[:, :, j] for j in range(x.shape[2])]
            if self.streaming:  # the last kt-1 frames as views (a list), not a copy
                self.buffer = frames[len(frames) - (self.kt - 1):]
            return temporal_conv(frames[:self.kt - 1], x, self.conv)
        if isinstance(head, list):  # left by the fast path (autograd switched on mid-stream)
            head = torch.stack(head, dim=2)
        if not head.shape[2]:
            xin = x
        elif fast_path():
            xin = cat_frames(head, x)
        else:
            xin = torch.cat([head, x], dim=2)
        n_out = (xin.shape[2] - self.kt) // self.st + 1 if xin.shape[2] >= self.kt else 0
        if self.streaming:
            tail = xin[:, :, self.st * n_out:].detach()
            # a compact copy on the fast path: the view would keep all of xin alive
            self.buffer = channels_last(tail) if fast_path() else tail
        if n_out == 0:
            raise ValueError("chunk too short for a causal strided convolution")
        xin = xin[:, :, : self.st * (n_out - 1) + self.kt]
        return conv3d_fast(xin, self.conv) if fast_path() else self.conv(xin)


class Conv(nn.Module):
    """A 3×3×3 causal convolution, either full or factorized into spatial 1×3×3 followed by
    temporal causal 3×1×1; ``stride`` = (temporal, spatial)."""

    def __init__(self, cin: int, cout: int, factorized: bool, stride=(1, 1)) -> None:
        super().__init__()
        st, ss = stride
        if factorized:
            self.body = nn.Sequential(
                CausalConv3d(cin, cout, (1, 3, 3), (1, ss, ss)),
                CausalConv3d(cout, cout, (3, 1, 1), (st, 1, 1)),
            )
        else:
            self.body = CausalConv3d(cin, cout, (3, 3, 3), (st, ss, ss))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def frame_group_norm(x: torch.Tensor, groups: int, eps: float = 1e-6,
                     weight: Optional[torch.Tensor] = None,
                     bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Group normalization with statistics per frame: ``B×C×T×H×W`` → same; optional
    per-channel affine ``weight``, ``bias`` (C). A view, not a copy, for channels-last input."""
    b, c, t, h, w = x.shape
    y = x.transpose(1, 2).reshape(b * t, c, h, w)
    y = F.group_norm(y, groups, weight, bias, eps=eps)
    return y.reshape(b, t, c, h, w).transpose(1, 2)


class FrameGroupNorm(nn.Module):
    """Per-frame group normalization with a learned per-channel affine."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fast_path():  # the affine fused into the norm
            return frame_group_norm(x, self.groups, weight=self.weight, bias=self.bias)
        y = frame_group_norm(x, self.groups)
        return y * self.weight.view(1, -1, 1, 1, 1) + self.bias.view(1, -1, 1, 1, 1)


class AdaptiveGroupNorm(nn.Module):
    """Per-frame group norm whose scale and shift come from the quantized latents
    (MAGVIT-v2 §3.2): ``y = GN(x)·(1 + γ(c)) + β(c)`` with γ, β 1×1 convolutions of the
    condition ``c`` (``B×K×T×H×W``, already aligned to ``x``)."""

    def __init__(self, channels: int, cond_channels: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.proj = nn.Conv3d(cond_channels, 2 * channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The reference (autograd) path, ``cond`` aligned to ``x``; inference runs
        :meth:`forward_latent`."""
        gamma, beta = self.proj(cond).chunk(2, dim=1)
        return frame_group_norm(x, self.groups) * (1 + gamma) + beta

    def forward_latent(self, x: torch.Tensor, cond: torch.Tensor, frames: List[int]) -> torch.Tensor:
        """Fast path of :meth:`forward` with the condition at its own (lower) resolution:
        ``cond`` ``B×K×t×h×w`` stands for its nearest-neighbour upsampling to x's ``H×W``
        (integer factors) and frame ``i`` of ``x`` (``B×C×T×H×W``) takes latent frame
        ``frames[i]`` (T entries, equal ones adjacent). Same values as :meth:`forward` on the
        upsampled condition — a 1×1 convolution commutes with the upsampling — without
        computing γ, β at full resolution or materialising them: they broadcast over the
        pixels and frames each latent covers. Channels-last in and out."""
        n = channels_last(frame_group_norm(x, self.groups))
        gb = pointwise(self.proj, cond).permute(0, 2, 3, 4, 1)  # B×t×h×w×2C
        b, c, t, hh, ww = n.shape
        h, w = gb.shape[2:4]
        if len(frames) != t or hh % h or ww % w:
            raise ValueError(f"condition {tuple(cond.shape)} does not tile features {tuple(n.shape)}")
        ry, rx = hh // h, ww // w
        scale = gb[..., :c] + 1
        nv = n.permute(0, 2, 3, 4, 1)  # B×T×H×W×C, a view
        start = 0
        for j, run in itertools.groupby(frames):  # the frames of latent j, in place
            end = start + len(list(run))
            seg = nv[:, start:end].view(b, end - start, h, ry, w, rx, c)
            torch.addcmul(gb[:, j, :, None, :, None, c:].unsqueeze(1), seg,
                          scale[:, j, :, None, :, None].unsqueeze(1), out=seg)
            start = end
        return n


class ResBlock(nn.Module):
    """Pre-activation residual block: (GN, SiLU, conv) × 2 plus a skip (1×1 if needed)."""

    def __init__(self, cin: int, cout: int, factorized: bool, groups: int) -> None:
        super().__init__()
        self.norm1 = FrameGroupNorm(cin, groups)
        self.conv1 = Conv(cin, cout, factorized)
        self.norm2 = FrameGroupNorm(cout, groups)
        self.conv2 = Conv(cout, cout, factorized)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fast_path():  # in place where nothing else holds the tensor
            h = self.conv1(F.silu(self.norm1(x), inplace=True))
            h = self.conv2(F.silu(self.norm2(h), inplace=True))
            skip = x if isinstance(self.skip, nn.Identity) else pointwise(self.skip, x)
            return h.add_(skip)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


def space_to_depth(x: torch.Tensor, p: int) -> torch.Tensor:
    """``B×C×T×H×W`` → ``B×(C·p·p)×T×(H/p)×(W/p)``."""
    if p == 1:
        return x
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t, h // p, p, w // p, p)
    return x.permute(0, 1, 4, 6, 2, 3, 5).reshape(b, c * p * p, t, h // p, w // p)


def depth_to_space(x: torch.Tensor, p: int) -> torch.Tensor:
    """Inverse of :func:`space_to_depth`."""
    if p == 1:
        return x
    b, cpp, t, h, w = x.shape
    c = cpp // (p * p)
    x = x.reshape(b, c, p, p, t, h, w)
    return x.permute(0, 1, 4, 5, 2, 6, 3).reshape(b, c, t, h * p, w * p)


class Downsample(nn.Module):
    """Learned strided causal convolution: ×2 in space and/or time."""

    def __init__(self, cin: int, cout: int, factorized: bool, temporal: bool, spatial: bool) -> None:
        super().__init__()
        self.conv = Conv(cin, cout, factorized, stride=(2 if temporal else 1, 2 if spatial else 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(StreamingModule):
    """Depth-to-space upsampling ×2 in space and/or time (MAGVIT-v2 §3.2).

    A causal convolution makes ``s_t·s_s²`` times the channels, which are rearranged into time
    and space. After temporal ×2 upsampling the first frame of the stream is dropped, so
    ``1 + k`` frames become ``1 + 2k``.
    """

    def __init__(self, cin: int, cout: int, factorized: bool, temporal: bool, spatial: bool) -> None:
        super().__init__()
        self.st = 2 if temporal else 1
        self.ss = 2 if spatial else 1
        self.cout = cout
        self.conv = Conv(cin, cout * self.st * self.ss * self.ss, factorized)
        self.started = False

    def reset_stream(self) -> None:
        self.started = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if fast_path():
            return self._rearrange_fast(h)
        b, _, t, hh, ww = h.shape
        if self.st > 1:
            h = h.reshape(b, self.cout * self.ss * self.ss, self.st, t, hh, ww)
            h = h.permute(0, 1, 3, 2, 4, 5).reshape(b, -1, t * self.st, hh, ww)
            if not self.started:
                h = h[:, :, self.st - 1:]
            if self.streaming:
                self.started = True
        return depth_to_space(h, self.ss)

    def _rearrange_fast(self, h: torch.Tensor) -> torch.Tensor:
        """The same rearrangement as :meth:`forward` on a channels-last ``h`` in one copy,
        channels-last out (channel ``((c·ss + i)·ss + j)·st + s`` → frame ``s``, row ``i``,
        column ``j`` of output channel ``c``)."""
        b, _, t, hh, ww = h.shape
        st, ss = self.st, self.ss
        p = channels_last(h).permute(0, 2, 3, 4, 1)  # B×t×h×w×C', a view
        p = p.reshape(b, t, hh, ww, self.cout, ss, ss, st).permute(0, 1, 7, 2, 5, 3, 6, 4)
        y = p.reshape(b, t * st, hh * ss, ww * ss, self.cout)
        if st > 1:
            if not self.started:
                y = y[:, st - 1:]
            if self.streaming:
                self.started = True
        return y.permute(0, 4, 1, 2, 3)
