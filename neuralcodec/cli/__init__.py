"""The ``mgv`` command line: ``encode``, ``decode``, ``info``, ``tokens``, ``detokenize``.

The CLI only parses arguments, shows progress (tqdm, stderr), prints results (stdout) and maps
errors to one line on stderr and an exit code (:mod:`neuralcodec.errors`: 1 resources, 2 a
damaged stream, 3 bad input and usage errors — a bad option, ``-`` with stdin or stdout
closed —, 4 output, 5 model; 130 for Ctrl-C).
Outputs are written to a temporary file beside the target and renamed into place on success
(:mod:`neuralcodec.outputs`), so a failed or interrupted command leaves no partial file.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import sys
import time
from pathlib import Path
from typing import List, Optional

import click

from .. import __version__
from .. import video_io as vio
from ..configs import DECODER_AUTO, DEFAULT_MODEL, DEFAULT_PRESET, DEFAULT_RDO, PRESETS
from ..errors import InputError, OutputError, StreamError
from ..outputs import atomic_output
from ..resources import release_large_blocks
from .common import (DECODER_OPTION, DEVICE_OPTION, EXIT_INTERRUPTED, FORCE_OPTION, FORMAT_OPTION, OUTPUT_HELP,
                     QUIET_OPTION, check_output, fail, load_model, on_sigterm, open_input,
                     output_kind, parse_frames, precision_option, progress, report, run,
                     same_file, std_stream, warn, write_output)

# the modules that import torch are imported by the commands that need them (--help stays fast)

EXIT_USAGE = InputError.exit_code  # a bad option or argument is bad input (3), not a damaged stream


class _Main(click.Group):
    """The ``mgv`` group: click's usage errors become one line and exit 3 (click's default is
    a usage block and exit 2, the code of a damaged stream)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help())
            sys.exit(0)
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else "mgv"
            fail(f"{e.format_message()} (see '{where} --help')", EXIT_USAGE)
        except click.exceptions.Abort:
            fail("interrupted", EXIT_INTERRUPTED)
        except click.ClickException as e:
            fail(e.format_message(), e.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mgv")
def main() -> None:
    """mgv: a neural video codec (causal LFQ tokenizer, .mgv files)."""
    release_large_blocks()
    for name in ("SIGTERM", "SIGHUP", "SIGQUIT"):  # each removes partial outputs, exit 130
        sig = getattr(signal, name, None)
        if sig is not None:
            with contextlib.suppress(ValueError):  # not in the main thread (some test runners)
                signal.signal(sig, on_sigterm)


@main.command()
@click.argument("input", type=click.Path(path_type=Path, allow_dash=True))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="output .mgv file")
@click.option("--model", "model_name", default=None,
              help="registered model name [default: " + DEFAULT_MODEL + "]")
@click.option("--bits", type=int, default=None,
              help="bits stored per token, the first B of the model's nested code (1..K) "
                   "[default: the model's, on its RD hull; K under --bitrate / --bpp]")
@click.option("--entropy", type=click.Choice(["none", "context"]), default="context", show_default=True)
@DEVICE_OPTION
@precision_option("CPU/GPU")
@click.option("--segment-frames", type=int, default=None,
              help="frames per independently decodable segment, 1 + f·k (f = the model's "
                   "temporal factor, 4 for the default) [default: about 2 s]")
@click.option("--bitrate", default=None,
              help="target rate of the video, bits/s (50k, 1.5M): each segment stores the most "
                   "bits per token (up to --bits) that keep the stream within it")
@click.option("--bpp", type=float, default=None, help="target rate in bits per pixel (like --bitrate)")
@click.option("--preset", type=click.Choice(list(PRESETS)), default=DEFAULT_PRESET, show_default=True,
              metavar="NAME",
              help="encoder effort: fast (RDO only), medium, slow, veryslow (more refinement "
                   "steps: better codes for the decoder; slow and veryslow also fit the decoder "
                   "to the video; slower; docs/cli.md has the measured speed and gain of each); "
                   "--rdo / --refine / --adapt / --joint override it")
@click.option("--rdo", type=float, default=None,
              help="rate-distortion trade of the encoder: a token repeats the previous latent "
                   "frame's when that adds at most this much squared error, in quantization "
                   "steps (0 = off; larger = smaller stream, slightly blurrier motion) "
                   f"[default: the preset's, {DEFAULT_RDO:g}]")
@click.option("--refine", type=int, default=None, metavar="N",
              help="N optimisation steps per chunk that choose the codes the decoder "
                   "reconstructs best (2-3 decoder passes each; 0 = off) [default: the preset's]")
@click.option("--adapt", type=int, default=None, metavar="N",
              help="N training steps that fit the decoder's biases and norms to this video; the "
                   "change is sent in the stream (a 1.3 or 1.4 stream) when its gain pays for its bytes "
                   "(0 = off; not with --bitrate/--bpp) [default: the preset's]")
@click.option("--joint", type=int, default=None, metavar="N",
              help="N passes over the video fitting the decoder and the codes together (instead "
                   "of --adapt; then --refine steps per chunk through the fitted decoder); the "
                   "change is sent when its gain pays for its bytes (0 = off; not with "
                   "--bitrate/--bpp) [default: the preset's]")
@FORCE_OPTION
@QUIET_OPTION
def encode(input: Path, output: Path, model_name: Optional[str], bits: Optional[int], entropy: str,
           device: str, precision: str, segment_frames: Optional[int], bitrate: Optional[str],
           bpp: Optional[float], preset: str, rdo: Optional[float], refine: Optional[int],
           adapt: Optional[int], joint: Optional[int], force: bool, quiet: bool) -> None:
    """Encode a video file (anything FFmpeg reads) into an .mgv stream.

    INPUT "-" reads the video from stdin (y4m, nut, mkv: anything FFmpeg reads from a pipe;
    its audio is not carried)."""
    run(_encode, input, output, model_name, device, precision, force, quiet, preset, bits=bits,
        entropy=entropy, segment_frames=segment_frames, bitrate=bitrate, bpp=bpp, rdo=rdo,
        refine=refine, adapt=adapt, joint=joint)


def _encode(input: Path, output: Path, model_name, device, precision, force, quiet, preset,
            bitrate=None, **fields) -> None:
    from .. import codec
    from ..options import EncodeOptions
    from ..payload import parse_rate

    opts = EncodeOptions.from_preset(preset, bitrate=parse_rate(bitrate) if bitrate is not None else None,
                                     **fields)

    if str(output) == "-":
        raise OutputError("encode writes a file (the frame count is patched into its header)")
    if same_file(input, output):
        raise OutputError("input and output are the same file")
    check_output(input, output, force)
    if str(input) == "-":
        stdin = std_stream("stdin")
        if sys.stdin.isatty():
            raise InputError("stdin is a terminal: pipe a video into it (e.g. from ffmpeg -f yuv4mpegpipe -)")
        meta, frames = vio.open_pipe(stdin)
        video = (meta, frames)
    else:
        meta = vio.probe(input)
        video = input
    model = load_model(model_name, device, precision)
    opts = opts.checked(model)  # before any frame is read; compress_to_file takes it as checked
    opts.check_frame_size(meta.width, meta.height)
    t0 = time.perf_counter()
    total = meta.frames if meta.frames is not None or video is not input else vio.count_frames(input)
    steps = (progress(codec.adapt_steps(model, meta, opts, total), quiet, "adapt", "step")
             if opts.adapt or opts.joint else contextlib.nullcontext())
    with atomic_output(output, force) as tmp, progress(total, quiet, "encode") as bar, steps as abar:
        with open(tmp, "wb") as fo:
            res = codec.compress_to_file(model, video, fo, opts, progress=bar.update,
                                         adapt_progress=abar.update if abar else None)
            fo.flush()
            if stat.S_ISREG(os.fstat(fo.fileno()).st_mode):  # a FIFO or device cannot sync
                os.fsync(fo.fileno())
    dt = time.perf_counter() - t0
    for w in res.warnings:
        warn(w)
    h = res.header
    click.echo(f"{output}: {h.frames} frames {h.width}x{h.height} @ {h.fps_num}/{h.fps_den} fps, "
               f"{res.bytes_written} bytes, {res.bpp:.4f} bpp, "
               f"{8 * res.bytes_written / 1000 / float(h.frames / h.fps):.1f} kbps, "
               f"{h.bits}/{h.model_bits} bits, {res.context_segments}/{res.segments} segments "
               f"entropy coded, {dt:.2f} s ({h.frames / dt:.2f} fps)")
    groups = [] if res.adaptation is None else res.adaptation.get("groups", [res.adaptation])
    for a in groups:
        where = ("over the plain codes" if "passes" in a else
                 "on held-out frames" if a.get("windows_held_out") else "on training frames")
        first, count = a.get("segments", (0, res.segments))
        span = f" for segments {first}..{first + count - 1}" if len(groups) > 1 else ""
        work = f"{a['passes']} passes" if "passes" in a else f"{a['steps']} steps"
        click.echo(f"adaptation of the {a.get('decoder', 'full')} decoder{span}: {work}, "
                   f"{a.get('gain_db', 0):+.2f} dB {where} for {a.get('update_bytes', 0)} bytes: "
                   + ("sent" if a["kept"]
                      else f"not sent ({a.get('why') or _needed(a)})"))
    if opts.bitrate is not None or opts.bpp is not None:
        bits_used = res.segment_bits
        click.echo(f"rate control: video {res.video_kbps:.1f} kbps, bits per token per segment "
                   f"{min(bits_used)}..{max(bits_used)} (mean {sum(bits_used) / len(bits_used):.2f})")
        if res.rate_note:
            warn(res.rate_note)


def _needed(a: dict) -> str:
    """Why an update was not sent: the gain it needed, at this video's own slope."""
    slope = f" at this video's {a['slope_db']:.2f} dB per doubling" if "slope_db" in a else ""
    return f"needed {a['needed_db']:+.2f} dB{slope}"


@main.command()
@click.argument("input", type=click.Path(path_type=Path, allow_dash=True))
@click.option("-o", "--output", required=True, help=OUTPUT_HELP)
@FORMAT_OPTION
@click.option("--frames", "frames", default=None,
              help="decode frames A:B only (0-based, B excluded; audio is dropped)")
@click.option("--recover", is_flag=True,
              help="accept damaged streams: conceal lost frames, report them, exit 0")
@precision_option("CPU")
@DECODER_OPTION
@FORCE_OPTION
@QUIET_OPTION
def decode(input: Path, output: str, fmt: Optional[str], frames: Optional[str], recover: bool,
           precision: str, decoder: str, force: bool, quiet: bool) -> None:
    """Decode an .mgv stream into a video file chosen by the output's extension.

    INPUT "-" reads the stream from stdin; "-o - --format y4m" writes the video to stdout
    (messages go to stderr). Damaged or missing segments are concealed (the frame count stays
    exact) and reported on stderr, one line per damaged range; the exit code is then 2 unless
    --recover is given."""
    run(_decode, input, output, frames, force, quiet, recover, fmt, precision, decoder)


def _decode(input: Path, output: str, frames_spec, force, quiet, recover=False, fmt=None,
            precision="auto", decoder=DECODER_AUTO) -> None:
    from .. import codec
    from ..audio import AudioSink

    kind = output_kind(output, fmt)
    rng = parse_frames(frames_spec)
    check_output(input, output, force, kind)
    damage: List = []

    def on_damage(d) -> None:
        damage.append(d)
        click.echo(f"mgv: damaged: {d}", err=True)

    t0 = time.perf_counter()
    sink = AudioSink()
    with open_input(input) as fo:
        meta, it = codec.decompress_from_file(fo, frames=rng, on_damage=on_damage, audio=sink,
                                              precision=precision, decoder=decoder)
        n = write_output(output, kind, meta, it, force, quiet, "decode", audio=sink)
    dt = time.perf_counter() - t0
    if n != meta.frames:
        raise OutputError(f"wrote {n} of {meta.frames} frames")
    lost = sum(d.frames for d in damage)
    report(output, f"{output}: {n} frames {meta.width}x{meta.height} @ {meta.fps.numerator}/"
                    f"{meta.fps.denominator} fps, {dt:.2f} s ({n / dt:.2f} fps)"
                    + (f", {lost} frames concealed" if damage else ""))
    if damage and not recover:
        raise StreamError(f"damaged stream: {lost} of {n} frames concealed in {len(damage)} "
                          f"range(s); the output was written (use --recover to accept)")


@main.command()
@click.argument("input", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def info(input: Path, as_json: bool) -> None:
    """Show the header and segment table of an .mgv stream (nothing is decoded)."""
    run(_info, input, as_json)


def _info(input: Path, as_json: bool) -> None:
    from ..streaminfo import stream_info

    with open_input(input) as fo:
        info = stream_info(fo)
    if as_json:
        click.echo(json.dumps(info.to_dict(), indent=2))
    else:
        click.echo("\n".join(info.lines(str(input))))
    if info.damaged:
        for x in info.damaged:
            click.echo(f"mgv: damaged: {x}", err=True)
        raise StreamError(f"damaged stream: {sum(x.frames for x in info.damaged)}"
                          f" frames in {len(info.damaged)} damaged range(s)")


from . import tokens as _tokens_commands  # noqa: E402,F401 - registers tokens, detokenize


if __name__ == "__main__":  # pragma: no cover
    main()
