"""The causal video tokenizer (MAGVIT-v2 design).

::

    video B×3×T×H×W in [-1,1]
      │ pad H, W to the spatial factor (edge); T to 1 + f·k (repeat last frame)
      ▼
    space-to-depth(p) → conv → [ResBlocks → strided causal conv (↓ space / time)]×L
      → GN, SiLU, 1×1 conv → z  (B×K×t×h×w)
      ▼
    LFQ: q = sign(z) ∈ {-1,+1}^K         (token index Σ 2^k [q_k > 0])
      ▼
    conv → [AdaGN(q) → ResBlocks → depth-to-space (↑ space / time, drop first frame)]×L
      → GN, SiLU, conv → depth-to-space(p) → video B×3×(1+f·k)×H'×W'

Every layer is causal in time (see :mod:`neuralcodec.layers`), so frame t's tokens depend on
frames <= t only, the first frame is coded as an image, and :meth:`Tokenizer.encode` /
:meth:`Tokenizer.decode` may be run on chunks under :func:`neuralcodec.layers.streaming`.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .configs import TokenizerConfig, latent_frames, latent_size
from .layers import (AdaptiveGroupNorm, CausalConv3d, Downsample, FrameGroupNorm, ResBlock,
                     StreamingModule, Upsample, channels_last, depth_to_space, fast_path,
                     pointwise, space_to_depth)
from .quantizer import LFQOutput, make_quantizer, sign_quantize


class Encoder(nn.Module):
    """Video ``B×3×T×H×W`` in [-1, 1] (H, W multiples of the spatial factor, T = 1 + f·k)
    → pre-quantization latents ``B×K×(1+k)×H/s×W/s`` (float, unbounded)."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.enc_channels
        p = cfg.stem_patch
        self.stem = CausalConv3d(3 * p * p, ch[0], (3, 3, 3) if not cfg.factorized else (1, 3, 3))
        self.levels = nn.ModuleList()
        self.downs = nn.ModuleList()
        for i, c in enumerate(ch):
            self.levels.append(nn.Sequential(*[ResBlock(c, c, cfg.factorized, cfg.norm_groups)
                                               for _ in range(cfg.enc_blocks[i])]))
            if i + 1 < len(ch):
                self.downs.append(Downsample(c, ch[i + 1], cfg.factorized,
                                             cfg.temporal_down[i], cfg.spatial_down[i]))
        self.norm = FrameGroupNorm(ch[-1], cfg.norm_groups)
        self.out = nn.Conv3d(ch[-1], cfg.latent_channels, 1)
        # "planes" models: a shortcut from each token's mean colour (its s×s pixels, averaged
        # over the frames it covers) to the latents, so the code starts from a thumbnail
        # (DC-AE's non-parametric shortcut idea; a 1×1 conv of 3 inputs)
        self.skip = nn.Conv3d(3, cfg.latent_channels, 1) if cfg.quantizer == "planes" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self._trunk(x)
        if self.skip is not None:
            m = token_means(x, self.cfg.temporal_factor, self.cfg.spatial_factor)
            z = z + self.skip(m.to(self.skip.weight.dtype)).to(z.dtype)
        return z

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        h = space_to_depth(x, self.cfg.stem_patch)
        if fast_path():
            h = channels_last(h)
        h = self.stem(h)
        for i, level in enumerate(self.levels):
            h = level(h)
            if i < len(self.downs):
                h = self.downs[i](h)
        return pointwise(self.out, F.silu(self.norm(h)))


def token_means(x: torch.Tensor, tf: int, s: int) -> torch.Tensor:
    """Mean colour of every token's pixels: ``B×3×T×H×W`` → ``B×3×t×H/s×W/s`` (float32). T = 1 + tf·k
    (a first chunk: frame 0 alone, then groups of tf) or tf·k (a later streaming chunk)."""
    m = F.avg_pool3d(x.float(), (1, s, s))  # float32: CPU pooling has no bfloat16 kernel
    lead = m.shape[2] % tf if tf > 1 else 0
    b, c, t, h, w = m.shape
    rest = m[:, :, lead:].reshape(b, c, (t - lead) // tf, tf, h, w).mean(3)
    return torch.cat([m[:, :, :lead], rest], dim=2) if lead else rest


# Most output pixels (frames × H × W) the decoder's full-frame-rate stages process at once while
# streaming: 1080p runs them one frame at a time, 360p up to 9 frames.
TAIL_PIXELS = 1920 * 1088


class Decoder(StreamingModule):
    """Codes ``B×K×(1+k)×h×w`` in {-1, 0, +1} (0 = dropped bit) → video
    ``B×3×(1+f·k)×h·s×w·s``, float (nominally [-1, 1], not clamped)."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.dec_channels
        p = cfg.stem_patch
        self.inp = CausalConv3d(cfg.bits, ch[-1], (3, 3, 3) if not cfg.factorized else (1, 3, 3))
        self.adanorms = nn.ModuleList()
        self.levels = nn.ModuleList()
        self.ups = nn.ModuleList()
        for i in reversed(range(len(ch))):
            c = ch[i]
            self.adanorms.append(AdaptiveGroupNorm(c, cfg.bits, cfg.norm_groups))
            self.levels.append(nn.Sequential(*[ResBlock(c, c, cfg.factorized, cfg.norm_groups)
                                               for _ in range(cfg.dec_blocks[i])]))
            if i > 0:
                self.ups.append(Upsample(c, ch[i - 1], cfg.factorized,
                                         cfg.temporal_down[i - 1], cfg.spatial_down[i - 1]))
        self.norm = FrameGroupNorm(ch[0], cfg.norm_groups)
        self.out = CausalConv3d(ch[0], 3 * p * p, (1, 3, 3))
        self.started = False

    def reset_stream(self) -> None:
        self.started = False

    def _condition(self, codes: torch.Tensor, tf: int, size) -> torch.Tensor:
        """Align codes ``B×K×t×h×w`` to a feature map with ``tf``× the frames and ``size``
        spatially: latent j covers output frames ``tf·(j-1)+1 … tf·j`` (latent 0 → frame 0)."""
        if tf > 1:
            t = codes.shape[2]
            reps = torch.full((t,), tf, dtype=torch.long, device=codes.device)
            if not self.started:
                reps[0] = 1
            codes = codes.repeat_interleave(reps, dim=2)
        return F.interpolate(codes, size=(codes.shape[2],) + tuple(size), mode="nearest")

    def _frames(self, latents: int, tf: int) -> List[int]:
        """The latent frame behind each feature frame at ``tf``× the latent frame rate, for a
        chunk of ``latents`` latent frames (the alignment of :meth:`_condition`)."""
        out: List[int] = []
        for j in range(latents):
            out += [j] * (1 if tf > 1 and j == 0 and not self.started else tf)
        return out

    def _level(self, j: int, h: torch.Tensor, cond: torch.Tensor,
               frames: Optional[List[int]] = None) -> torch.Tensor:
        """Decoder stage ``j`` (AdaGN with ``cond``, residual blocks, upsampling if any).
        With ``frames`` (fast path) ``cond`` is the codes themselves, at the latent resolution,
        and ``frames`` maps h's frames to latent frames (:meth:`AdaptiveGroupNorm.forward_latent`)."""
        if frames is not None:
            h = self.adanorms[j].forward_latent(h, cond, frames)
        else:
            h = self.adanorms[j](h, cond)
        h = self.levels[j](h)
        return self.ups[j](h) if j < len(self.ups) else h

    def _tail(self, h: torch.Tensor, codes: torch.Tensor, j0: int) -> torch.Tensor:
        """Stages ``j0…`` and the output layer on ``h`` (already at the full frame rate) a
        few frames at a time (:data:`TAIL_PIXELS`): these stages work per frame but for their
        causal convolutions, whose stream state carries across the pieces, so the values are
        those of one piece while activation memory shrinks with the piece."""
        frames = self._frames(codes.shape[2], self.cfg.temporal_factor)
        s = self.cfg.spatial_factor
        n = max(1, TAIL_PIXELS // (codes.shape[3] * codes.shape[4] * s * s))
        outs = []
        for t in range(0, h.shape[2], n):
            x = h[:, :, t:t + n]
            for j in range(j0, len(self.levels)):
                x = self._level(j, x, codes, frames[t:t + n])
            outs.append(self.out(F.silu(self.norm(x), inplace=True)))
        return torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        fast = fast_path()
        if fast:
            codes = channels_last(codes)
        h = self.inp(codes)
        nl = len(self.levels)
        tf = 1
        for j in range(nl):
            if (fast and self.streaming and j > 0 and tf == self.cfg.temporal_factor
                    and h.shape[2] * codes.shape[3] * codes.shape[4] * self.cfg.spatial_factor ** 2
                    > TAIL_PIXELS):
                h = self._tail(h, codes, j)
                break
            i = nl - 1 - j  # level index
            if fast:  # the codes at their own resolution condition every level
                h = self._level(j, h, codes, self._frames(codes.shape[2], tf))
            else:
                h = self._level(j, h, self._condition(codes, tf, h.shape[3:]))
            if j < len(self.ups) and self.cfg.temporal_down[i - 1]:
                tf *= 2
        else:
            h = self.out(F.silu(self.norm(h)))
        if self.streaming:
            self.started = True
        return depth_to_space(h, self.cfg.stem_patch)


class Tokenizer(nn.Module):
    """Encoder + LFQ + decoder. See the module docstring for the data flow."""

    def __init__(self, cfg: TokenizerConfig, name: Optional[str] = None,
                 sha256: Optional[str] = None) -> None:
        """``name`` / ``sha256``: the model's identity (registered name, hex sha256 of its
        weights file) that a stream's header records; None for a model not (yet) saved."""
        super().__init__()
        self.cfg = cfg
        self.name = name
        self.sha256 = sha256
        self.encoder = Encoder(cfg)
        self.quantizer = make_quantizer(cfg)
        self.decoder = Decoder(cfg)
        # the decoder variant this model decodes with (weights.decoder_variant); None: its own
        self.variant: Optional[str] = None
        self.decoder_sha256: Optional[str] = None  # hex SHA-256 of that variant's weights file

    def with_config(self, cfg: TokenizerConfig) -> "Tokenizer":
        """These weights under ``cfg``, a config that keeps every weight's shape (e.g. with
        ``sign_magnitude`` changed: the same latents stored as other bits), with this model's
        identity and training mode; this model is left as it is. Raises RuntimeError (from a
        strict ``load_state_dict``) when a shape differs."""
        m = Tokenizer(cfg, self.name, self.sha256)
        m.load_state_dict(self.state_dict())
        return m.train(self.training)

    def with_decoder(self, decoder: "Decoder", variant: str,
                     decoder_sha256: Optional[str] = None) -> "Tokenizer":
        """A model that shares this one's encoder, quantizer and identity (name, sha256: the
        streams it decodes name this model) and decodes with ``decoder``, a decoder variant
        whose config codes like this one's (:meth:`TokenizerConfig.same_code`; ValueError
        otherwise); ``cfg`` is the decoder's, ``decoder_sha256`` the hex SHA-256 of the
        variant's weights file (which ADAPT records of method 2 name, spec §8c)."""
        if not decoder.cfg.same_code(self.cfg):
            raise ValueError("the decoder's config differs from the model's beyond the decoder layers")
        m = Tokenizer.__new__(Tokenizer)
        nn.Module.__init__(m)
        m.cfg, m.name, m.sha256, m.variant = decoder.cfg, self.name, self.sha256, variant
        m.decoder_sha256 = decoder_sha256
        m.encoder, m.quantizer, m.decoder = self.encoder, self.quantizer, decoder
        return m.train(self.training)

    @property
    def dtype(self) -> torch.dtype:
        """Floating type of the weights (float32, or bfloat16 / float16 for inference, see
        :func:`inference_dtype`); ``encode*`` and ``decode`` cast their input to it and return
        float32."""
        return next(self.parameters()).dtype

    # ---- geometry -------------------------------------------------------------------------
    def padded_size(self, height: int, width: int):
        """(H, W) rounded up to multiples of the spatial factor."""
        s = self.cfg.spatial_factor
        h, w = latent_size(height, width, s)
        return h * s, w * s

    def padded_frames(self, frames: int) -> int:
        """Smallest 1 + f·k >= frames."""
        f = self.cfg.temporal_factor
        return 1 + (latent_frames(frames, f) - 1) * f

    def latent_frames(self, frames: int) -> int:
        """Latent frames for ``frames`` input frames (after padding)."""
        return latent_frames(frames, self.cfg.temporal_factor)

    def pad_spatial(self, video: torch.Tensor) -> torch.Tensor:
        """Edge-pad ``B×3×T×H×W`` to the spatial factor."""
        h, w = video.shape[-2:]
        ph, pw = self.padded_size(h, w)
        if (ph, pw) == (h, w):
            return video
        b, c, t = video.shape[:3]
        y = F.pad(video.reshape(b, c * t, h, w), (0, pw - w, 0, ph - h), mode="replicate")
        return y.reshape(b, c, t, ph, pw)

    def pad_video(self, video: torch.Tensor) -> torch.Tensor:
        """Edge-pad space and repeat the last frame so T = 1 + f·k."""
        video = self.pad_spatial(video)
        t = video.shape[2]
        tp = self.padded_frames(t)
        if tp > t:
            video = torch.cat([video, video[:, :, -1:].expand(-1, -1, tp - t, -1, -1)], dim=2)
        return video

    # ---- coding -----------------------------------------------------------------------------
    def quantize(self, video: torch.Tensor) -> LFQOutput:
        """Video ``B×3×T×H×W`` in [-1, 1], already padded → :class:`LFQOutput`."""
        return self.quantizer(self.encoder(video))

    @torch.no_grad()
    def encode_latents(self, video: torch.Tensor) -> torch.Tensor:
        """Padded video ``B×3×T×H×W`` in [-1, 1] → per-bit latents z ``B×K×t×h×w`` (float32;
        the codes are ``sign(z)`` with z <= 0 → -1; :meth:`LFQ.latents`,
        :meth:`PlaneQuantizer.latents`)."""
        return self.quantizer.latents(self.encoder(video.to(self.dtype))).float()

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video ``B×3×T×H×W`` in [-1, 1] (any H, W, T; padded here) → codes
        ``B×K×t×h×w`` in {-1, +1}."""
        return sign_quantize(self.encode_latents(self.pad_video(video)))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, bits: int | None = None) -> torch.Tensor:
        """Codes ``B×K×t×h×w`` in {-1, +1} → video ``B×3×(1+f·(t-1))×h·s×w·s`` in [-1, 1]
        (clamped). With ``bits`` = b < K only the first b bits are used (the rest read as 0).
        The codes are the stored ones (the stream's bits); the quantizer turns them into the
        decoder's input (:meth:`PlaneQuantizer.decoder_codes`)."""
        codes = self.quantizer.decoder_codes(mask_bits(codes.to(self.dtype), bits))
        return self.decoder(codes).float().clamp_(-1, 1)

    def forward(self, video: torch.Tensor, bits: int | None = None):
        """Training pass: padded video → (reconstruction, LFQOutput)."""
        q = self.quantize(video)
        return self.decoder(mask_bits(q.codes, bits)), q


# --precision choices of the command line: "auto" = bfloat16 where the device computes it
# natively (CUDA with bf16; CPUs with AVX512 / AMX through oneDNN), else float32.
PRECISIONS = ("auto", "float32", "bfloat16")


def inference_dtype(device: torch.device | str = "cpu", precision: str = "auto") -> torch.dtype:
    """The floating type inference runs in on ``device`` for ``precision`` (one of
    :data:`PRECISIONS`; ValueError otherwise)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return getattr(torch, precision)
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return torch.bfloat16 if bf16 else torch.float32


def for_inference(model: "Tokenizer", device: torch.device | str = "cpu",
                  precision: str = "auto") -> "Tokenizer":
    """``model`` moved to ``device``, cast to :func:`inference_dtype` and in eval mode (in
    place; returned for chaining). bfloat16 changes the decoded pixels by about 50 dB PSNR
    against float32 and a few tokens in 10,000 near z = 0 (``benchmarks/bench_speed.py``)."""
    return model.to(device=device, dtype=inference_dtype(device, precision)).eval()


def mask_bits(codes: torch.Tensor, bits: int | None) -> torch.Tensor:
    """Zero the code channels ``>= bits`` (``B×K×…``); ``None`` keeps all."""
    if bits is None or bits >= codes.shape[1]:
        return codes
    keep = (torch.arange(codes.shape[1], device=codes.device) < bits).to(codes.dtype)
    return codes * keep.view(1, -1, *([1] * (codes.dim() - 2)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs_per_pixel(model: Tokenizer, frames: int = 17, size: int = 64) -> dict:
    """Multiply-accumulates per input pixel of the encoder and the decoder, counted with
    forward hooks on every convolution for a ``1×3×frames×size×size`` input."""
    counts: List[int] = [0]

    def hook(mod, inp, out):
        k = mod.weight[0].numel()  # Cin/groups × kt × kh × kw
        counts[0] += out.numel() * k

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv3d)]
    try:
        x = torch.zeros(1, 3, frames, size, size, dtype=model.dtype)
        with torch.enable_grad():  # the nn.Conv3d reference path, where the hooks sit
            counts[0] = 0
            z = model.quantizer.latents(model.encoder(x))
            enc = counts[0]
            counts[0] = 0
            model.decoder((torch.sign(z) + (z == 0).to(z.dtype)).detach())
            dec = counts[0]
    finally:
        for h in hs:
            h.remove()
    pixels = frames * size * size
    return {"encoder": enc / pixels, "decoder": dec / pixels}
