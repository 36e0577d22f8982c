"""Memory: what this process may still use, what coding a frame size needs, and whether an
exception is an allocation failure (the codec refuses work that cannot fit rather than being
killed halfway; the CLI maps a failed allocation to one line and exit 1), and how freed
memory goes back to the system. Importing it does not import torch (the CLI starts with it)."""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import resource

from .errors import ResourceError


def memory_budget() -> int:
    """Bytes this process may still use: the smallest of MemAvailable (/proc/meminfo), the
    address-space limit (``ulimit -v``) less what is mapped, and ``MGV_MAX_MEMORY`` (bytes,
    or with a K/M/G suffix) when set."""
    limits = []
    env = os.environ.get("MGV_MAX_MEMORY", "").strip().upper()
    if env:
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(env[-1], 1)
        try:
            limits.append(int(float(env.rstrip("KMG")) * mult))
        except ValueError:
            pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/statm") as f:
                mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            limits.append(max(0, soft - mapped))
    except (OSError, ValueError):
        pass
    return min(limits) if limits else 1 << 62


def estimate_bytes(model: torch.nn.Module, width: int, height: int, frames: int,
                   decoder: bool = True) -> int:
    """Rough peak memory of running the decoder (or encoder) on the first frame and then a
    chunk of ``frames`` frames of ``width×height``: activations of every level plus the
    full-resolution RGB tensors, calibrated on the default and tiny configs (within ~25% at
    720p..2048², bf16 halving the activations). Used only to refuse work that cannot fit."""
    import torch

    cfg = model.cfg
    ch = cfg.dec_channels if decoder else cfg.enc_channels
    px = width * height / (cfg.stem_patch ** 2)
    floats = 0.0
    for i, c in enumerate(ch):
        floats += c * px
        if i < len(cfg.spatial_down) and cfg.spatial_down[i]:
            px /= 4
    per_frame = 4 * floats / (width * height)  # bytes per pixel and frame, summed over levels
    try:
        if next(model.parameters()).dtype == torch.bfloat16:
            per_frame /= 2
    except StopIteration:
        pass
    if decoder:
        per_px = 0.85 * (10 * per_frame + frames * (per_frame + 48))
    else:
        per_px = per_frame * max(12, 7 * frames)
    return int(width * height * per_px) + (64 << 20)


def check_memory(need: int, what: str) -> None:
    budget = memory_budget()
    if need > budget:
        raise ResourceError(f"{what} needs about {need / 2**30:.1f} GiB of memory, more than the "
                            f"{budget / 2**30:.1f} GiB available")


def check_decoder_memory(model: torch.nn.Module, header) -> None:
    """Refuse (:class:`ResourceError`) to decode frames of ``header``'s size (an
    :class:`~neuralcodec.container.Header`) when the decoder's estimated peak memory
    (:func:`estimate_bytes` for one decoder chunk) exceeds :func:`memory_budget`: the one
    up-front check of ``mgv decode`` and ``mgv detokenize``."""
    from .chunks import decoder_step

    tf = header.temporal_factor
    check_memory(estimate_bytes(model, header.width, header.height,
                                tf * decoder_step(header.width, header.height, tf)),
                 f"decoding {header.width}x{header.height} frames")


def is_out_of_memory(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate" in msg
                                            or "Cannot allocate memory" in msg)


# Allocations of this many bytes and more get their own mappings (mallopt M_MMAP_THRESHOLD), see
# release_large_blocks; 0 leaves glibc's adaptive threshold. Chosen by decode speed and peak RSS
# of the shipped decoders at 360p and 1080p: docs/performance.md ("Memory allocator").
MMAP_THRESHOLD = 32 << 20


def release_large_blocks(threshold: int | None = None) -> None:
    """Serve allocations of ``threshold`` (default :data:`MMAP_THRESHOLD`) bytes and more with
    their own mappings, so that freeing one returns it to the system: glibc's adaptive threshold
    otherwise moves such blocks onto the heap after the first frees and peak RSS grows by the
    fragmentation. Each such block costs page faults when it is touched, so a threshold far below
    the decoder's activation sizes slows decoding. glibc only; elsewhere a no-op; the
    ``MALLOC_MMAP_THRESHOLD_`` environment variable, when set, wins."""
    threshold = MMAP_THRESHOLD if threshold is None else threshold
    if threshold <= 0:
        return
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if hasattr(libc, "mallopt") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
            libc.mallopt(-3, int(threshold))  # M_MMAP_THRESHOLD
