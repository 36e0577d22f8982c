"""Tests of the context entropy coder (neuralcodec.entropy): lossless round trips, determinism,
compression of correlated bits, and typed errors on damaged payloads."""
import hashlib
import os
import sys

import numpy as np
import pytest

from neuralcodec.entropy import MAX_K, decode_bits, encode_bits
from neuralcodec.errors import PayloadError


def correlated_bits(k=18, t=6, h=12, w=16, flip=0.05, seed=0) -> np.ndarray:
    """Synthetic LFQ-like bits ``K×t×h×w``: frame 0 made of spatial blobs (2×2 upsampled
    noise), then each bit flips from the previous frame with probability ``flip``, mostly
    inside a moving region."""
    rng = np.random.default_rng(seed)
    small = rng.random((k, (h + 1) // 2, (w + 1) // 2)) < 0.5
    f0 = np.repeat(np.repeat(small, 2, axis=1), 2, axis=2)[:, :h, :w]
    frames = [f0]
    yy, xx = np.mgrid[:h, :w]
    for ti in range(1, t):
        moving = (np.abs(yy - h / 2) < h / 4) & (np.abs(xx - (ti * 2) % w) < w / 4)
        p = np.where(moving, 4 * flip, flip / 4)
        frames.append(frames[-1] ^ (rng.random((k, h, w)) < p))
    return np.stack(frames, axis=1).astype(np.uint8)


def roundtrip(bits: np.ndarray) -> bytes:
    data = encode_bits(bits)
    out = decode_bits(data, bits.shape)
    assert out.dtype == np.uint8 and out.shape == bits.shape
    np.testing.assert_array_equal(out, bits)
    return data


@pytest.mark.parametrize("seed", range(3))
def test_roundtrip_random(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in (rng.integers(1, 33), rng.integers(1, 6), rng.integers(1, 20), rng.integers(1, 20)))
    bits = (rng.random(shape) < rng.random()).astype(np.uint8)
    roundtrip(bits)


@pytest.mark.parametrize("value", [0, 1])
def test_roundtrip_constant_compresses(value):
    bits = np.full((18, 5, 16, 16), value, np.uint8)
    data = roundtrip(bits)
    assert len(data) * 8 < bits.size / 20


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 3, 4, 5), (18, 1, 9, 7), (32, 4, 1, 1),
                                   (5, 3, 1, 9), (7, 2, 8, 1), (MAX_K, 2, 3, 3)])
def test_roundtrip_odd_shapes(shape):
    rng = np.random.default_rng(sum(shape))
    roundtrip((rng.random(shape) < 0.5).astype(np.uint8))
    roundtrip(correlated_bits(*shape, seed=1))


def test_accepts_bool_and_noncontiguous():
    bits = correlated_bits(6, 3, 5, 7).astype(bool)
    data = encode_bits(bits)
    assert data == encode_bits(bits.astype(np.uint8))
    view = np.asfortranarray(bits.astype(np.uint8))
    assert encode_bits(view) == data


def test_compresses_correlated_bits():
    bits = correlated_bits(18, 9, 24, 32, flip=0.05)
    data = roundtrip(bits)
    # independent coding of a 5%-ish flip process gives ~0.3 bit/bit after frame 0;
    # we need at least 40% below the raw size
    assert len(data) * 8 < 0.6 * bits.size
    # static content: nearly free after the first frame
    static = np.repeat(bits[:, :1], 9, axis=1)
    assert len(encode_bits(static)) < len(encode_bits(bits[:, :1])) + 16


def test_random_bits_cost_about_raw():
    bits = (np.random.default_rng(5).random((18, 4, 16, 16)) < 0.5).astype(np.uint8)
    data = roundtrip(bits)
    # incompressible input: the cost of learning ~1,000 contexts on a small segment; the
    # container stores such segments in mode "none" instead
    assert len(data) * 8 < 1.15 * bits.size


def test_deterministic_bytes():
    bits = correlated_bits(seed=3)
    first = encode_bits(bits)
    assert all(encode_bits(bits.copy()) == first for _ in range(3))


def test_golden_digest():
    """The format is frozen: a change of these bytes is a bitstream change (bump the spec)."""
    bits = correlated_bits(18, 4, 6, 10, seed=7)
    assert hashlib.sha256(encode_bits(bits)).hexdigest()[:16] == GOLDEN


GOLDEN = "61126465608bdc85"


def test_encode_rejects_bad_arrays():
    with pytest.raises(ValueError):
        encode_bits(np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(ValueError):
        encode_bits(np.full((2, 1, 2, 2), 2, np.uint8))
    with pytest.raises(ValueError):
        encode_bits(np.zeros((MAX_K + 1, 1, 2, 2), np.uint8))
    with pytest.raises(ValueError):
        encode_bits(np.zeros((3, 0, 2, 2), np.uint8))


@pytest.mark.parametrize("shape", [(0, 1, 1, 1), (33, 1, 1, 1), (1, 0, 1, 1), (1, 1, -1, 1),
                                   (18, 1 << 20, 1 << 10, 1 << 10), (1, 2, 3), ("a", 1, 1, 1)])
def test_decode_rejects_bad_shapes(shape):
    with pytest.raises(PayloadError):
        decode_bits(b"\0\0\0\0", shape)


def test_truncated_payloads():
    bits = correlated_bits(seed=11)
    data = encode_bits(bits)
    for n in [0, 1, 3, 5, len(data) - 1]:
        with pytest.raises(PayloadError):
            decode_bits(data[:n], bits.shape)
    # whole words missing: decodes to garbage or fails its end check, never another error
    for n in range(4, len(data), 4):
        try:
            out = decode_bits(data[:n], bits.shape)
        except PayloadError:
            continue
        assert out.shape == bits.shape


def test_random_corruptions_give_payload_error_or_array():
    rng = np.random.default_rng(0)
    bits = correlated_bits(6, 4, 8, 9, seed=2)
    data = bytearray(encode_bits(bits))
    failures = 0
    for _ in range(300):
        bad = bytearray(data)
        kind = rng.integers(3)
        if kind == 0:
            bad[rng.integers(len(bad))] ^= 1 << int(rng.integers(8))
        elif kind == 1:
            i = int(rng.integers(len(bad)))
            bad[i:i + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        else:
            bad = bytearray(rng.integers(0, 256, len(bad) + 4 * int(rng.integers(-2, 3)), dtype=np.uint8).tobytes())
        try:
            out = decode_bits(bytes(bad), bits.shape)
        except PayloadError:
            failures += 1
            continue
        assert out.shape == bits.shape and out.dtype == np.uint8
        assert set(np.unique(out)) <= {0, 1}
    # the 16-bit end check catches nearly every corruption
    assert failures > 250


def test_wrong_shape_usually_fails():
    bits = correlated_bits(seed=4)
    data = encode_bits(bits)
    k, t, h, w = bits.shape
    for shape in [(k, t + 1, h, w), (k + 1, t, h, w), (k, t, h, w + 3)]:
        with pytest.raises(PayloadError):
            decode_bits(data, shape)


# ---- the spec's coder, implemented a second time without constriction (tests/ref_mode1.py) ----
sys.path.insert(0, os.path.dirname(__file__))
import ref_mode1  # noqa: E402


def golden_vector_1() -> np.ndarray:
    """bitstream_spec.md §7, golden vector 1 (the input is defined by a formula)."""
    k, t, y, x = np.meshgrid(*(np.arange(n) for n in (4, 3, 6, 8)), indexing="ij")
    return (((k + 3 * y + 5 * x) % 7 < 3) ^ ((t >= 1) & (k == 0) & ((x + 2 * y + t) % 5 == 0))
            ).astype(np.uint8)


GOLDEN_1 = bytes.fromhex("e0c178e008c280714c9fb601cc54653553279993c34d8945395e25898bd3699a"
                         "43f20907ae3af9a71f3c8bee301596ca00a47b00")


def test_golden_vector_1_from_the_spec():
    bits = golden_vector_1()
    assert encode_bits(bits) == GOLDEN_1
    assert hashlib.sha256(GOLDEN_1).hexdigest().startswith("6b3e88f9a6f6f213")
    np.testing.assert_array_equal(np.array(ref_mode1.decode(GOLDEN_1, 4, 3, 6, 8), np.uint8), bits)


def reference_agrees(bits: np.ndarray) -> None:
    """The dependency-free decoder decodes the library's payload to the same bits, and the
    spec's encoder re-codes the symbols it saw to the library's exact bytes."""
    data = encode_bits(bits)
    trace = []
    out = np.array(ref_mode1.decode(data, *bits.shape, trace=trace), np.uint8)
    np.testing.assert_array_equal(out, bits)
    assert ref_mode1.encode_symbols(trace) == data
    np.testing.assert_array_equal(decode_bits(data, bits.shape), out)


@pytest.mark.parametrize("seed", range(12))
def test_reference_decoder_agrees_random_shapes(seed):
    rng = np.random.default_rng(100 + seed)
    shape = tuple(int(v) for v in (rng.integers(1, 33), rng.integers(1, 6), rng.integers(1, 20),
                                   rng.integers(1, 20)))
    if seed % 3 == 0:
        bits = (rng.random(shape) < rng.random()).astype(np.uint8)
    else:
        bits = correlated_bits(*shape, flip=0.02 * seed, seed=seed)
    reference_agrees(bits)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 3, 4, 5), (18, 1, 9, 7), (32, 4, 1, 1),
                                   (5, 3, 1, 9), (7, 2, 8, 1), (MAX_K, 2, 3, 3), (18, 4, 6, 10),
                                   (3, 3, 40, 37)])
def test_reference_decoder_agrees_test_shapes(shape):
    reference_agrees(correlated_bits(*shape, seed=7))
    reference_agrees(np.ones(shape, np.uint8))


def test_reference_decoder_agrees_on_a_real_segment():
    """A full-size segment (18×13×45×80, 842k bits) of LFQ-like bits."""
    reference_agrees(correlated_bits(18, 13, 45, 80, seed=1))


def test_reference_decoder_rejects_what_the_library_rejects():
    bits = correlated_bits(6, 4, 8, 9, seed=2)
    data = bytearray(encode_bits(bits))
    rng = np.random.default_rng(1)
    for _ in range(60):
        bad = bytearray(data)
        bad[rng.integers(len(bad))] ^= 1 << int(rng.integers(8))
        try:
            lib = decode_bits(bytes(bad), bits.shape)
        except PayloadError:
            lib = None
        try:
            ref = np.array(ref_mode1.decode(bytes(bad), *bits.shape), np.uint8)
        except ref_mode1.RefError:
            ref = None
        assert (lib is None) == (ref is None)
        if lib is not None:
            np.testing.assert_array_equal(lib, ref)
