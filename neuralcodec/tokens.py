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

File layout (``.safetensors``, specified in ``bitstream_spec.md`` appendix B, read as untrusted
input: :class:`neuralcodec.tokenfile.TokensFile`): tensor ``tokens.{i}`` (int32, or int64 when a token can have
32 bits) for segment i; with ``split=(s_0, s_1, …)`` also ``subtokens.{i}.{j}``, the bits
``Σ_{l<j} s_l`` … ``Σ_{l≤j} s_l − 1`` of each token as an index of ``2^{s_j}`` (Open-MAGVIT2's
factorized vocabularies: ``split=(9, 9)`` turns 2^18 into two vocabularies of 512). The
metadata key ``mgv`` holds the header fields as JSON (:meth:`Tokens.metadata`).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from . import container as ct
from .adapt import leading_records, read_adaptations, stream_decoders
from .chunks import Progress, decode_segment
from .codec import VideoInput, open_video, stream_header
from .configs import DECODER_AUTO
from .errors import InputError
from .resources import check_memory
from .kernels import bit_weights, token_indices
from .options import EncodeOptions
from .payload import payload_frames
from .recovery import check_stream_size
from .tokenfile import (FORMAT, FORMAT_VERSION, FileLayout, TokensFile, check_split, metadata_dict,
                        parse_metadata, parse_split, split_tokens)
from .quantizer import indices_to_codes
from .rdo import select_codes
from .refine import encode_refined, refine_model
from .video_io import VideoMeta
from .weights import ModelSource

# The file format lives in neuralcodec.tokenfile; its public names are also this module's.
__all__ = ["FORMAT", "FORMAT_VERSION", "FileLayout", "Tokens", "TokensFile", "bits_to_tokens",
           "check_split", "detokenize", "detokenize_frames", "metadata_dict", "parse_metadata",
           "parse_split", "plan_stream_tokens", "split_tokens", "tokenize", "tokens_from_stream",
           "write_stream_tokens"]


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
    adapt: Tuple[bytes, ...] = ()  # the stream's ADAPT record payloads (decoder adaptation, §8c)

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
        return [split_tokens(tok, sizes) for tok in self.segments]

    def metadata(self, split: Optional[Sequence[int]] = None) -> dict:
        """The header fields as a JSON-friendly dict (stored under the metadata key ``mgv``;
        schema: :func:`parse_metadata`)."""
        return metadata_dict(self.header, self.bits, split, self.adapt)

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
        sizes = check_split(split, self.header.bits) if split else None
        layout = FileLayout(self.header, self.bits, sizes, self.adapt)
        with open(target, "wb") as fo:
            layout.write(fo, lambda i: iter(self.segments[i]))

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Tokens":
        """Read a tokens file written by :meth:`save` (or made by a generative model with the
        same tensors and metadata) → :class:`InputError` when it is not one or is inconsistent,
        :class:`~neuralcodec.errors.ResourceError` when its tokens cannot fit in memory.
        ``tokens.{i}`` may be absent when every ``subtokens.{i}.{j}`` is present. Everything
        but the token values is checked before any tensor data is read
        (:meth:`TokensFile.open`)."""
        f = TokensFile.open(path)
        return cls(*f.read_arrays(), f.meta.adapt)


def bits_to_tokens(bits: np.ndarray) -> np.ndarray:
    """Bit array ``b×t×h×w`` uint8 {0,1} → token indices ``t×h×w`` int64 (Σ_k 2^k·bit_k)."""
    w = bit_weights(bits.shape[0]).numpy().reshape(-1, 1, 1, 1)
    return (bits.astype(np.int64) * w).sum(axis=0)


# ---- producing tokens -----------------------------------------------------------------------
def _stream_plan(fo: BinaryIO, bits: Optional[int]
                 ) -> Tuple[ct.Reader, ct.Header, Tuple[int, ...], Tuple[bytes, ...]]:
    """Read a stream's records once, strictly, without decoding a segment payload → (reader,
    header with ``bits`` capped, bits per segment, the ADAPT payloads, checked). Refuses a
    file too short for its segments at once (spec §8b,
    :func:`neuralcodec.recovery.check_stream_size`) and ``bits`` outside 1..b (:class:`InputError`)."""
    reader = ct.Reader(fo)
    header = reader.header
    if bits is not None and not 1 <= bits <= header.bits:
        raise InputError(f"bits must be in 1..{header.bits} for this stream, got {bits}")
    check_stream_size(reader)
    keep = bits or header.bits
    adapt = leading_records(reader)
    read_adaptations(adapt, header)
    nbits = tuple(min(seg.stored_bits(header), keep) for seg in reader.segments())
    if bits is not None:
        header = ct.replace_header(header, bits=min(bits, header.bits))
    return reader, header, nbits, tuple(r.payload for r in adapt)


def _stream_frames(reader: ct.Reader, header: ct.Header, nbits: Sequence[int]
                   ) -> Callable[[int], Iterator[np.ndarray]]:
    """``frames_of(i)`` for :meth:`FileLayout.write`: segment i's tokens one latent frame at a
    time (``h×w`` int64), its first ``nbits[i]`` bits, from a second strict scan."""
    segments = reader.segments()

    def frames_of(i: int) -> Iterator[np.ndarray]:
        seg = next(segments)
        # 1×b×1×h×w codes in {-1, +1}; a mode-1 payload's check bits fail after its last frame
        for codes in payload_frames(seg, seg.stored_bits(reader.header)):
            yield bits_to_tokens((codes[0, :nbits[i]] > 0).numpy())[0]

    return frames_of


def plan_stream_tokens(fo: BinaryIO, bits: Optional[int] = None,
                       split: Optional[Sequence[int]] = None
                       ) -> Tuple[FileLayout, Callable[[int], Iterator[np.ndarray]]]:
    """Check the ``.mgv`` stream ``fo`` (seekable; every record read once, strictly, no
    payload decoded) and the options → (the tokens file's :class:`FileLayout`, the
    ``frames_of`` its :meth:`FileLayout.write` takes)."""
    reader, header, nbits, adapt = _stream_plan(fo, bits)
    sizes = check_split(split, header.bits) if split else None
    return FileLayout(header, nbits, sizes, adapt), _stream_frames(reader, header, nbits)


def write_stream_tokens(fo: BinaryIO, target: BinaryIO, bits: Optional[int] = None,
                        split: Optional[Sequence[int]] = None, progress: Progress = None
                        ) -> FileLayout:
    """Write the tokens file of the ``.mgv`` stream ``fo`` (seekable) to ``target`` (a
    seekable binary file), one latent frame at a time: memory stays that of one frame
    whatever the stream announces (a 26 KB stream may legally expand to gigabytes of tokens;
    the file grows, the process does not). → the file's layout. Damage raises its
    :class:`~neuralcodec.errors.StreamError` (the caller discards ``target``)."""
    layout, frames_of = plan_stream_tokens(fo, bits, split)
    layout.write(target, frames_of, progress)
    return layout


def tokens_from_stream(fo: BinaryIO, bits: Optional[int] = None) -> Tokens:
    """The tokens stored in a ``.mgv`` stream (strict reader: damage raises its
    :class:`~neuralcodec.errors.StreamError`); no model is loaded or run. ``bits`` keeps only
    the first ``bits`` bits of every token (the nested code's lower rate). The int64 tokens of
    the whole stream are held in memory: :class:`~neuralcodec.errors.ResourceError` up front
    when they cannot fit (:func:`write_stream_tokens` writes a file in bounded memory)."""
    reader, header, nbits, adapt = _stream_plan(fo, bits)
    h, w = header.latent_hw
    t_all = sum(header.latent_frames(header.segment_bounds(i)[1]) for i in range(len(nbits)))
    check_memory(t_all * h * w * 8 + 8 * max(nbits) * h * w, "holding the stream's tokens")
    frames_of = _stream_frames(reader, header, nbits)
    segs = tuple(np.stack(list(frames_of(i))) for i in range(len(nbits)))
    return Tokens(header, segs, nbits, adapt)


def tokenize(model: torch.nn.Module, video: VideoInput, options: Optional[EncodeOptions] = None, *,
             fps: Optional[Fraction] = None, progress: Progress = None, **fields) -> Tokens:
    """Encode ``video`` (see :func:`neuralcodec.codec.open_video`) → the tokens ``mgv encode``
    with the same options would store: ``options`` (an :class:`~neuralcodec.options.EncodeOptions`,
    checked here once; ``fields`` such as ``bits=…`` replace its fields) — ``bits`` per token
    (default: the model's, as mgv encode), ``segment_frames``, ``rdo`` and ``refine`` as there
    (:func:`neuralcodec.rdo.select_codes`, :func:`neuralcodec.refine.refine_latents`); rate
    control, the entropy mode and decoder adaptation (``adapt``: the tokens are the same) do
    not apply to tokens: the tokens of an adapted stream (:func:`tokens_from_stream`) carry its
    update. The token indices are computed on
    the model's device (:func:`neuralcodec.kernels.token_indices`)."""
    opts = EncodeOptions.of(options, **fields).checked(model)
    if opts.bitrate is not None or opts.bpp is not None:
        raise InputError("rate control (bitrate, bpp) does not apply to tokens: give bits")
    meta, it = open_video(video, fps)
    header = stream_header(model, meta, opts)
    opts.check_frame_size(meta.width, meta.height)
    refine, rdo = opts.refine, opts.rdo
    model = (refine_model(model) if refine else model).eval()  # as mgv encode refines
    segs: List[np.ndarray] = []
    total = 0
    while True:
        n, latents = encode_refined(model, it, meta, header.segment_frames, header.bits, refine,
                                    progress, rdo)
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
                      precision: str = "auto", decoder: Union[str, torch.nn.Module] = DECODER_AUTO
                      ) -> Tuple[VideoMeta, Iterator[np.ndarray]]:
    """Tokens → (metadata, iterator of ``H×W×3`` uint8 RGB frames), decoded segment by segment
    exactly as :func:`neuralcodec.codec.decompress_from_file` decodes the same bits.
    ``model``: as in :func:`neuralcodec.weights.resolve_model` (checked against the tokens'
    model name and sha256); ``precision``, ``decoder``: as in
    :func:`~neuralcodec.codec.decompress_from_file`."""
    header = tokens.header
    m, decoders = stream_decoders(header, model, [ct.Record(ct.REC_ADAPT, 0, 0, p) for p in tokens.adapt],
                                  precision, decoder)
    h, w = header.latent_hw

    def gen() -> Iterator[np.ndarray]:
        for i, tok in enumerate(tokens.segments):
            first, n = header.segment_bounds(i)
            seg = ct.Segment(i, first, n, tok.shape[0], h, w, ct.ENTROPY_NONE, b"", tokens.bits[i])
            mi = decoders(i)
            yield from decode_segment(mi, header, seg, tokens.segment_codes(i, dtype=m.dtype),
                                      progress)

    return tokens.meta, gen()


def detokenize(model: ModelSource, tokens: Tokens) -> np.ndarray:
    """Tokens → the decoded video ``T×H×W×3`` uint8 RGB (see :func:`detokenize_frames`)."""
    _, it = detokenize_frames(model, tokens)
    return np.stack(list(it))
