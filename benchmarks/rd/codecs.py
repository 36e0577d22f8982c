"""Codecs under test, one small class each (in the style of CompressAI's ``utils/video/bench/codecs.py``).

A codec knows its rate points, returns its encode and decode command lines as lists (never a
shell string) and reports its tool's version, which goes into every cache key. Decoders write
either a ``.y4m`` (``mgv``) or raw planar YUV 4:2:0 in ``decoded_pix_fmt`` (FFmpeg codecs).

==================  =======================================================================
name                what it runs
==================  =======================================================================
``mgv``             ``python -m neuralcodec encode … --bits B`` / ``decode`` (nested rate points)
``x265-<p>-ra``     libx265 preset ``p``, default GOP (random access, B-frames), CRF points
``x265-<p>-ld``     libx265 preset ``p``, low delay: ``bframes=0`` (P-frames only), CRF points
``vvenc-<p>``       libvvenc preset ``p``, ``qpa`` off, 10-bit input, default RA GOP, QP points
``x264-<p>``        libx264 preset ``p``, default GOP, CRF points (optional)
``svtav1-p<n>``     libsvtav1 preset ``n``, default GOP, CRF 0..63 points (optional)
==================  =======================================================================
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from neuralcodec.errors import InputError

# Rate points. CRF/QP run from good quality down to the very low rates where the neural codec
# lives (about 0.01-0.1 bpp), so that the curves overlap in quality.
CRF_POINTS = (27, 32, 37, 42, 47, 51)
QP_POINTS = (27, 32, 37, 42, 47, 51)
QUICK_POINTS = (27, 35, 43, 51)
AV1_CRF_POINTS = (32, 39, 46, 53, 59, 63)  # SVT-AV1's CRF scale is 0..63
AV1_QUICK_POINTS = (32, 43, 53, 63)
MGV_BITS = (2, 6, 12, 18, 24)  # nested rate points of the default model (v6: 6 / 12 / 18 / 24 are whole bit planes)


@functools.lru_cache(maxsize=None)
def ffmpeg_exe() -> Optional[str]:
    """Path of the FFmpeg that ``imageio-ffmpeg`` ships, else ``ffmpeg`` on PATH, else None."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:  # package missing, or no binary for this platform
        return shutil.which("ffmpeg")


@functools.lru_cache(maxsize=None)
def ffmpeg_capabilities(ffmpeg: str) -> Dict[str, object]:
    """Version line, encoders and filters of an FFmpeg binary."""
    def out(*args):
        r = subprocess.run([ffmpeg, "-hide_banner", *args], capture_output=True, text=True)
        return r.stdout

    first = (subprocess.run([ffmpeg, "-version"], capture_output=True, text=True).stdout.splitlines() or [""])[0]
    m = re.match(r"ffmpeg version (\S+)", first)
    enc = set(re.findall(r"^\s*V\S*\s+(\S+)", out("-encoders"), re.M))
    filt = set(re.findall(r"^\s*\S+\s+(\S+)\s+\S+->\S+", out("-filters"), re.M))
    dec = set(re.findall(r"^\s*V\S*\s+(\S+)", out("-decoders"), re.M))
    return {"version": f"ffmpeg {m.group(1)}" if m else "unknown", "encoders": enc, "filters": filt, "decoders": dec}


@functools.lru_cache(maxsize=None)
def _library_version(ffmpeg: str, encoder: str, pix_fmt: str, pattern: str) -> str:
    """Version of the library behind an FFmpeg encoder, read from its log when it encodes one frame."""
    cmd = [ffmpeg, "-hide_banner", "-loglevel", "info", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=25",
           "-frames:v", "1", "-pix_fmt", pix_fmt, "-c:v", encoder, "-f", "null", "-"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    m = re.search(pattern, r.stderr)
    return m.group(1) if m else "unknown"


class Codec:
    """Base class. Subclasses set ``name``, ``ext``, ``points`` and build the command lines."""

    name: str = ""  # unique codec name used in results, plots and cache paths
    ext: str = ""  # bitstream file extension
    points: Tuple = ()  # rate points, from the highest to the lowest quality
    decoded_pix_fmt: str = "yuv420p"  # raw decoder output: yuv420p or yuv420p10le ("y4m" for mgv)
    needs_10bit: bool = False  # True when the encoder reads the 10-bit source

    def point_label(self, point) -> str:
        """File-name-safe label of a rate point, e.g. ``crf32``."""
        return str(point)

    def encode_cmd(self, src: Path, out: Path, point, width: int, height: int) -> List[str]:
        raise NotImplementedError

    def decode_cmd(self, bitstream: Path, out: Path) -> List[str]:
        raise NotImplementedError

    def version(self) -> str:
        """Tool version string; part of every cache key, so a new tool recomputes the results."""
        raise NotImplementedError

    def available(self) -> Tuple[bool, str]:
        """(usable, reason when not)."""
        return True, ""

    def env(self) -> Optional[Dict[str, str]]:
        """Environment for the codec's processes (None: inherit this process's)."""
        return None

    def describe(self) -> str:
        return self.name


class FFmpegCodec(Codec):
    """A codec run through FFmpeg: raw elementary stream out, raw planar YUV back."""

    encoder = ""  # FFmpeg encoder name
    muxer = ""  # FFmpeg muxer of the raw elementary stream
    decoder = ""  # FFmpeg decoder the bitstream needs
    rate_option = "-crf"  # -crf or -qp
    version_pattern = r"(unknown)"  # regex with one group on the encoder's info log
    version_pix_fmt = "yuv420p"

    def __init__(self, preset: str = "medium", points: Sequence[int] = CRF_POINTS, ffmpeg: Optional[str] = None):
        self.preset = preset
        self.points = tuple(points)
        self.ffmpeg = ffmpeg or ffmpeg_exe() or "ffmpeg"

    def point_label(self, point) -> str:
        return f"{self.rate_option.lstrip('-')}{point}"

    def extra_args(self) -> List[str]:
        return []

    def encode_cmd(self, src: Path, out: Path, point, width: int, height: int) -> List[str]:
        pix = "yuv420p10le" if self.needs_10bit else "yuv420p"
        return [self.ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-i", str(src),
                "-an", "-c:v", self.encoder, "-preset", self.preset, self.rate_option, str(point),
                *self.extra_args(), "-pix_fmt", pix, "-f", self.muxer, str(out)]

    def decode_cmd(self, bitstream: Path, out: Path) -> List[str]:
        return [self.ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-i", str(bitstream),
                "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", self.decoded_pix_fmt, str(out)]

    def version(self) -> str:
        cap = ffmpeg_capabilities(self.ffmpeg)
        lib = _library_version(self.ffmpeg, self.encoder, self.version_pix_fmt, self.version_pattern)
        return f"{self.encoder} {lib}; {cap['version']}"

    def available(self) -> Tuple[bool, str]:
        try:
            cap = ffmpeg_capabilities(self.ffmpeg)
        except OSError as e:
            return False, f"ffmpeg not runnable: {e}"
        if self.encoder not in cap["encoders"]:
            return False, f"{self.ffmpeg} has no {self.encoder} encoder"
        if self.decoder not in cap["decoders"]:
            return False, f"{self.ffmpeg} has no {self.decoder} decoder"
        return True, ""


class X265(FFmpegCodec):
    """HEVC with x265. ``lowdelay=True``: no B-frames (IPPP…); else x265's default random access GOP."""

    encoder, muxer, decoder, ext = "libx265", "hevc", "hevc", "hevc"
    version_pattern = r"HEVC encoder version (\S+)"

    def __init__(self, preset: str = "medium", lowdelay: bool = False, points: Sequence[int] = CRF_POINTS,
                 ffmpeg: Optional[str] = None):
        super().__init__(preset, points, ffmpeg)
        self.lowdelay = lowdelay
        self.name = f"x265-{preset}-{'ld' if lowdelay else 'ra'}"

    def extra_args(self) -> List[str]:
        params = ["log-level=error", "info=0"]  # info=0: no SEI with the settings string (~2 kB)
        if self.lowdelay:
            params.append("bframes=0")
        return ["-x265-params", ":".join(params)]


class X264(FFmpegCodec):
    """AVC with x264, default GOP (B-frames)."""

    encoder, muxer, decoder, ext = "libx264", "h264", "h264", "h264"
    version_pattern = r"core (\d+(?: r\d+)?)"

    def __init__(self, preset: str = "medium", points: Sequence[int] = CRF_POINTS, ffmpeg: Optional[str] = None):
        super().__init__(preset, points, ffmpeg)
        self.name = f"x264-{preset}"

    def version(self) -> str:
        cap = ffmpeg_capabilities(self.ffmpeg)
        return f"libx264; {cap['version']}"


class VVenC(FFmpegCodec):
    """VVC with Fraunhofer vvenc: 10-bit input (it accepts only yuv420p10le), ``qpa`` off, fixed QP."""

    encoder, muxer, decoder, ext = "libvvenc", "vvc", "vvc", "266"
    rate_option = "-qp"
    decoded_pix_fmt = "yuv420p10le"
    needs_10bit = True
    version_pattern = r"libvvenc version: (\S+)"
    version_pix_fmt = "yuv420p10le"

    def __init__(self, preset: str = "medium", points: Sequence[int] = QP_POINTS, ffmpeg: Optional[str] = None):
        super().__init__(preset, points, ffmpeg)
        self.name = f"vvenc-{preset}"

    def extra_args(self) -> List[str]:
        return ["-qpa", "0"]


class SVTAV1(FFmpegCodec):
    """AV1 with SVT-AV1 (numeric preset, CRF 0..63), default GOP; decoded with libdav1d (optional)."""

    encoder, muxer, decoder, ext = "libsvtav1", "obu", "libdav1d", "obu"
    version_pattern = r"SVT-AV1 Encoder Lib (\S+)"

    def __init__(self, preset: str = "8", points: Sequence[int] = AV1_CRF_POINTS, ffmpeg: Optional[str] = None):
        super().__init__(preset, points, ffmpeg)
        self.name = f"svtav1-p{preset}"

    def decode_cmd(self, bitstream: Path, out: Path) -> List[str]:
        cmd = super().decode_cmd(bitstream, out)
        i = cmd.index("-i")
        return cmd[:i] + ["-c:v", "libdav1d"] + cmd[i:]


def _neuralcodec_code_hash() -> str:
    """sha256 prefix over the neuralcodec package's Python sources (the decoder is code + weights)."""
    spec = importlib.util.find_spec("neuralcodec")
    if spec is None or not spec.submodule_search_locations:
        return "missing"
    root = Path(list(spec.submodule_search_locations)[0])
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        if "train" in f.relative_to(root).parts:
            continue  # training code does not change what encode/decode produce
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


class MGV(Codec):
    """The neural codec through its CLI: ``python -m neuralcodec encode SRC -o OUT.mgv --bits B``.

    Rate points are the number of LFQ bits kept per token (nested: one model, every rate).
    ``entropy``: None uses the CLI's default; "none" or "context" is passed as ``--entropy``.
    ``refine``: encoder refinement steps (``--refine N``; None = the preset's).
    ``preset``: encoder effort (``--preset NAME``; None = the CLI's default preset).
    """

    ext = "mgv"
    decoded_pix_fmt = "y4m"

    def __init__(self, points: Sequence[int] = MGV_BITS, entropy: Optional[str] = None,
                 model: Optional[str] = None, python: Optional[str] = None,
                 refine: Optional[int] = None, preset: Optional[str] = None):
        if entropy not in (None, "none", "context"):
            raise InputError(f"entropy must be none or context, got {entropy!r}")
        self.points = tuple(points)
        self.entropy = entropy
        self.model = model
        self.refine = refine
        self.preset = preset
        self.python = python or sys.executable
        self.name = (("mgv" if entropy is None else f"mgv-{entropy}")
                     + (f"-{preset}" if preset is not None else "")
                     + (f"-refine{refine}" if refine is not None else "")
                     + (f"@{model}" if model else ""))

    def point_label(self, point) -> str:
        return f"bits{point}"

    def _base(self) -> List[str]:
        if importlib.util.find_spec("neuralcodec.__main__") is not None:
            return [self.python, "-m", "neuralcodec"]
        exe = shutil.which("mgv")
        return [exe] if exe else [self.python, "-m", "neuralcodec"]

    def encode_cmd(self, src: Path, out: Path, point, width: int, height: int) -> List[str]:
        cmd = [*self._base(), "encode", str(src), "-o", str(out), "--bits", str(point)]
        if self.entropy is not None:
            cmd += ["--entropy", self.entropy]
        if self.model is not None:
            cmd += ["--model", self.model]
        if self.preset is not None:
            cmd += ["--preset", self.preset]
        if self.refine is not None:
            cmd += ["--refine", str(self.refine)]
        return cmd + ["-y", "-q"]

    def decode_cmd(self, bitstream: Path, out: Path) -> List[str]:
        return [*self._base(), "decode", str(bitstream), "-o", str(out), "-y", "-q"]

    def env(self) -> Optional[Dict[str, str]]:
        """This process's environment with the imported neuralcodec's parent folder on PYTHONPATH,
        so ``python -m neuralcodec`` runs the same (possibly uninstalled) package from any cwd."""
        import os

        spec = importlib.util.find_spec("neuralcodec")
        if spec is None or not spec.submodule_search_locations:
            return None
        root = str(Path(list(spec.submodule_search_locations)[0]).resolve().parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        return env

    def model_sha256(self) -> str:
        """sha256 of the model's weights from the package registry ("none" when not registered)."""
        try:
            from neuralcodec.weights import DEFAULT_MODEL, registry

            entry = registry().get(self.model or DEFAULT_MODEL)
            return entry.sha256 if entry else "none"
        except Exception as e:  # a broken registry must not stop the anchors from running
            return f"error:{type(e).__name__}"

    def version(self) -> str:
        import neuralcodec

        return (f"neuralcodec {neuralcodec.__version__} code {_neuralcodec_code_hash()} "
                f"model {self.model or 'default'} sha256 {self.model_sha256()[:16]}")

    def available(self) -> Tuple[bool, str]:
        if importlib.util.find_spec("neuralcodec.__main__") is None and shutil.which("mgv") is None:
            return False, "neither `python -m neuralcodec` nor an `mgv` executable exists yet"
        if self.model_sha256() in ("none",) or self.model_sha256().startswith("error"):
            return False, "no registered model weights"
        return True, ""


def make_codec(name, quick: bool = False, ffmpeg: Optional[str] = None) -> Codec:
    """Codec from its name: ``mgv``, ``mgv-none``, ``mgv-context`` (each with an optional
    ``-PRESET``, encoder effort: ``mgv-slow``, an optional
    ``-refineN``, encoder refinement steps: ``mgv-refine10``, and an optional
    ``@MODEL``, a registered model other than the default: ``mgv@mgv-s4-v1``),
    ``x265-<preset>-ra|ld``, ``vvenc-<preset>``, ``x264-<preset>``, ``svtav1-p<n>``. ``quick``
    uses 4 rate points instead of 6. A :class:`Codec` instance is returned as is."""
    if isinstance(name, Codec):
        return name
    pts = QUICK_POINTS if quick else None
    from neuralcodec.configs import PRESETS

    m = re.fullmatch(r"mgv(?:-(none|context))?(?:-(" + "|".join(PRESETS) + r"))?(?:-refine(\d+))?"
                     r"(?:@([\w.-]+))?", name)
    if m:
        refine = int(m.group(3)) if m.group(3) is not None else None
        return MGV(entropy=m.group(1), model=m.group(4), refine=refine, preset=m.group(2))
    m = re.fullmatch(r"x265-(\w+)-(ra|ld)", name)
    if m:
        return X265(m.group(1), m.group(2) == "ld", pts or CRF_POINTS, ffmpeg)
    m = re.fullmatch(r"vvenc-(\w+)", name)
    if m:
        return VVenC(m.group(1), pts or QP_POINTS, ffmpeg)
    m = re.fullmatch(r"svtav1-p(\d+)", name)
    if m:
        return SVTAV1(m.group(1), AV1_QUICK_POINTS if quick else AV1_CRF_POINTS, ffmpeg)
    m = re.fullmatch(r"x264-(\w+)", name)
    if m:
        return X264(m.group(1), pts or CRF_POINTS, ffmpeg)
    raise InputError(f"unknown codec {name!r}")


ANCHOR = "x265-medium-ra"  # every BD-rate is against this codec
DEFAULT_CODECS = ("mgv", "x265-medium-ra", "x265-medium-ld", "x265-veryslow-ra", "x265-veryslow-ld",
                  "vvenc-faster", "vvenc-medium", "x264-medium")
QUICK_CODECS = ("mgv", "x265-medium-ra", "x265-medium-ld", "vvenc-faster")
