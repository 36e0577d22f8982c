"""The model on one segment, a chunk at a time: frames → per-bit latents (encoder; from them
:mod:`neuralcodec.rdo` chooses the codes) and codes → frames
(decoder), with the causal state of :func:`neuralcodec.layers.streaming` carried from chunk to
chunk and restarted per segment.

Encoding streams a segment through the encoder in chunks (a first chunk of 1 frame, then
chunks of :func:`chunk_frames` frames), so peak memory depends on the frame size only, not on
the length of the video; decoding does the same with :data:`CHUNK_LATENTS` latent frames.
Frames are ``H×W×3`` uint8 RGB numpy arrays; model tensors are ``1×3×T×H×W`` float in
[-1, 1]; codes are ``1×b×t×h×w`` in {-1, +1} on the model's device (b <= K; channels b..K−1
decode as 0), the representation of :mod:`neuralcodec.payload`.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch

from . import container as ct
from .errors import InputError
from .layers import streaming
from .video_io import VideoMeta

CHUNK_FRAMES = 16  # most frames per encoder chunk after the first (rounded to the temporal factor)
CHUNK_PIXELS = 16 * 640 * 360  # pixel budget of a chunk: large frames get shorter chunks
CHUNK_LATENTS = 4  # most latent frames per decoder chunk after the first

Progress = Optional[Callable[[int], None]]  # called with the number of frames just processed
Codes = Union[torch.Tensor, Iterable[torch.Tensor]]  # 1×b×t×h×w, or its 1×b×1×h×w frames


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's parameters (CPU for a model without any)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def chunk_frames(pixels: int, tf: int) -> int:
    """Frames per chunk after the first: a multiple of ``tf``, at most :data:`CHUNK_FRAMES`,
    and within :data:`CHUNK_PIXELS` where possible (activation memory ∝ chunk pixels)."""
    n = min(CHUNK_FRAMES, CHUNK_PIXELS // max(1, pixels))
    return max(tf, n // tf * tf)


def decoder_step(width: int, height: int, tf: int) -> int:
    """Latent frames per decoder chunk after the first."""
    return max(1, min(CHUNK_LATENTS, chunk_frames(width * height, tf) // tf))


def chunk_frame_range(t0: int, n: int, tf: int) -> Tuple[int, int]:
    """(first frame, end frame), counted from the segment's start, that the decoder's chunk of
    ``n`` latent frames from latent frame ``t0`` decodes (the end is that of a full segment)."""
    return (0 if t0 == 0 else 1 + tf * (t0 - 1)), 1 + tf * (t0 + n - 1)


def latent_chunks(latent_t: int, step: int) -> Iterator[Tuple[int, int]]:
    """The decoder's chunks of a segment of ``latent_t`` latent frames as (first latent frame,
    count): one latent frame, then ``step`` at a time (:func:`decoder_step`)."""
    t = 0
    while t < latent_t:
        n = min(1 if t == 0 else step, latent_t - t)
        yield t, n
        t += n


def frames_to_tensor(frames: List[np.ndarray], device: torch.device) -> torch.Tensor:
    """List of T frames ``H×W×3`` uint8 → ``1×3×T×H×W`` float in [-1, 1] on ``device``."""
    x = torch.from_numpy(np.stack(frames)).to(device)
    return (x.permute(3, 0, 1, 2).unsqueeze(0).float() / 127.5 - 1.0)


def tensor_to_frames(x: torch.Tensor) -> np.ndarray:
    """``1×3×T×H×W`` float in [-1, 1] → ``T×H×W×3`` uint8 (rounded)."""
    y = (x[0] + 1).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)  # = clamp to [-1, 1] first
    return y.permute(1, 2, 3, 0).cpu().numpy()


def _take(it: Iterator[np.ndarray], n: int, meta: VideoMeta) -> List[np.ndarray]:
    out = []
    for _ in range(n):
        try:
            f = next(it)
        except StopIteration:
            break
        if f.shape != (meta.height, meta.width, 3):
            raise InputError(f"frame of shape {f.shape}, expected {(meta.height, meta.width, 3)}")
        out.append(f)
    return out


def encode_segment(model, it: Iterator[np.ndarray], meta: VideoMeta, seg_frames: int,
                   progress: Progress = None) -> Tuple[int, Optional[torch.Tensor]]:
    """Encode up to ``seg_frames`` frames from ``it`` with a fresh causal state →
    (frames read, per-bit latents ``1×K×t×h×w`` float32 on the model's device, whose signs are
    the codes: :func:`neuralcodec.rdo.select_codes`) or (0, None) at the end of the input."""
    tf = model.cfg.temporal_factor
    device = model_device(model)
    latents: List[torch.Tensor] = []
    n = 0
    step = chunk_frames(meta.width * meta.height, tf)
    with streaming(model):
        while n < seg_frames:
            want = 1 if n == 0 else min(step, seg_frames - n)
            chunk = _take(it, want, meta)
            got = len(chunk)
            if not got:
                break
            n += got
            if n > 1 and got % tf:  # the input ended inside a chunk: repeat the last frame
                chunk += [chunk[-1]] * (tf - got % tf)
            x = model.pad_spatial(frames_to_tensor(chunk, device))
            latents.append(model.encode_latents(x))
            if progress:
                progress(got)
            if got < want:
                break
    if n == 0:
        return 0, None
    return n, torch.cat(latents, dim=2)


def decode_frames(model, header: ct.Header, seg: ct.Segment, codes: Codes, a: int, b: int,
                  progress: Progress = None) -> Iterator[np.ndarray]:
    """Frames ``a..b-1`` (absolute numbers) of ``seg`` as ``H×W×3`` uint8. ``codes``: the
    segment's codes ``1×b×t×h×w`` on the model's device, or an iterator of its latent frames
    ``1×b×1×h×w`` (:func:`neuralcodec.payload.payload_frames`); the decoder's input (K
    channels, the dropped ones 0) is built one chunk at a time."""
    device = model_device(model)
    k = header.model_bits
    stored = seg.stored_bits(header)
    if isinstance(codes, torch.Tensor):
        frames_in = iter(codes.split(1, dim=2))
    else:
        frames_in = iter(codes)
    frame = seg.first_frame
    stop = min(b, seg.first_frame + seg.frames)
    step = decoder_step(header.width, header.height, header.temporal_factor)
    with streaming(model):
        for _, n in latent_chunks(seg.latent_t, step):
            if frame >= stop:
                break
            chunk = torch.cat([next(frames_in) for _ in range(n)], dim=2)
            full = torch.zeros((1, k, n, seg.latent_h, seg.latent_w), dtype=chunk.dtype, device=device)
            full[:, :stored] = chunk
            x = model.decode(full, bits=stored)
            out = tensor_to_frames(x[:, :, :, :header.height, :header.width])
            for f in out:
                if frame >= stop:
                    break
                if frame >= a:
                    if progress:
                        progress(1)
                    yield f
                frame += 1


def decode_segment(model, header: ct.Header, seg: ct.Segment, codes: torch.Tensor,
                   progress: Progress = None) -> Iterator[np.ndarray]:
    """The frames of segment ``seg`` (``seg.frames`` of them, ``H×W×3`` uint8 RGB) decoded from
    its codes ``1×b×t×h×w`` in {-1, +1} with b = ``seg.stored_bits(header)`` (the codes of
    :func:`neuralcodec.payload.decode_codes`, or tokens from elsewhere; channels b..K−1 read
    as 0). Only the segment's geometry and bit count are used, not its data. ``model``:
    already resolved."""
    want = (1, seg.stored_bits(header), seg.latent_t, seg.latent_h, seg.latent_w)
    if tuple(codes.shape) != want:
        raise InputError(f"segment {seg.index}: codes of shape {tuple(codes.shape)}, expected {want}")
    return decode_frames(model, header, seg, codes.to(model_device(model)), seg.first_frame,
                         seg.first_frame + seg.frames, progress)
