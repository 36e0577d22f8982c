"""``mgv tokens`` and ``mgv detokenize``: LFQ tokens of a video or stream to a .safetensors
file and back (:mod:`neuralcodec.tokens`)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import click

from .. import video_io as vio
from ..configs import DEFAULT_MODEL, DEFAULT_PRESET, DEFAULT_RDO, PRESETS
from ..errors import InputError, OutputError
from ..outputs import atomic_output
from ..resources import check_decoder_memory
from . import main
from .common import (DECODER_OPTION, DEVICE_OPTION, FORCE_OPTION, FORMAT_OPTION, OUTPUT_HELP, QUIET_OPTION,
                     check_output, is_mgv, load_model, open_input, output_kind, progress, report,
                     run, same_file, write_output)


@main.command()
@click.argument("input", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="output .safetensors file")
@click.option("--model", "model_name", default=None,
              help="registered model for a video INPUT [default: " + DEFAULT_MODEL + "]")
@click.option("--bits", type=int, default=None,
              help="bits per token (1..K; for a stream: keep its first B bits) [default: a "
                   "stream's stored bits; for a video, what mgv encode stores: the model's default]")
@click.option("--split", "split", default=None,
              help="also write sub-tokens of these bit group sizes, low bits first, e.g. 9,9")
@click.option("--segment-frames", type=int, default=None,
              help="frames per segment for a video INPUT, 1 + f·k (f = the model's temporal "
                   "factor, 4 for the default) [default: about 2 s]")
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None, metavar="NAME",
              help=f"for a video INPUT: encoder effort, as `mgv encode --preset` [default: {DEFAULT_PRESET}]")
@click.option("--rdo", type=float, default=None,
              help="for a video INPUT: the encoder's repeat threshold, as `mgv encode --rdo` "
                   f"(0 = the plain signs of the latents) [default: the preset's, {DEFAULT_RDO:g}]")
@click.option("--refine", type=int, default=None, metavar="N",
              help="for a video INPUT: refinement steps, as `mgv encode --refine` [default: the preset's]")
@DEVICE_OPTION
@FORCE_OPTION
@QUIET_OPTION
def tokens(input: Path, output: Path, model_name: Optional[str], bits: Optional[int],
           split: Optional[str], segment_frames: Optional[int], preset: Optional[str],
           rdo: Optional[float], refine: Optional[int], device: str, force: bool, quiet: bool) -> None:
    """Write the LFQ tokens of a video or an .mgv stream to a .safetensors file.

    A video INPUT is encoded (the tokens `mgv encode` would store); an .mgv INPUT is read
    without running a model (its stored bits, entropy decoding undone). The file holds
    tokens.{i} (t×h×w, token index sum_k 2^k·bit_k) for segment i, sub-tokens
    subtokens.{i}.{j} with --split, and the header fields as JSON metadata ("mgv")."""
    run(_tokens, input, output, model_name, bits, split, segment_frames, device, force, quiet,
        preset, rdo, refine)


def _tokens(input: Path, output: Path, model_name, bits, split_spec, segment_frames, device,
            force, quiet, preset=None, rdo=None, refine=None) -> None:
    from .. import tokens as tk
    from ..options import EncodeOptions

    split = tk.parse_split(split_spec)
    if same_file(input, output):
        raise OutputError("input and output are the same file")
    check_output(input, output, force)
    t0 = time.perf_counter()
    if is_mgv(input):
        if (model_name is not None or segment_frames is not None or rdo is not None
                or refine is not None or preset is not None):
            raise InputError("--model, --segment-frames, --preset, --rdo and --refine apply to a video "
                             "INPUT; an .mgv stream names its model and stores its tokens")
        # one latent frame at a time from the stream to the file: bounded memory (spec app. B)
        with open_input(input) as fo:
            layout, frames_of = tk.plan_stream_tokens(fo, bits=bits, split=split)
            h, nbits = layout.header, layout.bits
            with atomic_output(output, force) as tmp, open(tmp, "wb") as out, \
                    progress(h.frames, quiet, "tokens") as bar:
                layout.write(out, frames_of, bar.update)
        lh, lw = h.latent_hw
        shapes = sorted({(h.latent_frames(h.segment_bounds(i)[1]), lh, lw)
                         for i in range(h.segment_count)})
    else:
        meta = vio.probe(input)
        model = load_model(model_name, device)
        # tokens of a video carry no decoder adaptation (encode, then take the stream's tokens)
        opts = EncodeOptions.from_preset(preset, bits=bits, segment_frames=segment_frames, rdo=rdo,
                                         refine=refine, adapt=0, joint=0).checked(model)
        opts.check_frame_size(meta.width, meta.height)
        if split:
            tk.check_split(split, opts.stored_bits(model))
        with progress(meta.frames, quiet, "tokens") as bar:
            tok = tk.tokenize(model, input, opts, progress=bar.update)
        with atomic_output(output, force) as tmp:
            tok.save(tmp, split=split)
        h, nbits = tok.header, tok.bits
        shapes = sorted({tuple(t.shape) for t in tok.segments})
    click.echo(f"{output}: {h.segment_count} segments of tokens "
               f"{' / '.join('x'.join(map(str, sh)) for sh in shapes)} (t x h x w), "
               f"{h.bits}-bit tokens ({max(nbits)} max per segment), {h.frames} frames "
               f"{h.width}x{h.height}, model {h.model_name}, {time.perf_counter() - t0:.2f} s")


@main.command()
@click.argument("input", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, help=OUTPUT_HELP)
@FORMAT_OPTION
@DEVICE_OPTION
@DECODER_OPTION
@FORCE_OPTION
@QUIET_OPTION
def detokenize(input: Path, output: str, fmt: Optional[str], device: str, decoder: str,
               force: bool, quiet: bool) -> None:
    """Decode a tokens .safetensors file (from `mgv tokens`, or a generative model's output
    with the same tensors and metadata) into a video, as `mgv decode` decodes a stream."""
    run(_detokenize, input, output, fmt, device, decoder, force, quiet)


def _detokenize(input: Path, output: str, fmt, device, decoder, force, quiet) -> None:
    from .. import tokens as tk

    kind = output_kind(output, fmt)
    check_output(input, output, force, kind)
    tf = tk.TokensFile.open(input)  # every size checked, no tensor data read yet
    model = load_model(tf.header.model_name, device, precision=None)  # cast by the decoder,
    # after it copies W of an ADAPT record (spec §8c) from the file's values
    check_decoder_memory(model, tf.header)  # as `mgv decode` refuses the same header
    tok = tk.Tokens(*tf.read_arrays())
    t0 = time.perf_counter()
    meta, it = tk.detokenize_frames(lambda name: model, tok, decoder=decoder)
    n = write_output(output, kind, meta, it, force, quiet, "detokenize")
    dt = time.perf_counter() - t0
    report(output, f"{output}: {n} frames {meta.width}x{meta.height} @ {meta.fps.numerator}/"
                    f"{meta.fps.denominator} fps, {dt:.2f} s ({n / dt:.2f} fps)")


