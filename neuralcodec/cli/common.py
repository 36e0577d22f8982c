"""What the ``mgv`` commands share: errors mapped to one stderr line and an exit code,
progress bars on stderr, the common options, and where inputs come from and outputs go."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Optional, Tuple

import click

from .. import video_out as vout
from ..configs import DECODER_AUTO, DECODER_FULL
from ..container import MAGIC
from ..errors import InputError, MGVError, ModelError, OutputError
from ..outputs import atomic_output, atomic_pattern
from ..resources import is_out_of_memory

EXIT_INTERRUPTED = 130


class Interrupted(KeyboardInterrupt):
    """SIGTERM, delivered as an exception so cleanup handlers run."""


def on_sigterm(signum, frame):  # pragma: no cover - exercised by subprocess tests
    raise Interrupted()


def fail(msg: str, code: int) -> None:
    click.echo(f"mgv: error: {msg}", err=True)
    sys.exit(code)


def warn(msg: str) -> None:
    click.echo(f"mgv: warning: {msg}", err=True)


def run(fn, *args, **kw):
    """Call ``fn`` and turn every expected failure into one stderr line and an exit code."""
    try:
        return fn(*args, **kw)
    except MGVError as e:
        fail(str(e).splitlines()[0] if str(e) else type(e).__name__, e.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)
    except MemoryError:
        fail("out of memory", 1)
    except RuntimeError as e:  # torch reports a failed allocation as a RuntimeError
        if not is_out_of_memory(e):
            raise
        fail("out of memory", 1)
    except OSError as e:
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        fail(f"{e.strerror or e}{where}", OutputError.exit_code)


def progress(total: Optional[int], quiet: bool, desc: str, unit: str = "frame"):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, disable=quiet,
                dynamic_ncols=True, leave=False)


def parse_frames(spec: Optional[str]) -> Optional[Tuple[Optional[int], Optional[int]]]:
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


def device_of(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MGVError("--device cuda: no CUDA device available")
    return torch.device(name)


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(input: Path, output, force: bool, kind: Optional[str] = None) -> None:
    """Refuse an existing output without ``force`` (a PNG pattern is checked name by name
    later) and an output that is the input → :class:`OutputError`."""
    if output == "-":
        return
    if kind != "png" and Path(output).exists() and not force:
        raise OutputError(f"{output} exists (use -y to overwrite)")
    if same_file(input, Path(output)):
        raise OutputError("input and output are the same file")


DEVICE_OPTION = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                             show_default=True)
FORCE_OPTION = click.option("-y", "--force", is_flag=True, help="overwrite the output")
QUIET_OPTION = click.option("-q", "--quiet", is_flag=True, help="no progress bar")


def precision_option(where: str):
    return click.option("--precision", type=click.Choice(["auto", "float32", "bfloat16"]),
                        default="auto", metavar="P",
                        help=f"auto, float32 or bfloat16 [default: auto = bfloat16 where the "
                             f"{where} computes it natively]")


DECODER_OPTION = click.option(
    "--decoder", default=DECODER_AUTO, metavar="D", show_default=True,
    help=f"decoder network: {DECODER_AUTO} (the model's fast decoder variant where it has one, its own "
         f"decoder for segments a decoder adaptation covers), {DECODER_FULL} (the model's own "
         f"decoder), or a variant's name (every segment, adaptations unused)")

OUTPUT_HELP = ("output video: .mkv (FFV1), .mp4 (H.264), .y4m, .nut (raw), a %05d.png pattern, "
               "or - for stdout (with --format)")
FORMAT_OPTION = click.option("--format", "fmt", type=click.Choice(["y4m", "nut", "mkv"]), default=None,
                             help="container of the output: required with -o - (stdout); "
                                  "overrides the extension otherwise")


def std_stream(name: str):
    """The binary ``stdin`` or ``stdout`` → :class:`InputError` (a usage error, exit 3) when
    the process was started with it closed (``<&-``, ``>&-``: Python then has no stream)."""
    what = "INPUT -" if name == "stdin" else "-o -"
    if getattr(sys, name) is None:
        raise InputError(f"{name} is closed: {what} needs an open {name}")
    try:
        return click.get_binary_stream(name)
    except RuntimeError:
        raise InputError(f"{name} is not usable as a binary stream: {what} needs an open "
                         f"{name}") from None


def output_kind(output: str, fmt: Optional[str]) -> str:
    if output == "-":
        if fmt is None:
            raise OutputError("-o - (stdout) needs --format y4m, nut or mkv")
        std_stream("stdout")
        if sys.stdout.isatty():
            raise OutputError("refusing to write video to a terminal (redirect stdout or use -o FILE)")
        return fmt
    return fmt or vout.output_kind(output)


def write_output(output: str, kind: str, meta, frames, force: bool, quiet: bool, desc: str,
                  audio=None) -> int:
    """Write ``frames`` to ``output`` (a file through a temporary name, a PNG pattern, or
    stdout for "-") → frames written."""
    if output == "-":
        with progress(meta.frames, quiet, desc) as bar:
            return vout.write_video(std_stream("stdout"), meta, frames, kind=kind,
                                  progress=bar.update, audio=audio, warn=warn)
    ctx = atomic_pattern(output, meta.frames, force) if kind == "png" else atomic_output(Path(output), force)
    with ctx as tmp, progress(meta.frames, quiet, desc) as bar:
        return vout.write_video(tmp, meta, frames, kind=kind, progress=bar.update, audio=audio,
                              warn=warn)


def report(output: str, msg: str) -> None:
    """The result line: stdout, or stderr when stdout carries the data."""
    click.echo(msg, err=output == "-")


@contextlib.contextmanager
def open_input(path: Path):
    if str(path) == "-":
        yield std_stream("stdin")
        return
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory")
    with open(path, "rb") as fo:
        yield fo


def is_mgv(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def load_model(model_name: Optional[str], device: str, precision: Optional[str] = "auto"):
    """A registered model ready for inference on ``device`` (cast as ``precision`` says; None:
    on ``device`` in float32, as its weights file holds it, for the decoder to cast)."""
    from .. import weights
    from ..model import for_inference

    try:
        model = weights.load_model(model_name or weights.DEFAULT_MODEL)
    except weights.WeightsError as e:
        raise ModelError(str(e)) from None
    if precision is None:
        return model.to(device_of(device))
    return for_inference(model, device_of(device), precision)
