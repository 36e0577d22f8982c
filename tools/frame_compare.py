#!/usr/bin/env python3
"""Write one frame of a source video and of its decoded version side by side as a PNG.

    python -m tools.frame_compare ../shared/data/eval/foreman_cif.264 foreman.mkv --frame 100 -o docs/foreman_frame100.png

Both videos are decoded to 8-bit RGB; the frame index counts from 0 in decode order.
"""
import argparse
import sys
from pathlib import Path

import av
import numpy as np


def frame_rgb(path: Path, index: int) -> np.ndarray:
    """Frame ``index`` of ``path`` → H×W×3 uint8 RGB."""
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i == index:
                return f.to_ndarray(format="rgb24")
    raise SystemExit(f"error: {path} has no frame {index}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path)
    ap.add_argument("decoded", type=Path)
    ap.add_argument("--frame", type=int, default=0)
    ap.add_argument("--gap", type=int, default=8, help="white pixels between the two frames")
    ap.add_argument("-o", "--output", type=Path, required=True)
    a = ap.parse_args()
    src, dec = frame_rgb(a.source, a.frame), frame_rgb(a.decoded, a.frame)
    if src.shape != dec.shape:
        sys.exit(f"error: frame sizes differ: {src.shape} vs {dec.shape}")
    gap = np.full((src.shape[0], a.gap, 3), 255, np.uint8)
    img = np.concatenate([src, gap, dec], axis=1)
    img = img[: img.shape[0] // 2 * 2, : img.shape[1] // 2 * 2]
    with av.open(str(a.output), "w", format="image2") as c:
        s = c.add_stream("png")
        s.width, s.height, s.pix_fmt = img.shape[1], img.shape[0], "rgb24"
        for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    print(f"wrote {a.output} ({img.shape[1]}x{img.shape[0]})")


if __name__ == "__main__":
    main()
