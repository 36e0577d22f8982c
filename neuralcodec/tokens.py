"""Tokens for generative models: the LFQ token indices of a video, in and out.

::

    tokenize(model, video) → Tokens          encode a video (the bits a stream would store)
    tokens_from_stream(fo) → Tokens          read a .mgv stream's stored bits (no model run)
    detokenize(model, tokens) → T×H×W×3      decode tokens to frames (what `mgv decode` gives)
    Tokens.save(path, split=(9, 9))          safetensors file, loadable with safetensors alone
    Tokens.load(path) → Tokens

A token is the index ``Σ_k 2^k · bit_k`` over the ``b`` stored bits of a latent position
(``bitstream_spec.md`` §5: bit k is 1 iff the encoder's latent ``z_k > 0``; channel 0 is the
least significant bit). Segment ``i`` of a stream becomes one ``t×h×w`` integer array (latent
frames × token rows × token columns); segments are independent, as in the stream.

File layout (``.safetensors``): tensor ``tokens.{i}`` (int32, or int64 when a token can have
32 bits) for segment i; with ``split=(s_0, s_1, …)`` also ``subtokens.{i}.{j}``, the bits
``Σ_{l<j} s_l`` … ``Σ_{l≤j} s_l − 1`` of each token as an index of ``2^{s_j}`` (Open-MAGVIT2's
factorized vocabularies: ``split=(9, 9)`` turns 2^18 into two vocabularies of 512). The
metadata key ``mgv`` holds the header fields as JSON (:meth:`Tokens.metadata`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from . import container as ct
from .chunks import Progress, decode_segment
from .codec import VideoInput, open_video, stream_header
from .errors import InputError, MGVError
from .kernels import bit_weights, token_indices
from .model import for_inference
from .options import EncodeOptions
from .payload import decode_payload
from .quantizer import indices_to_codes
from .rdo import select_codes
from .refine import encode_refined
from .video_io import VideoMeta
from .weights import ModelSource, resolve_model

FORMAT = "mgv-tokens"  # value of the metadata key "format"
FORMAT_VERSION = 1  # bumped when the file layout changes incompatibly


@dataclass(frozen=True)
class Tokens:
    """The tokens of one video, segment by segment.

    ``header`` is the stream header the tokens belong to (geometry, fps, frame count, model
    identity; ``header.bits`` is the most bits any segment stores); ``segments[i]`` is a
    ``t_i×h×w`` int64 array of token indices in ``0 .. 2^bits[i] − 1``.
    """

    header: ct.Header  # stream header: size, fps, frames, segment_frames, model name and sha256
    segments: Tuple[np.ndarray, ...]  # per segment: t×h×w int64 token indices
    bits: Tuple[int, ...]  # per segment: bits per token (1..header.bits)

    # ---- views -----------------------------------------------------------------------------
    @property
    def meta(self) -> VideoMeta:
        """Metadata of the video the tokens decode to."""
        h = self.header
        return VideoMeta(h.width, h.height, h.fps, h.frames, h.pix_fmt)

    def segment_bits(self, i: int) -> np.ndarray:
        """Segment ``i`` as the bit array ``b×t×h×w`` uint8 {0, 1} of the stream (bit k of
        every token on plane k)."""
        tok = self.segments[i]
        k = np.arange(self.bits[i], dtype=np.int64).reshape(-1, 1, 1, 1)
        return ((tok[None] >> k) & 1).astype(np.uint8)

    def segment_codes(self, i: int, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Segment ``i`` as codes ``1×b×t×h×w`` in {-1, +1} on ``device`` (what the decoder
        reads; bit k of every token on channel k)."""
        tok = torch.from_numpy(self.segments[i]).to(device)
        return indices_to_codes(tok, self.bits[i], dim=0, dtype=dtype).unsqueeze(0)

    def split(self, sizes: Sequence[int]) -> List[List[np.ndarray]]:
        """Sub-tokens: for each segment, one array per group of ``sizes`` (low bits first),
        holding bits ``Σ_{l<j} sizes_l`` … of each token as an index of ``2^sizes_j``.
        ``sizes`` must add up to ``header.bits``."""
        sizes = check_split(sizes, self.header.bits)
        out = []
        for tok in self.segments:
            parts, shift = [], 0
            for s in sizes:
                parts.append((tok >> shift) & ((1 << s) - 1))
                shift += s
            out.append(parts)
        return out

    def metadata(self, split: Optional[Sequence[int]] = None) -> dict:
        """The header fields as a JSON-friendly dict (stored under the metadata key ``mgv``)."""
        h = self.header
        return {"model": h.model_name, "model_sha256": h.model_sha256.hex(),
                "model_bits": h.model_bits, "bits": h.bits, "segment_bits": list(self.bits),
                "width": h.width, "height": h.height, "fps": f"{h.fps_num}/{h.fps_den}",
                "frames": h.frames, "segment_frames": h.segment_frames,
                "segments": len(self.segments), "latent_hw": list(h.latent_hw),
                "temporal_factor": h.temporal_factor, "spatial_factor": h.spatial_factor,
                "pix_fmt": h.pix_fmt, "split": list(split) if split else None,
                "token": "sum_k 2^k * bit_k, bit k = 1 iff latent z_k > 0 (bitstream_spec.md §5)"}

    # ---- files -----------------------------------------------------------------------------
    def tensors(self, split: Optional[Sequence[int]] = None) -> Dict[str, np.ndarray]:
        """``{"tokens.{i}": t×h×w, "subtokens.{i}.{j}": t×h×w}`` (int32; int64 for 32-bit
        tokens), the tensors :meth:`save` writes."""
        dtype = np.int64 if self.header.bits > 31 else np.int32
        out = {f"tokens.{i}": np.ascontiguousarray(t.astype(dtype))
               for i, t in enumerate(self.segments)}
        if split:
            for i, parts in enumerate(self.split(split)):
                for j, p in enumerate(parts):
                    out[f"subtokens.{i}.{j}"] = np.ascontiguousarray(p.astype(dtype))
        return out

    def save(self, target: Union[str, Path], split: Optional[Sequence[int]] = None) -> None:
        """Write a ``.safetensors`` file (see the module docstring)."""
        from safetensors.numpy import save_file

        save_file(self.tensors(split), str(target),
                  metadata={"format": FORMAT, "version": str(FORMAT_VERSION),
                            "mgv": json.dumps(self.metadata(split))})

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Tokens":
        """Read a tokens file written by :meth:`save` (or made by a generative model with the
        same tensors and metadata) → :class:`InputError` when it is not one or is inconsistent.
        ``tokens.{i}`` may be absent when every ``subtokens.{i}.{j}`` is present."""
        from safetensors import SafetensorError, safe_open

        p = Path(path)
        if not p.is_file():
            raise InputError(f"{p}: no such file")
        try:
            with safe_open(str(p), framework="numpy") as f:
                md = f.metadata() or {}
                arrays = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(f"{p}: not a safetensors file ({str(e).splitlines()[0]})") from None
        if md.get("format") != FORMAT or "mgv" not in md:
            raise InputError(f"{p}: not an mgv tokens file (metadata 'format' is not {FORMAT!r})")
        try:
            return from_arrays(arrays, json.loads(md["mgv"]))
        except InputError as e:
            raise InputError(f"{p}: {e}") from None
        except (ValueError, TypeError, KeyError) as e:
            raise InputError(f"{p}: bad metadata ({type(e).__name__}: {e})") from None


def check_split(sizes: Sequence[int], bits: int) -> Tuple[int, ...]:
    """Validate a sub-token split (positive sizes adding up to ``bits``) → tuple."""
    sizes = tuple(int(s) for s in sizes)
    if not sizes or any(s < 1 for s in sizes) or sum(sizes) != bits:
        raise InputError(f"split {','.join(map(str, sizes))} must be positive sizes adding up to "
                         f"the {bits} stored bits")
    return sizes


def parse_split(spec: Optional[str]) -> Optional[Tuple[int, ...]]:
    """"9,9" → (9, 9); None → None (:class:`InputError` for anything else)."""
    if spec is None:
        return None
    try:
        return tuple(int(x) for x in spec.split(","))
    except ValueError:
        raise InputError(f"--split {spec!r}: expected sizes like 9,9") from None


def from_arrays(arrays: Dict[str, np.ndarray], md: dict) -> Tokens:
    """Tokens from ``tokens.{i}`` / ``subtokens.{i}.{j}`` arrays and the ``mgv`` metadata
    dict → :class:`InputError` when they disagree (shape, range, segment count)."""
    fps = Fraction(md["fps"])
    try:
        header = ct.Header(width=int(md["width"]), height=int(md["height"]), frames=int(md["frames"]),
                           fps_num=fps.numerator, fps_den=fps.denominator,
                           model_bits=int(md["model_bits"]), bits=int(md["bits"]),
                           temporal_factor=int(md["temporal_factor"]),
                           spatial_factor=int(md["spatial_factor"]), entropy=ct.ENTROPY_NONE,
                           segment_frames=int(md["segment_frames"]),
                           model_sha256=bytes.fromhex(md["model_sha256"])[:16],
                           pix_fmt=str(md.get("pix_fmt") or "rgb24"), model_name=str(md["model"]))
        header.check()
    except MGVError as e:
        raise InputError(f"bad header fields in the metadata: {e}") from None
    n = header.segment_count
    bits = tuple(int(b) for b in md.get("segment_bits") or [header.bits] * n)
    if len(bits) != n or any(not 1 <= b <= header.bits for b in bits):
        raise InputError(f"segment_bits must list {n} values in 1..{header.bits}")
    split = md.get("split")
    h, w = header.latent_hw
    segs = []
    for i in range(n):
        t = header.latent_frames(header.segment_bounds(i)[1])
        if f"tokens.{i}" in arrays:
            tok = _as_tokens(arrays[f"tokens.{i}"], f"tokens.{i}")
        elif split and all(f"subtokens.{i}.{j}" in arrays for j in range(len(split))):
            sizes = check_split(split, header.bits)
            tok, shift = None, 0
            for j, s in enumerate(sizes):
                part = _as_tokens(arrays[f"subtokens.{i}.{j}"], f"subtokens.{i}.{j}")
                if part.size and (part.min() < 0 or part.max() >= 1 << s):
                    raise InputError(f"subtokens.{i}.{j} has values outside 0..{(1 << s) - 1}")
                tok = (part << shift) if tok is None else tok | (part << shift)
                shift += s
        else:
            raise InputError(f"tensor tokens.{i} is missing ({n} segments expected)")
        if tok.shape != (t, h, w):
            raise InputError(f"tokens.{i} has shape {tok.shape}, the header implies {(t, h, w)}")
        if tok.size and (tok.min() < 0 or tok.max() >= 1 << bits[i]):
            raise InputError(f"tokens.{i} has values outside 0..{(1 << bits[i]) - 1} "
                             f"({bits[i]} bits)")
        segs.append(tok)
    extra = [k for k in arrays if k.startswith("tokens.") and k not in {f"tokens.{i}" for i in range(n)}]
    if extra:
        raise InputError(f"unexpected tensor {extra[0]} ({n} segments expected)")
    return Tokens(header, tuple(segs), bits)


def _as_tokens(a: np.ndarray, name: str) -> np.ndarray:
    if a.ndim != 3 or a.dtype.kind not in "iu":
        raise InputError(f"{name} must be a t×h×w integer tensor, got {a.dtype} {a.shape}")
    return a.astype(np.int64)


def bits_to_tokens(bits: np.ndarray) -> np.ndarray:
    """Bit array ``b×t×h×w`` uint8 {0,1} → token indices ``t×h×w`` int64 (Σ_k 2^k·bit_k)."""
    w = bit_weights(bits.shape[0]).numpy().reshape(-1, 1, 1, 1)
    return (bits.astype(np.int64) * w).sum(axis=0)


# ---- producing tokens -----------------------------------------------------------------------
def tokens_from_stream(fo: BinaryIO, bits: Optional[int] = None) -> Tokens:
    """The tokens stored in a ``.mgv`` stream (strict reader: damage raises its
    :class:`~neuralcodec.errors.StreamError`); no model is loaded or run. ``bits`` keeps only
    the first ``bits`` bits of every token (the nested code's lower rate)."""
    reader = ct.Reader(fo)
    header = reader.header
    if bits is not None and not 1 <= bits <= header.bits:
        raise InputError(f"bits must be in 1..{header.bits} for this stream, got {bits}")
    segs, nbits = [], []
    for seg in reader.segments():
        b = seg.stored_bits(header)
        arr = decode_payload(seg, b)
        if bits is not None and bits < b:
            arr, b = arr[:bits], bits
        segs.append(bits_to_tokens(arr))
        nbits.append(b)
    if bits is not None:
        header = ct.replace_header(header, bits=min(bits, header.bits))
    return Tokens(header, tuple(segs), tuple(nbits))


def tokenize(model: torch.nn.Module, video: VideoInput, options: Optional[EncodeOptions] = None, *,
             fps: Optional[Fraction] = None, progress: Progress = None, **fields) -> Tokens:
    """Encode ``video`` (see :func:`neuralcodec.codec.open_video`) → the tokens ``mgv encode``
    with the same options would store: ``options`` (an :class:`~neuralcodec.options.EncodeOptions`,
    checked here once; ``fields`` such as ``bits=…`` replace its fields) — ``bits`` per token
    (default K), ``segment_frames``, ``rdo`` and ``refine`` as there
    (:func:`neuralcodec.rdo.select_codes`, :func:`neuralcodec.refine.refine_latents`); rate
    control and the entropy mode do not apply to tokens. The token indices are computed on
    the model's device (:func:`neuralcodec.kernels.token_indices`)."""
    opts = EncodeOptions.of(options, **fields).checked(model)
    if opts.bitrate is not None or opts.bpp is not None:
        raise InputError("rate control (bitrate, bpp) does not apply to tokens: give bits")
    meta, it = open_video(video, fps)
    header = stream_header(model, meta, opts)
    opts.check_frame_size(meta.width, meta.height)
    refine, rdo = opts.refine, opts.rdo
    model.eval()
    segs: List[np.ndarray] = []
    total = 0
    while True:
        n, latents = encode_refined(model, it, meta, header.segment_frames, header.bits, refine,
                                    progress)
        if n == 0:
            break
        codes = select_codes(latents, model.quantizer, header.bits, rdo)
        total += n
        if total > ct.MAX_FRAMES:
            raise InputError(f"input has more than {ct.MAX_FRAMES} frames")
        idx = token_indices(codes)[0].to(torch.int64) & 0xFFFFFFFF  # 32 bits: int32 wraps
        segs.append(idx.cpu().numpy())
        if n < header.segment_frames:
            break
    if total == 0:
        raise InputError("the input has no frames")
    header = ct.replace_header(header, frames=total)
    return Tokens(header, tuple(segs), (header.bits,) * len(segs))


def detokenize_frames(model: ModelSource, tokens: Tokens, progress: Progress = None,
                      precision: str = "auto") -> Tuple[VideoMeta, Iterator[np.ndarray]]:
    """Tokens → (metadata, iterator of ``H×W×3`` uint8 RGB frames), decoded segment by segment
    exactly as :func:`neuralcodec.codec.decompress_from_file` decodes the same bits.
    ``model``: as in :func:`neuralcodec.weights.resolve_model` (checked against the tokens'
    model name and sha256); ``precision``: as in :func:`~neuralcodec.codec.decompress_from_file`."""
    header = tokens.header
    m = resolve_model(header, model).eval()
    if model is None:  # as decompress_from_file runs a model it loads
        for_inference(m, "cpu", precision)
    h, w = header.latent_hw

    def gen() -> Iterator[np.ndarray]:
        for i, tok in enumerate(tokens.segments):
            first, n = header.segment_bounds(i)
            seg = ct.Segment(i, first, n, tok.shape[0], h, w, ct.ENTROPY_NONE, b"", tokens.bits[i])
            yield from decode_segment(m, header, seg, tokens.segment_codes(i, dtype=m.dtype),
                                      progress)

    return tokens.meta, gen()


def detokenize(model: ModelSource, tokens: Tokens) -> np.ndarray:
    """Tokens → the decoded video ``T×H×W×3`` uint8 RGB (see :func:`detokenize_frames`)."""
    _, it = detokenize_frames(model, tokens)
    return np.stack(list(it))
