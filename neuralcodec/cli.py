"""The ``mgv`` command line: ``encode``, ``decode``, ``info``, ``tokens``, ``detokenize``.

The CLI only parses arguments, shows progress (tqdm, stderr), prints results (stdout) and maps
errors to one line on stderr and an exit code (:mod:`neuralcodec.errors`; 130 for Ctrl-C).
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
from typing import List, Optional, Tuple

import click

from . import __version__
from . import video_io as vio
from .container import MAGIC
from .errors import InputError, MGVError, OutputError, StreamError
from .outputs import atomic_output, atomic_pattern
from .resources import is_out_of_memory, release_large_blocks

# the modules that import torch are imported by the commands that need them (--help stays fast)

EXIT_INTERRUPTED = 130


class Interrupted(KeyboardInterrupt):
    """SIGTERM, delivered as an exception so cleanup handlers run."""


def _on_sigterm(signum, frame):  # pragma: no cover - exercised by subprocess tests
    raise Interrupted()


def _fail(msg: str, code: int) -> None:
    click.echo(f"mgv: error: {msg}", err=True)
    sys.exit(code)


def _warn(msg: str) -> None:
    click.echo(f"mgv: warning: {msg}", err=True)


def _run(fn, *args, **kw):
    """Call ``fn`` and turn every expected failure into one stderr line and an exit code."""
    try:
        return fn(*args, **kw)
    except MGVError as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__, e.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", EXIT_INTERRUPTED)
    except MemoryError:
        _fail("out of memory", 1)
    except RuntimeError as e:  # torch reports a failed allocation as a RuntimeError
        if not is_out_of_memory(e):
            raise
        _fail("out of memory", 1)
    except OSError as e:
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        _fail(f"{e.strerror or e}{where}", OutputError.exit_code)


def _progress(total: Optional[int], quiet: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc=desc, file=sys.stderr, disable=quiet,
                dynamic_ncols=True, leave=False)


def _parse_frames(spec: Optional[str]) -> Optional[Tuple[Optional[int], Optional[int]]]:
    """"A:B" (half-open, 0-based; either side may be empty) → (A, B); "N" → (N, N + 1)."""
    if spec is None:
        return None
    try:
        if ":" in spec:
            a, b = spec.split(":", 1)
            r = (int(a) if a.strip() else None, int(b) if b.strip() else None)
        else:
            r = (int(spec), int(spec) + 1)
    except ValueError:
        raise InputError(f"--frames {spec!r}: expected A:B with integers") from None
    if (r[0] is not None and r[0] < 0) or (r[1] is not None and r[1] <= (r[0] or 0)):
        raise InputError(f"--frames {spec!r}: need 0 <= A < B")
    return r


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MGVError("--device cuda: no CUDA device available")
    return torch.device(name)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_output(input: Path, output, force: bool, kind: Optional[str] = None) -> None:
    """Refuse an existing output without ``force`` (a PNG pattern is checked name by name
    later) and an output that is the input → :class:`OutputError`."""
    if output == "-":
        return
    if kind != "png" and Path(output).exists() and not force:
        raise OutputError(f"{output} exists (use -y to overwrite)")
    if _same_file(input, Path(output)):
        raise OutputError("input and output are the same file")


# ---- commands -------------------------------------------------------------------------------------
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
            _fail(f"{e.format_message()} (see '{where} --help')", EXIT_USAGE)
        except click.exceptions.Abort:
            _fail("interrupted", EXIT_INTERRUPTED)
        except click.ClickException as e:
            _fail(e.format_message(), e.exit_code)
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
                signal.signal(sig, _on_sigterm)


@main.command()
@click.argument("input", type=click.Path(path_type=Path, allow_dash=True))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="output .mgv file")
@click.option("--model", "model_name", default=None, help="registered model name [default: mgv-default-v2]")
@click.option("--bits", type=int, default=None, help="LFQ bits stored per token (1..K) [default: K]")
@click.option("--entropy", type=click.Choice(["none", "context"]), default="context", show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto",
              metavar="P", help="auto, float32 or bfloat16 [default: auto = bfloat16 where the "
                                "CPU/GPU computes it natively]")
@click.option("--segment-frames", type=int, default=None,
              help="frames per independently decodable segment, 1 + 4k [default: about 2 s]")
@click.option("--bitrate", default=None,
              help="target rate of the video, bits/s (50k, 1.5M): each segment stores the most "
                   "bits per token (up to --bits) that keep the stream within it")
@click.option("--bpp", type=float, default=None, help="target rate in bits per pixel (like --bitrate)")
@click.option("-y", "--force", is_flag=True, help="overwrite the output")
@click.option("-q", "--quiet", is_flag=True, help="no progress bar")
def encode(input: Path, output: Path, model_name: Optional[str], bits: Optional[int], entropy: str,
           device: str, precision: str, segment_frames: Optional[int], bitrate: Optional[str],
           bpp: Optional[float], force: bool, quiet: bool) -> None:
    """Encode a video file (anything FFmpeg reads) into an .mgv stream.

    INPUT "-" reads the video from stdin (y4m, nut, mkv: anything FFmpeg reads from a pipe;
    its audio is not carried)."""
    _run(_encode, input, output, model_name, bits, entropy, device, segment_frames, force, quiet,
         bitrate, bpp, precision)


def _encode(input: Path, output: Path, model_name, bits, entropy, device, segment_frames,
            force, quiet, bitrate=None, bpp=None, precision="auto") -> None:
    from . import codec
    from .payload import parse_rate

    rate = parse_rate(bitrate) if bitrate is not None else None
    if rate is not None and bpp is not None:
        raise InputError("give --bitrate or --bpp, not both")
    if bpp is not None and not 0 < bpp < float("inf"):
        raise InputError(f"--bpp must be positive, got {bpp}")

    if str(output) == "-":
        raise OutputError("encode writes a file (the frame count is patched into its header)")
    if _same_file(input, output):
        raise OutputError("input and output are the same file")
    _check_output(input, output, force)
    if str(input) == "-":
        if sys.stdin is not None and sys.stdin.isatty():
            raise InputError("stdin is a terminal: pipe a video into it (e.g. from ffmpeg -f yuv4mpegpipe -)")
        meta, frames = vio.open_pipe(click.get_binary_stream("stdin"))
        video = (meta, frames)
    else:
        meta = vio.probe(input)
        video = input
    model = _load_model(model_name, device, precision)
    codec.check_encode_args(model, bits=bits, entropy=entropy, segment_frames=segment_frames)
    t0 = time.perf_counter()
    total = meta.frames if meta.frames is not None or video is not input else vio.count_frames(input)
    with atomic_output(output, force) as tmp, _progress(total, quiet, "encode") as bar:
        with open(tmp, "wb") as fo:
            res = codec.compress_to_file(model, video, fo, bits=bits, entropy=entropy,
                                         segment_frames=segment_frames, progress=bar.update,
                                         bitrate=rate, bpp=bpp)
            fo.flush()
            if stat.S_ISREG(os.fstat(fo.fileno()).st_mode):  # a FIFO or device cannot sync
                os.fsync(fo.fileno())
    dt = time.perf_counter() - t0
    for w in res.warnings:
        _warn(w)
    h = res.header
    click.echo(f"{output}: {h.frames} frames {h.width}x{h.height} @ {h.fps_num}/{h.fps_den} fps, "
               f"{res.bytes_written} bytes, {res.bpp:.4f} bpp, "
               f"{8 * res.bytes_written / 1000 / float(h.frames / h.fps):.1f} kbps, "
               f"{h.bits}/{h.model_bits} bits, {res.context_segments}/{res.segments} segments "
               f"entropy coded, {dt:.2f} s ({h.frames / dt:.2f} fps)")
    if rate is not None or bpp is not None:
        bits_used = res.segment_bits
        click.echo(f"rate control: video {res.video_kbps:.1f} kbps, bits per token per segment "
                   f"{min(bits_used)}..{max(bits_used)} (mean {sum(bits_used) / len(bits_used):.2f})")
        if res.rate_note:
            _warn(res.rate_note)


OUTPUT_HELP = ("output video: .mkv (FFV1), .mp4 (H.264), .y4m, .nut (raw), a %05d.png pattern, "
               "or - for stdout (with --format)")
FORMAT_OPTION = click.option("--format", "fmt", type=click.Choice(["y4m", "nut", "mkv"]), default=None,
                             help="container of the output: required with -o - (stdout); "
                                  "overrides the extension otherwise")


def _output_kind(output: str, fmt: Optional[str]) -> str:
    if output == "-":
        if fmt is None:
            raise OutputError("-o - (stdout) needs --format y4m, nut or mkv")
        if sys.stdout.isatty():
            raise OutputError("refusing to write video to a terminal (redirect stdout or use -o FILE)")
        return fmt
    return fmt or vio.output_kind(output)


def _write_output(output: str, kind: str, meta, frames, force: bool, quiet: bool, desc: str,
                  audio=None) -> int:
    """Write ``frames`` to ``output`` (a file through a temporary name, a PNG pattern, or
    stdout for "-") → frames written."""
    if output == "-":
        with _progress(meta.frames, quiet, desc) as bar:
            return vio.write_video(click.get_binary_stream("stdout"), meta, frames, kind=kind,
                                  progress=bar.update, audio=audio, warn=_warn)
    ctx = atomic_pattern(output, meta.frames, force) if kind == "png" else atomic_output(Path(output), force)
    with ctx as tmp, _progress(meta.frames, quiet, desc) as bar:
        return vio.write_video(tmp, meta, frames, kind=kind, progress=bar.update, audio=audio,
                              warn=_warn)


def _report(output: str, msg: str) -> None:
    """The result line: stdout, or stderr when stdout carries the data."""
    click.echo(msg, err=output == "-")


@main.command()
@click.argument("input", type=click.Path(path_type=Path, allow_dash=True))
@click.option("-o", "--output", required=True, help=OUTPUT_HELP)
@FORMAT_OPTION
@click.option("--frames", "frames", default=None,
              help="decode frames A:B only (0-based, B excluded; audio is dropped)")
@click.option("--recover", is_flag=True,
              help="accept damaged streams: conceal lost frames, report them, exit 0")
@click.option("--precision", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto",
              metavar="P", help="auto, float32 or bfloat16 [default: auto = bfloat16 where the "
                                "CPU computes it natively]")
@click.option("-y", "--force", is_flag=True, help="overwrite the output")
@click.option("-q", "--quiet", is_flag=True, help="no progress bar")
def decode(input: Path, output: str, fmt: Optional[str], frames: Optional[str], recover: bool,
           precision: str, force: bool, quiet: bool) -> None:
    """Decode an .mgv stream into a video file chosen by the output's extension.

    INPUT "-" reads the stream from stdin; "-o - --format y4m" writes the video to stdout
    (messages go to stderr). Damaged or missing segments are concealed (the frame count stays
    exact) and reported on stderr, one line per damaged range; the exit code is then 2 unless
    --recover is given."""
    _run(_decode, input, output, frames, force, quiet, recover, fmt, precision)


def _decode(input: Path, output: str, frames_spec, force, quiet, recover=False, fmt=None,
            precision="auto") -> None:
    from . import codec
    from .audio import AudioSink

    kind = _output_kind(output, fmt)
    rng = _parse_frames(frames_spec)
    _check_output(input, output, force, kind)
    damage: List = []

    def on_damage(d) -> None:
        damage.append(d)
        click.echo(f"mgv: damaged: {d}", err=True)

    t0 = time.perf_counter()
    sink = AudioSink()
    with _open_input(input) as fo:
        meta, it = codec.decompress_from_file(fo, frames=rng, on_damage=on_damage, audio=sink,
                                              precision=precision)
        n = _write_output(output, kind, meta, it, force, quiet, "decode", audio=sink)
    dt = time.perf_counter() - t0
    if n != meta.frames:
        raise OutputError(f"wrote {n} of {meta.frames} frames")
    lost = sum(d.frames for d in damage)
    _report(output, f"{output}: {n} frames {meta.width}x{meta.height} @ {meta.fps.numerator}/"
                    f"{meta.fps.denominator} fps, {dt:.2f} s ({n / dt:.2f} fps)"
                    + (f", {lost} frames concealed" if damage else ""))
    if damage and not recover:
        raise StreamError(f"damaged stream: {lost} of {n} frames concealed in {len(damage)} "
                          f"range(s); the output was written (use --recover to accept)")


@contextlib.contextmanager
def _open_input(path: Path):
    if str(path) == "-":
        yield click.get_binary_stream("stdin")
        return
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory")
    with open(path, "rb") as fo:
        yield fo


@main.command()
@click.argument("input", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def info(input: Path, as_json: bool) -> None:
    """Show the header and segment table of an .mgv stream (nothing is decoded)."""
    _run(_info, input, as_json)


def _info(input: Path, as_json: bool) -> None:
    from .streaminfo import stream_info

    with _open_input(input) as fo:
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


def _is_mgv(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _load_model(model_name: Optional[str], device: str, precision: str = "auto"):
    """A registered model ready for inference on ``device`` (cast as ``precision`` says)."""
    from . import weights
    from .errors import ModelError
    from .model import for_inference

    try:
        model = weights.load_model(model_name or weights.DEFAULT_MODEL)
    except weights.WeightsError as e:
        raise ModelError(str(e)) from None
    return for_inference(model, _device(device), precision)


@main.command()
@click.argument("input", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="output .safetensors file")
@click.option("--model", "model_name", default=None,
              help="registered model for a video INPUT [default: mgv-default-v2]")
@click.option("--bits", type=int, default=None,
              help="bits per token (1..K; for a stream: keep its first B bits) [default: all]")
@click.option("--split", "split", default=None,
              help="also write sub-tokens of these bit group sizes, low bits first, e.g. 9,9")
@click.option("--segment-frames", type=int, default=None,
              help="frames per segment for a video INPUT, 1 + 4k [default: about 2 s]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("-y", "--force", is_flag=True, help="overwrite the output")
@click.option("-q", "--quiet", is_flag=True, help="no progress bar")
def tokens(input: Path, output: Path, model_name: Optional[str], bits: Optional[int],
           split: Optional[str], segment_frames: Optional[int], device: str, force: bool,
           quiet: bool) -> None:
    """Write the LFQ tokens of a video or an .mgv stream to a .safetensors file.

    A video INPUT is encoded (the tokens `mgv encode` would store); an .mgv INPUT is read
    without running a model (its stored bits, entropy decoding undone). The file holds
    tokens.{i} (t×h×w, token index sum_k 2^k·bit_k) for segment i, sub-tokens
    subtokens.{i}.{j} with --split, and the header fields as JSON metadata ("mgv")."""
    _run(_tokens, input, output, model_name, bits, split, segment_frames, device, force, quiet)


def _tokens(input: Path, output: Path, model_name, bits, split_spec, segment_frames, device,
            force, quiet) -> None:
    from . import codec
    from . import tokens as tk

    split = tk.parse_split(split_spec)
    if _same_file(input, output):
        raise OutputError("input and output are the same file")
    _check_output(input, output, force)
    t0 = time.perf_counter()
    if _is_mgv(input):
        if model_name is not None or segment_frames is not None:
            raise InputError("--model and --segment-frames apply to a video INPUT; an .mgv "
                             "stream names its model and segments")
        with _open_input(input) as fo:
            tok = tk.tokens_from_stream(fo, bits=bits)
    else:
        meta = vio.probe(input)
        model = _load_model(model_name, device)
        codec.check_encode_args(model, bits=bits, segment_frames=segment_frames)
        if split:
            tk.check_split(split, bits or model.cfg.bits)
        with _progress(meta.frames, quiet, "tokens") as bar:
            tok = tk.tokenize(model, input, bits=bits, segment_frames=segment_frames,
                              progress=bar.update)
    if split:
        tk.check_split(split, tok.header.bits)
    with atomic_output(output, force) as tmp:
        tok.save(tmp, split=split)
    h = tok.header
    shapes = sorted({tuple(t.shape) for t in tok.segments})
    click.echo(f"{output}: {len(tok.segments)} segments of tokens "
               f"{' / '.join('x'.join(map(str, sh)) for sh in shapes)} (t x h x w), "
               f"{h.bits}-bit tokens ({max(tok.bits)} max per segment), {h.frames} frames "
               f"{h.width}x{h.height}, model {h.model_name}, {time.perf_counter() - t0:.2f} s")


@main.command()
@click.argument("input", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, help=OUTPUT_HELP)
@FORMAT_OPTION
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("-y", "--force", is_flag=True, help="overwrite the output")
@click.option("-q", "--quiet", is_flag=True, help="no progress bar")
def detokenize(input: Path, output: str, fmt: Optional[str], device: str, force: bool,
               quiet: bool) -> None:
    """Decode a tokens .safetensors file (from `mgv tokens`, or a generative model's output
    with the same tensors and metadata) into a video, as `mgv decode` decodes a stream."""
    _run(_detokenize, input, output, fmt, device, force, quiet)


def _detokenize(input: Path, output: str, fmt, device, force, quiet) -> None:
    from . import tokens as tk

    kind = _output_kind(output, fmt)
    _check_output(input, output, force, kind)
    tok = tk.Tokens.load(input)
    model = _load_model(tok.header.model_name, device)
    t0 = time.perf_counter()
    meta, it = tk.detokenize_frames(model, tok)
    n = _write_output(output, kind, meta, it, force, quiet, "detokenize")
    dt = time.perf_counter() - t0
    _report(output, f"{output}: {n} frames {meta.width}x{meta.height} @ {meta.fps.numerator}/"
                    f"{meta.fps.denominator} fps, {dt:.2f} s ({n / dt:.2f} fps)")


if __name__ == "__main__":  # pragma: no cover
    main()
