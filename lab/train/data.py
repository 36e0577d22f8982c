"""Training data: random crops of a folder of videos (and still images).

Videos are decoded once with PyAV (to RGB, area-downscaled so the short side is at most
``max_short_side``; with OpenCV where PyAV is not installed, as on a bare GPU machine) and cached as ``.npy`` files (uint8, T×H×W×3) in a cache folder; the first
decode of a folder runs in a process pool. Still images (any format PyAV reads: PNG, JPEG,
WebP, …) are cached the same way as 1-frame videos. Batches are random crops of ``1 + 4k``
consecutive frames, or single frames for image (first-frame) mode, with random horizontal flips.

Two samplers share the cropping code:

* :class:`ClipSampler` — in the training process, one sequential seeded generator whose state
  is checkpointed (the default, for small data held in RAM);
* :class:`BatchStream` — an :class:`torch.utils.data.IterableDataset` for a
  :class:`torch.utils.data.DataLoader` with worker processes. Batch ``i`` is a pure function
  of ``(seed, i, rank)``: worker ``w`` of ``n`` makes batches ``i ≡ w (mod n)`` and the loader
  returns them in order, so a run resumed at step ``i`` sees exactly the batches it would have
  seen, whatever the number of workers. The video arrays are memory-mapped, so workers share
  the page cache instead of copying the data.

Batch layout everywhere: ``B×3×T×H×W`` float in [-1, 1] (RGB).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from neuralcodec.errors import InputError
from neuralcodec.video_io import VIDEO_EXTS, read_rgb, scaled_size  # noqa: F401 (VIDEO_EXTS: the lab's name for it)

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}


def decode_video_rgb(path: Path, max_short_side: int, max_frames: int = 100000) -> np.ndarray:
    """Decode ``path`` → uint8 array ``T×H×W×3`` (RGB), area-downscaled so that
    min(H, W) <= max_short_side (even sizes). Uses PyAV (:func:`neuralcodec.video_io.read_rgb`);
    where PyAV is not installed, OpenCV (:func:`decode_video_rgb_cv2`)."""
    try:
        import av  # noqa: F401 - only to know whether PyAV is there
    except ImportError:
        return decode_video_rgb_cv2(path, max_short_side, max_frames)
    return read_rgb(path, max_short_side, max_frames)


def decode_video_rgb_cv2(path: Path, max_short_side: int, max_frames: int = 100000) -> np.ndarray:
    """:func:`decode_video_rgb` with OpenCV (``cv2.VideoCapture``, its bundled FFmpeg; area
    downscale ``cv2.INTER_AREA``) → uint8 ``T×H×W×3`` RGB. For machines without PyAV (a bare
    GPU machine has opencv-python-headless); its YUV→RGB conversion may differ from PyAV's
    by a code value or two."""
    try:
        import cv2
    except ImportError:
        raise InputError(f"{path}: cannot decode: neither PyAV nor OpenCV is installed") from None
    cap = cv2.VideoCapture(str(path))
    frames = []
    try:
        if not cap.isOpened():
            raise InputError(f"{path}: cannot open with OpenCV")
        while len(frames) < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            h, w = bgr.shape[:2]
            tw, th = scaled_size(w, h, max_short_side)
            if (tw, th) != (w, h):
                bgr = cv2.resize(bgr, (tw, th), interpolation=cv2.INTER_AREA)
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    if not frames:
        raise InputError(f"{path}: no frames")
    return np.stack(frames)


def _crop_batch(rng: np.random.Generator, arrays: Sequence[np.ndarray], weights: np.ndarray,
                batch: int, frames: int, size: int, flip: bool = True) -> torch.Tensor:
    """``batch`` random crops of ``frames`` consecutive frames and ``size``² pixels from
    ``arrays`` (uint8 ``T×H×W×3``, picked with probabilities ``weights``), each flipped
    horizontally with probability 1/2 → ``batch×3×frames×size×size`` float in [-1, 1]."""
    ok = np.array([a.shape[0] >= frames and a.shape[1] >= size and a.shape[2] >= size for a in arrays])
    if not ok.any():
        raise InputError(f"no video or image has {frames} frames of at least {size}×{size} pixels")
    out = np.empty((batch, frames, size, size, 3), dtype=np.uint8)
    for b in range(batch):
        while True:
            v = arrays[rng.choice(len(arrays), p=weights)]
            t, h, w, _ = v.shape
            if t >= frames and h >= size and w >= size:
                break
        t0 = rng.integers(0, t - frames + 1)
        y0 = rng.integers(0, h - size + 1)
        x0 = rng.integers(0, w - size + 1)
        clip = v[t0:t0 + frames, y0:y0 + size, x0:x0 + size]
        if flip and rng.random() < 0.5:
            clip = clip[:, :, ::-1]
        out[b] = clip
    x = torch.from_numpy(out).permute(0, 4, 1, 2, 3).float()
    return x / 127.5 - 1.0


def _pixel_weights(arrays: Sequence[np.ndarray], frame_cap: int = 0) -> np.ndarray:
    """Per-array sampling weights for video crops: proportional to T·H·W, with T counted as at
    most ``frame_cap`` frames when ``frame_cap`` > 0 (so a few long clips do not drown the rest)."""
    w = np.array([(min(a.shape[0], frame_cap) if frame_cap > 0 else a.shape[0]) * a.shape[1] * a.shape[2]
                  for a in arrays], dtype=np.float64)
    return w / w.sum()


def _image_weights(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Per-array sampling weights for single frames: proportional to H·W (not to T), so a
    long video does not drown the stills."""
    w = np.array([a.shape[1] * a.shape[2] for a in arrays], dtype=np.float64)
    return w / w.sum()


@dataclass
class ClipSampler:
    """Random crops from a list of videos (uint8 ``T×H×W×3`` arrays), one seeded generator.

    ``stills`` (uint8 ``1×H×W×3`` arrays) are used by :meth:`sample_images` with probability
    ``still_frac``; without stills the generator draws exactly as it always did (checkpointed
    states of older runs resume the same stream)."""

    videos: List[np.ndarray]
    seed: int = 0
    # still images for the first-frame mode (1×H×W×3 uint8 each)
    stills: List[np.ndarray] = field(default_factory=list)
    # probability that an image batch is drawn from the stills (when there are any)
    still_frac: float = 0.5
    # a video's sampling weight counts at most this many frames (0 = all of them)
    clip_frames: int = 0

    def __post_init__(self) -> None:
        if not self.videos:
            raise InputError("no videos to sample from")
        self.rng = np.random.default_rng(self.seed)
        self.weights = _pixel_weights(self.videos, self.clip_frames)
        self.still_weights = _image_weights(self.stills) if self.stills else None

    def sample(self, batch: int, frames: int, size: int) -> torch.Tensor:
        """→ ``batch×3×frames×size×size`` float in [-1, 1]."""
        return _crop_batch(self.rng, self.videos, self.weights, batch, frames, size)

    def sample_images(self, batch: int, size: int) -> torch.Tensor:
        """Image (first-frame) batch → ``batch×3×1×size×size`` float in [-1, 1]: from the
        stills with probability ``still_frac``, else single video frames."""
        if self.stills and self.rng.random() < self.still_frac:
            return _crop_batch(self.rng, self.stills, self.still_weights, batch, 1, size)
        return self.sample(batch, 1, size)


@dataclass(frozen=True)
class BatchSpec:
    """What a training batch looks like (``TrainConfig.batches``; each field is a flag of
    ``lab/train/__main__.py``); shared by the in-process and worker samplers."""

    # clips per video batch
    batch: int = 8
    # frames per video clip (1 + 4k)
    frames: int = 9
    # crop size of video clips (pixels)
    crop: int = 64
    # fraction of steps that are image (single-frame) batches
    image_frac: float = 0.3
    # images per image batch
    image_batch: int = 16
    # crop size of image batches (pixels)
    image_crop: int = 96
    # rate points trained as nested codes (kept leading bits); empty = always all bits
    nested_bits: Tuple[int, ...] = (2, 4, 6, 10, 14)
    # probability that a step keeps only the first b bits, b drawn from nested_bits
    nested_prob: float = 0.4
    # probability that an image batch comes from the stills (when there are any)
    still_frac: float = 0.5
    # a video's sampling weight (∝ frames·H·W) counts at most this many frames; 0 = all frames.
    # Caps the share of long clips (two static surveillance clips are 45% of train/'s frames)
    clip_frames: int = 0


def step_plan(spec: BatchSpec, seed: int, step: int) -> Tuple[bool, Optional[int]]:
    """The rank-independent part of batch ``step``: (is an image batch, kept bits or None).
    All DDP ranks agree on it, so their batches have the same shape and rate."""
    rng = np.random.default_rng([seed, step, 0])
    image = bool(rng.random() < spec.image_frac)
    bits = None
    if spec.nested_bits and rng.random() < spec.nested_prob:
        bits = int(rng.choice(spec.nested_bits))
    return image, bits


def make_batch(spec: BatchSpec, videos: Sequence[np.ndarray], stills: Sequence[np.ndarray],
               seed: int, step: int, rank: int = 0) -> dict:
    """Batch number ``step`` of rank ``rank`` (a pure function of its arguments) →
    ``{"x": B×3×T×H×W float in [-1, 1], "bits": int (-1 = all bits), "step": int}``."""
    image, bits = step_plan(spec, seed, step)
    rng = np.random.default_rng([seed, step, 1, rank])
    if image:
        if stills and rng.random() < spec.still_frac:
            x = _crop_batch(rng, stills, _image_weights(stills), spec.image_batch, 1, spec.image_crop)
        else:
            x = _crop_batch(rng, videos, _pixel_weights(videos, spec.clip_frames), spec.image_batch, 1, spec.image_crop)
    else:
        x = _crop_batch(rng, videos, _pixel_weights(videos, spec.clip_frames), spec.batch, spec.frames, spec.crop)
    return {"x": x, "bits": -1 if bits is None else bits, "step": step}


class BatchStream(torch.utils.data.IterableDataset):
    """Endless stream of training batches from step ``start`` on (see the module docstring).

    Use with ``DataLoader(stream, batch_size=None, num_workers=n)``; worker ``w`` of ``n``
    makes batches ``start + w, start + w + n, …`` and the loader yields them in step order."""

    def __init__(self, spec: BatchSpec, videos: Sequence[np.ndarray],
                 stills: Sequence[np.ndarray] = (), seed: int = 0, rank: int = 0,
                 start: int = 0) -> None:
        super().__init__()
        if not videos:
            raise InputError("no videos to sample from")
        self.spec, self.videos, self.stills = spec, list(videos), list(stills)
        self.seed, self.rank, self.start = seed, rank, start

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        step = self.start + wid
        while True:
            yield make_batch(self.spec, self.videos, self.stills, self.seed, step, self.rank)
            step += nw


def make_loader(stream: BatchStream, workers: int, prefetch: int = 4) -> torch.utils.data.DataLoader:
    """A DataLoader over ``stream`` with ``workers`` processes (0 = in this process)."""
    kw = {}
    if workers > 0:
        kw = {"prefetch_factor": prefetch, "persistent_workers": True}
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, **kw)


def _cache_file(p: Path, cache: Path, max_short_side: int) -> Path:
    st = p.stat()
    key = hashlib.sha1(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}|{max_short_side}".encode()).hexdigest()[:16]
    return cache / f"{p.stem}-{key}.npy"


def _decode_to_cache(args) -> str:
    p, f, max_short_side, image = args
    arr = decode_video_rgb(p, max_short_side, max_frames=1 if image else 100000)
    tmp = f.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, arr, allow_pickle=False)
    os.replace(tmp, f)
    return str(f)


def _load_cached(files: List[Tuple[Path, bool]], cache: Path, max_short_side: int,
                 mmap: bool, procs: int) -> List[np.ndarray]:
    cache.mkdir(parents=True, exist_ok=True)
    jobs = [(p, _cache_file(p, cache, max_short_side), max_short_side, image) for p, image in files]
    todo = [j for j in jobs if not j[1].exists()]
    if todo:
        if procs > 1 and len(todo) > 1:
            with ProcessPoolExecutor(min(procs, len(todo))) as ex:
                list(ex.map(_decode_to_cache, todo))
        else:
            for j in todo:
                _decode_to_cache(j)
    return [np.load(j[1], mmap_mode="r" if mmap else None, allow_pickle=False) for j in jobs]


def load_folder(folder: Path, cache: Path, max_short_side: int = 360, mmap: bool = False,
                procs: int = 1) -> List[np.ndarray]:
    """Decode every video in ``folder`` (cached in ``cache``; ``procs`` > 1 decodes in a
    process pool) → list of uint8 ``T×H×W×3`` arrays (memory-mapped with ``mmap``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    files = [(p, False) for p in sorted(folder.iterdir()) if p.suffix.lower() in VIDEO_EXTS]
    if not files:
        raise InputError(f"no videos in {folder}")
    return _load_cached(files, Path(cache), max_short_side, mmap, procs)


def load_images(folder: Path, cache: Path, max_short_side: int = 360, mmap: bool = False,
                procs: int = 1, min_size: int = 0) -> List[np.ndarray]:
    """Decode every still image in ``folder`` (recursively; any format PyAV reads) →
    list of uint8 ``1×H×W×3`` arrays. Images with a side below ``min_size`` are skipped
    with a warning."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    files = [(p, True) for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_EXTS and p.is_file()]
    if not files:
        raise InputError(f"no images in {folder}")
    arrs = _load_cached(files, Path(cache), max_short_side, mmap, procs)
    keep = [a for a in arrs if min(a.shape[1], a.shape[2]) >= min_size]
    if len(keep) < len(arrs):
        warnings.warn(f"{len(arrs) - len(keep)} images smaller than {min_size} px skipped")
    if not keep:
        raise InputError(f"no image in {folder} has both sides >= {min_size}")
    return keep
