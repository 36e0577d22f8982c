"""What ``lab/gpu_train.py`` and ``lab/gpu_checks.py`` share: the limits of a borrowed GPU
machine, the size of what travels to it, the files that come back, and the small process and
file helpers of the remote side.

The machine (see docs/training.md, "Training on a GPU"): one H200, lent without notice for at most
30 minutes of device time counted from its start; a command runs at most 10 minutes in the
repository root; the working tree (tracked + untracked-not-ignored files) plus the carried
(gitignored) folders travel, at most 64 MiB; at most 8 files of at most 16 MiB come back from
``$OUT``, no deeper than ``$OUT/a/b/file``; only processes started in a new session
(``setsid``) outlive a command; torch, triton, OpenCV, safetensors, numpy and matplotlib are
installed, PyAV and constriction are not, and no package registry can be reached.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]

CARRY_LIMIT = 64 * 2 ** 20  # bytes that may travel: working tree + carried folders
OUT_MAX_FILES = 8  # files that come back from $OUT
OUT_MAX_BYTES = 16 * 2 ** 20  # largest file that comes back
PIECE_BYTES = 15 * 2 ** 20  # weights are split into pieces of at most this size
COMMAND_LIMIT_S = 600  # one command's limit on the machine
_OUT_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


class ToolError(Exception):
    """A problem reported as one line on stderr with exit status 1 (no traceback)."""


def run_main(prog: str, fn: Callable[[], int]) -> None:
    """Run ``fn`` → exit with its status; ToolError, the package's errors and OSError become
    ``prog: error: message`` on stderr (status 1), Ctrl-C status 130."""
    from neuralcodec.errors import MGVError

    try:
        sys.exit(fn() or 0)
    except (ToolError, MGVError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"{prog}: error: {msg}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)


# ---- what travels ---------------------------------------------------------------------------
def tree_files(root: Path = ROOT) -> List[Path]:
    """Files that travel with every device call: in a git checkout the tracked and the
    untracked-not-ignored ones, elsewhere every file below ``root``."""
    if not (Path(root) / ".git").exists():
        return sorted(p for p in Path(root).rglob("*") if p.is_file() or p.is_symlink())
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise ToolError(f"cannot list the working tree with git: {e}") from None
    names = sorted({n for n in out.decode("utf-8", "replace").split("\0") if n})
    return [root / n for n in names if (root / n).is_file() or (root / n).is_symlink()]


def path_bytes(path: Path) -> int:
    """Bytes of a file, or of every file below a folder (links count as links)."""
    path = Path(path)
    if not path.exists():
        return 0
    if path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())


def check_carry(carry: Sequence[Path], limit: int = CARRY_LIMIT, root: Path = ROOT) -> Dict[str, int]:
    """Working tree + ``carry`` against ``limit`` → {"tree": bytes, "carry": bytes, "total": …,
    "limit": …}; ToolError when over."""
    tree = sum(path_bytes(p) for p in tree_files(root))
    extra = sum(path_bytes(Path(c)) for c in carry)
    sizes = {"tree": tree, "carry": extra, "total": tree + extra, "limit": limit}
    if tree + extra > limit:
        raise ToolError(f"{mib(tree + extra)} would travel (working tree {mib(tree)} + staged "
                        f"{mib(extra)}), over the {mib(limit)} a device call carries; stage less "
                        f"(a smaller --short-side or a higher --crf)")
    return sizes


def mib(n: float) -> str:
    return f"{n / 2 ** 20:.1f} MiB"


# ---- what comes back ------------------------------------------------------------------------
def out_dir(arg: Optional[str]) -> Path:
    """The folder whose files come back: ``arg``, else ``$OUT`` (ToolError when neither)."""
    p = arg or os.environ.get("OUT")
    if not p:
        raise ToolError("no output folder: set $OUT (the device machine does) or pass --out")
    p = Path(p)
    p.mkdir(parents=True, exist_ok=True)
    return p


def check_out(out: Path) -> List[Path]:
    """The files under ``out`` → ToolError if they would not all come back (count, size,
    depth, names)."""
    files = sorted(p for p in Path(out).rglob("*") if p.is_file())
    problems = []
    if len(files) > OUT_MAX_FILES:
        problems.append(f"{len(files)} files (at most {OUT_MAX_FILES} come back)")
    for p in files:
        rel = p.relative_to(out)
        if p.stat().st_size > OUT_MAX_BYTES:
            problems.append(f"{rel} is {mib(p.stat().st_size)} (at most {mib(OUT_MAX_BYTES)})")
        if len(rel.parts) > 3 or not all(_OUT_NAME.match(s) for s in rel.parts):
            problems.append(f"{rel}: too deep or an odd name")
    if problems:
        raise ToolError(f"{out}: " + "; ".join(problems))
    return files


def split_file(path: Path, out: Path, piece_bytes: int = PIECE_BYTES) -> List[dict]:
    """Split ``path`` into ``out/NAME.partK`` files of at most ``piece_bytes`` →
    [{"file", "size", "sha256"}, …] in order."""
    import hashlib

    pieces = []
    with open(path, "rb") as f:
        k = 0
        while True:
            block = f.read(piece_bytes)
            if not block and k:
                break
            name = f"{Path(path).name}.part{k}"
            (Path(out) / name).write_bytes(block)
            pieces.append({"file": name, "size": len(block), "sha256": hashlib.sha256(block).hexdigest()})
            k += 1
            if len(block) < piece_bytes:
                break
    return pieces


def join_pieces(folder: Path, pieces: Sequence[dict], dest: Path, sha256: str, size: int) -> Path:
    """Reassemble ``pieces`` (from :func:`split_file`) found in ``folder`` into ``dest``,
    checking each piece's and the whole file's size and sha256 → ``dest``; ToolError on any
    missing or damaged piece."""
    import hashlib

    whole = hashlib.sha256()
    n = 0
    with open(dest, "wb") as fo:
        for p in pieces:
            src = Path(folder) / str(p["file"])
            if not src.is_file():
                raise ToolError(f"piece {p['file']} is missing from {folder}")
            data = src.read_bytes()
            got = hashlib.sha256(data).hexdigest()
            if len(data) != p["size"] or got != p["sha256"]:
                raise ToolError(f"piece {p['file']}: sha256 mismatch (expected {p['sha256'][:16]}…, "
                                f"got {got[:16]}…, {len(data)} of {p['size']} bytes)")
            whole.update(data)
            n += len(data)
            fo.write(data)
    if n != size or whole.hexdigest() != sha256:
        raise ToolError(f"reassembled {dest.name}: sha256 mismatch (expected {sha256[:16]}…, "
                        f"got {whole.hexdigest()[:16]}…)")
    return dest


# ---- remote side ----------------------------------------------------------------------------
def hardware() -> str:
    """One line naming the accelerator (nvidia-smi) or, without one, the CPU."""
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        if r.returncode == 0 and r.stdout.strip():
            return "GPU " + r.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    import platform
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def gpu_load() -> str:
    """'GPU 61.2/139.8 GiB, 98%' from nvidia-smi, or '' without one."""
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=memory.used,memory.total,utilization.gpu",
                            "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
        used, total, util = (float(v) for v in r.stdout.strip().splitlines()[0].split(","))
        return f"GPU {used / 1024:.1f}/{total / 1024:.1f} GiB, {util:.0f}%"
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return ""


def launch_detached(cmd: Sequence[str], log: Path, exit_file: Path, env: Dict[str, str]) -> int:
    """Start ``cmd`` in a new session (it outlives the device command), stdout and stderr
    appended to ``log``; its exit status is written to ``exit_file`` when it ends → the
    process group id (for :func:`stop_group`)."""
    exit_file.unlink(missing_ok=True)
    script = 'trap "" HUP; "$@"; echo $? > "$NEURALCODEC_EXIT_FILE"'
    with open(log, "ab") as fo:
        p = subprocess.Popen(["sh", "-c", script, "sh", *cmd], stdout=fo, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, cwd=str(ROOT), start_new_session=True,
                             env={**env, "NEURALCODEC_EXIT_FILE": str(exit_file)})
    return p.pid


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop_group(pgid: int, wait_s: float = 60.0) -> None:
    """SIGINT the process group ``pgid``, SIGKILL it if it is still there after ``wait_s``."""
    import time

    for sig, wait in ((signal.SIGINT, wait_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        end = time.time() + wait
        while time.time() < end and group_alive(pgid):
            time.sleep(0.5)
        if not group_alive(pgid):
            return


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ToolError(f"{path}: no {what} (not staged or not started?)") from None
    except (OSError, ValueError) as e:
        raise ToolError(f"{path}: unreadable {what}: {e}") from None


def copy_into(out: Path, *files: Path) -> None:
    """Copy the ``files`` that exist into ``out``."""
    for f in files:
        if Path(f).is_file():
            shutil.copyfile(f, Path(out) / Path(f).name)
