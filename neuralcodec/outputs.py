"""Atomic outputs: a file (or a numbered set of files) appears complete or not at all.

Outputs are written to a temporary name beside the target and renamed into place on success,
so a failed or interrupted command (Ctrl-C, SIGTERM/SIGHUP/SIGQUIT, a full disk) leaves no
partial file; without ``force`` a target is created exclusively, so no output is ever silently
replaced.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator, List

from .errors import OutputError
from .video_out import pattern_names


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def _place(tmp: str, target: Path, force: bool) -> None:
    """Move the finished ``tmp`` to ``target``: replace it with ``force``; otherwise create it
    exclusively (a hard link fails if the target appeared meanwhile, e.g. a second command
    writing the same new file), so no output is ever silently lost."""
    if force:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise OutputError(f"{target} exists (use -y to overwrite)") from None
    except OSError:  # no hard links here: claim the name exclusively, then replace it
        try:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            raise OutputError(f"{target} exists (use -y to overwrite)") from None
        os.replace(tmp, target)
        return
    os.unlink(tmp)


def _name_target(e: BaseException, tmp: str, target) -> BaseException:
    """An error that names the hidden temporary file names the target instead."""
    if isinstance(e, OutputError) and tmp in str(e):
        return OutputError(str(e).replace(tmp, str(target)))
    if isinstance(e, OSError) and e.filename is not None and str(e.filename).startswith(tmp):
        e.filename = str(target)
    return e


def _special(target: Path) -> bool:
    """An existing target that is not a regular file or directory (a device node, a FIFO, a
    socket): written in place, never replaced by a rename."""
    try:
        mode = os.stat(target).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


@contextlib.contextmanager
def atomic_output(target: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` (``.NAME.XXXXXX.part``); on success it is
    renamed to ``target`` (created exclusively without ``force``), on any failure (Ctrl-C,
    SIGTERM/SIGHUP/SIGQUIT, disk full) it is deleted. An existing device node or FIFO is
    written in place (with ``force``), never replaced."""
    target = Path(target)
    if os.path.lexists(target) and not force:
        raise OutputError(f"{target} exists (use -y to overwrite)")
    if target.is_dir():
        raise OutputError(f"{target} is a directory")
    if _special(target):
        yield target
        return
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{parent}: output directory does not exist")
    # hidden, and ending in ".part" (not the target's extension), so a leftover of a killed
    # process (SIGKILL runs no cleanup) is never taken for an output
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        _place(tmp, target, force)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        err = _name_target(e, tmp, target)
        if err is not e:
            raise err from None
        raise


@contextlib.contextmanager
def atomic_pattern(pattern: str, count: int, force: bool) -> Iterator[str]:
    """Like :func:`atomic_output` for a ``%05d.png`` pattern: frames are written into a
    temporary directory beside the targets and moved into place on success; if moving fails
    midway, the frames already moved are removed again (all or nothing)."""
    parent = Path(pattern).parent if str(Path(pattern).parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{parent}: output directory does not exist")
    names = pattern_names(pattern, count)
    if not force:
        for n in names:
            if os.path.lexists(n):
                raise OutputError(f"{n} exists (use -y to overwrite)")
    tmpdir = tempfile.mkdtemp(dir=parent, prefix=".mgv-frames.", suffix=".part")
    moved: List[str] = []
    try:
        inner = os.path.join(tmpdir, Path(pattern).name)
        try:
            yield inner
        except BaseException as e:
            err = _name_target(e, tmpdir, parent)
            if err is not e:
                raise err from None
            raise
        written = pattern_names(inner, count)
        try:
            for src, dst in zip(written, names):
                if os.path.isdir(dst):
                    raise OutputError(f"{dst} is a directory")
                os.chmod(src, 0o666 & ~_umask())
                _place(src, Path(dst), force)
                moved.append(dst)
        except BaseException:
            for dst in moved:
                with contextlib.suppress(OSError):
                    os.unlink(dst)
            raise
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
