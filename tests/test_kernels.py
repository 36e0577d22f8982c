"""LFQ pack/unpack/index kernels: Triton (interpreter on CPU, TRITON_INTERPRET=1 from conftest)
bit-exact against the PyTorch reference, golden bytes of the payload layout, round trips,
non-contiguous inputs, special values, validation and dispatch."""
import pytest
import torch

from neuralcodec import kernels
from neuralcodec.kernels import (pack_bits, packed_size, select_backend, token_indices,
                                 triton_available, unpack_bits)
from neuralcodec.quantizer import codes_to_indices, sign_quantize

needs_triton = pytest.mark.skipif(not triton_available("cpu"),
                                  reason="triton interpreter unavailable (TRITON_INTERPRET unset)")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture
def small_blocks(monkeypatch):
    """Tiny tiles so that small tensors span several programs with ragged last blocks."""
    monkeypatch.setattr(kernels, "_PACK_BLOCK", 32)
    monkeypatch.setattr(kernels, "_UNPACK_BLOCK", 16)
    monkeypatch.setattr(kernels, "_INDEX_BLOCK", 16)


def latents(shape, dtype=torch.float32, seed=0, zero_frac=0.2):
    """Random latents with exact zeros and negative zeros mixed in."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g)
    r = torch.rand(shape, generator=g)
    z[r < zero_frac / 2] = 0.0
    z[(r >= zero_frac / 2) & (r < zero_frac)] = -0.0
    return z.to(dtype)


def check_all(z, dtype=torch.float32):
    """Triton == reference for pack, unpack and indices; round trip == sign(z)."""
    ref = pack_bits(z, backend="torch")
    tri = pack_bits(z, backend="triton")
    assert tri.dtype == torch.uint8 and tri.dim() == 1
    assert tri.numel() == packed_size(tuple(z.shape))
    assert torch.equal(tri, ref)
    codes_ref = unpack_bits(ref, tuple(z.shape), dtype=dtype, backend="torch")
    codes_tri = unpack_bits(ref, tuple(z.shape), dtype=dtype, backend="triton")
    assert codes_tri.dtype == dtype and codes_tri.is_contiguous()
    assert torch.equal(codes_tri, codes_ref)
    assert torch.equal(codes_tri, sign_quantize(z.float()).to(dtype))
    idx_ref = token_indices(z, backend="torch")
    idx_tri = token_indices(z, backend="triton")
    assert idx_tri.dtype == torch.int32 and idx_tri.shape == (z.shape[0],) + tuple(z.shape[2:])
    assert torch.equal(idx_tri, idx_ref)
    expect = codes_to_indices(sign_quantize(z.float()), dim=1) & 0xFFFFFFFF
    assert torch.equal(idx_ref.to(torch.int64) & 0xFFFFFFFF, expect)


# --------------------------------------------------------------------------- golden layout

# K = 3, one row of 4 tokens; signs per token (k0, k1, k2):
#   x0: + - +  → bits 1 0 1      x1: - + +  → 0 1 1
#   x2: + + +  → 1 1 1           x3: - - +  → 0 0 1
# stream i = 0..11: 1 0 1 0 1 1 1 1 | 1 0 0 1 (+ 4 zero pad bits)
# byte 0 = 1+4+16+32+64+128 = 0xF5, byte 1 = 1+8 = 0x09
GOLDEN_K3 = torch.tensor([[1, -1, 1, -1], [-1, 1, 1, -1], [1, 1, 1, 1]],
                         dtype=torch.float32).view(1, 3, 1, 1, 4)
# K = 2, T = 2, W = 2: tokens in (t, x) order, channel fastest:
#   (t0,x0): k0 + k1 + → 1 1   (t0,x1): - + → 0 1   (t1,x0): - - → 0 0   (t1,x1): + - → 1 0
# byte = 1+2+8+64 = 0x4B (a channel-major layout would give 0x39)
GOLDEN_K2 = torch.tensor([[[1, -1], [-1, 1]], [[1, 1], [-1, -1]]],
                         dtype=torch.float32).view(1, 2, 2, 1, 2)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_golden_bytes(backend):
    assert pack_bits(GOLDEN_K3, backend=backend).tolist() == [0xF5, 0x09]
    assert pack_bits(GOLDEN_K2, backend=backend).tolist() == [0x4B]
    assert pack_bits(GOLDEN_K3 * 0.25, backend=backend).tolist() == [0xF5, 0x09]
    assert token_indices(GOLDEN_K3, backend=backend).flatten().tolist() == [5, 6, 7, 4]
    assert token_indices(GOLDEN_K2, backend=backend).flatten().tolist() == [3, 2, 0, 1]
    out = unpack_bits(torch.tensor([0xF5, 0x09], dtype=torch.uint8), (1, 3, 1, 1, 4),
                      backend=backend)
    assert torch.equal(out, GOLDEN_K3)
    out = unpack_bits(torch.tensor([0x4B], dtype=torch.uint8), (1, 2, 2, 1, 2), backend=backend)
    assert torch.equal(out, GOLDEN_K2)


# --------------------------------------------------------------------------- Triton == reference

@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k", range(1, 33))
def test_triton_matches_reference_every_k(k, dtype, small_blocks):
    # 30 tokens: 30·K bits, not a multiple of 8 for odd K nor of the 32-byte tile (K > 8
    # spans several tiles); one full and one ragged 16-wide unpack/index tile
    z = latents((1, k, 2, 3, 5), dtype, seed=k)
    check_all(z, dtype)


@needs_triton
@pytest.mark.parametrize("k", [3, 18, 32])
def test_default_blocks_ragged_sizes(k):
    """The shipped tile sizes, with a tensor spanning more than one tile."""
    z = latents((1, k, 2, 33, 37), seed=100 + k)  # 2442 tokens
    check_all(z)


@needs_triton
@pytest.mark.parametrize("k", [1, 5, 18, 32])
@pytest.mark.parametrize("view", ["channels_last", "sliced", "channel_slice", "transposed_hw",
                                  "broadcast"])
def test_non_contiguous_inputs(k, view):
    if view == "channels_last":  # B×T×H×W×K storage seen as B×K×T×H×W
        z = latents((2, 2, 3, 5, k), seed=k).permute(0, 4, 1, 2, 3)
    elif view == "sliced":
        z = latents((2, k, 4, 5, 9), seed=k)[:, :, 1:3, 1:, ::2]
    elif view == "channel_slice":  # e.g. the first K of a larger channel count
        z = latents((2, k + 3, 2, 3, 7), seed=k)[:, 2:2 + k]
    elif view == "transposed_hw":
        z = latents((1, k, 2, 7, 4), seed=k).transpose(3, 4)
    else:  # stride 0 along T
        z = latents((2, k, 1, 3, 5), seed=k).expand(2, k, 2, 3, 5)
    assert not z.is_contiguous() or k == 1  # a K = 1 permute is still contiguous
    check_all(z)
    assert torch.equal(pack_bits(z, backend="triton"), pack_bits(z.contiguous(), backend="torch"))


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_special_values(dtype):
    """z <= 0 → bit 0 (−1), z > 0 → bit 1; ±0 → 0, ±inf by sign, NaN → 0, tiny positives → 1."""
    tiny = torch.finfo(dtype).tiny
    vals = [0.0, -0.0, float("inf"), float("-inf"), float("nan"), tiny, -tiny, 1e-3, -1e-3]
    z = torch.tensor(vals, dtype=dtype).view(1, len(vals), 1, 1, 1).repeat(2, 1, 1, 1, 3)
    expect_bits = [0, 0, 1, 0, 0, 1, 0, 1, 0]
    want = sum(b << i for i, b in enumerate(expect_bits))
    for backend in ("torch", "triton"):
        idx = token_indices(z, backend=backend)
        assert (idx == want).all(), backend
        codes = unpack_bits(pack_bits(z, backend=backend), tuple(z.shape), dtype, backend)
        assert torch.equal(codes[0, :, 0, 0, 0],
                           torch.tensor([2 * b - 1 for b in expect_bits], dtype=dtype))
    zeros = torch.zeros(1, 4, 1, 2, 2, dtype=dtype)
    assert pack_bits(zeros, backend="triton").tolist() == [0, 0]
    assert (unpack_bits(pack_bits(zeros, backend="triton"), (1, 4, 1, 2, 2),
                        backend="triton") == -1).all()


@needs_triton
def test_int64_offset_path(monkeypatch, small_blocks):
    """Force the int64 index path (normally only for > 2^31 elements) on a small tensor."""
    monkeypatch.setattr(kernels, "_INT32_LIMIT", 7)
    for k in (3, 18, 32):
        check_all(latents((2, k, 2, 3, 5), seed=k).transpose(3, 4))


@needs_triton
def test_k32_indices_twos_complement():
    z = -torch.ones(1, 32, 1, 1, 3)
    z[0, 31, 0, 0, 0] = 1.0  # only bit 31 → INT32_MIN
    z[0, :, 0, 0, 1] = 1.0  # all bits → -1
    z[0, 0, 0, 0, 2] = 1.0  # bit 0 → 1
    for backend in ("torch", "triton"):
        assert token_indices(z, backend=backend).flatten().tolist() == [-2 ** 31, -1, 1]


@needs_triton
def test_empty_tensors():
    z = torch.randn(0, 5, 2, 3, 3)
    for backend in ("torch", "triton"):
        assert pack_bits(z, backend=backend).numel() == 0
        assert unpack_bits(torch.zeros(0, dtype=torch.uint8), (0, 5, 2, 3, 3),
                           backend=backend).shape == (0, 5, 2, 3, 3)
        assert token_indices(z, backend=backend).shape == (0, 2, 3, 3)


# --------------------------------------------------------------------------- validation, dispatch

@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_validation(backend):
    z = torch.randn(1, 4, 1, 2, 3)
    good = pack_bits(z, backend=backend)
    with pytest.raises(ValueError):
        unpack_bits(good[:-1], (1, 4, 1, 2, 3), backend=backend)
    with pytest.raises(ValueError):
        unpack_bits(torch.cat([good, good[:1]]), (1, 4, 1, 2, 3), backend=backend)
    with pytest.raises(ValueError):
        unpack_bits(good.to(torch.int32), (1, 4, 1, 2, 3), backend=backend)
    with pytest.raises(ValueError):
        unpack_bits(good, (1, 4, 2, 3), backend=backend)
    with pytest.raises(TypeError):
        unpack_bits(good, (1, 4, 1, 2, 3), dtype=torch.int64, backend=backend)
    with pytest.raises(ValueError):
        pack_bits(torch.randn(1, 33, 1, 1, 1), backend=backend)
    with pytest.raises(ValueError):
        pack_bits(torch.randn(1, 0, 1, 1, 1), backend=backend)
    with pytest.raises(ValueError):
        pack_bits(torch.randn(4, 1, 2, 3), backend=backend)
    with pytest.raises(TypeError):
        pack_bits(torch.ones(1, 4, 1, 2, 3, dtype=torch.int32), backend=backend)
    with pytest.raises(ValueError):
        token_indices(torch.randn(1, 33, 1, 1, 1), backend=backend)


def test_select_backend(monkeypatch):
    cpu = torch.zeros(1)
    assert select_backend(cpu, None) == "torch"  # CPU tensors default to the reference
    assert select_backend(cpu, "torch") == "torch"
    with pytest.raises(ValueError):
        select_backend(cpu, "cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not triton_available("cpu")
    with pytest.raises(RuntimeError):  # asked for triton where it cannot run: no silent fallback
        select_backend(cpu, "triton")
    with pytest.raises(RuntimeError):
        pack_bits(torch.randn(1, 2, 1, 1, 1), backend="triton")
    if kernels._HAS_TRITON:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert triton_available("cpu")
        assert select_backend(cpu, "triton") == "triton"
        assert select_backend(cpu, None) == "torch"  # the interpreter is opt-in only


def test_reference_round_trip_large_k_random():
    """Reference path alone (no Triton needed): unpack(pack(z)) == sign(z) on a bigger tensor."""
    z = latents((2, 18, 3, 9, 16), torch.float16, seed=7)
    codes = unpack_bits(pack_bits(z, backend="torch"), tuple(z.shape), torch.float16, "torch")
    assert torch.equal(codes, sign_quantize(z))
