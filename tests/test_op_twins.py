"""One op, one contract: each CPU op and its CUDA twin take the same arguments and return the same types.

The signature test always runs (it reads the bindings). The twin tests call both with the same arguments
and compare the results; they need a CUDA device (the SIMT emulator counts as one) and skip otherwise.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from helix import _core
from tolerances import tol

cuda = _core.cuda
gpu = pytest.mark.skipif(cuda.device_count() == 0, reason="no CUDA GPU visible")
BF16 = ml_dtypes.bfloat16
# (CPU module, op name): every op with a CUDA twin in helix._core.cuda.
TWINS = [
    (_core.layers, "linear"),
    (_core.layers, "head_linear"),
    (_core.layers, "rms_norm"),
    (_core.layers, "rope"),
    (_core.layers, "silu_mul"),
    (_core.layers, "moe_route"),
    (_core.layers, "moe_experts"),
    (_core.layers, "embedding"),
    (_core.layers, "kv_append"),
    (_core.ops, "merge_states"),
    (_core.ops, "mla_attention"),
    (_core.ops, "paged_mla_attention"),
    (_core, "helix_attention"),
]


@pytest.mark.parametrize(("module", "name"), TWINS, ids=[name for _, name in TWINS])
def test_cpu_and_cuda_twins_have_one_signature(module, name):
    cpu, gpu_twin = getattr(module, name), getattr(cuda, name)
    # __nb_signature__: ((signature, docstring, defaults),) per overload; one overload each.
    (cpu_sig,), (cuda_sig,) = cpu.__nb_signature__, gpu_twin.__nb_signature__
    assert cpu_sig[0] == cuda_sig[0], f"{name}: {cpu_sig[0]} != {cuda_sig[0]}"
    assert cpu_sig[2] == cuda_sig[2], f"{name}: defaults differ"


def _both(name: str, *args, module=_core.layers, **kwargs):
    """(cpu result, cuda result) of one call with the same arguments (copied: some ops work in place)."""
    copy = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    return getattr(module, name)(*args, **kwargs), getattr(cuda, name)(*copy, **kwargs), copy


@pytest.mark.cuda
@gpu
def test_twins_agree_on_the_same_arguments():
    rng = np.random.default_rng(0)
    T, K, N, H = 5, 48, 24, 3
    x = rng.standard_normal((T, K)).astype(np.float32)
    w = (rng.standard_normal((N, K)) / np.sqrt(K)).astype(np.float32)
    cpu, dev, _ = _both("linear", x, w)
    np.testing.assert_allclose(dev, cpu, **tol("cuda.linear", "float32"))
    resid = rng.standard_normal((T, N)).astype(np.float32)
    cpu, dev, _ = _both("linear", x, w, resid, True)  # accumulates into out on both devices
    np.testing.assert_allclose(dev, cpu, **tol("cuda.linear", "float32"))

    xh = rng.standard_normal((T, H, K)).astype(np.float32)
    wh = (rng.standard_normal((H, N, K)) / np.sqrt(K)).astype(np.float32)
    cpu, dev, _ = _both("head_linear", xh, wh)
    assert cpu.shape == dev.shape == (T, H, N)
    np.testing.assert_allclose(dev, cpu, **tol("cuda.linear", "float32"))

    g = rng.uniform(0.5, 1.5, K).astype(np.float32)
    cpu, dev, _ = _both("rms_norm", x, g, 1e-6)
    np.testing.assert_allclose(dev, cpu, **tol("cuda.rms_norm", "float32"))

    inv_freq = (1.0 / 10000.0 ** (np.arange(0, 16, 2) / 16)).astype(np.float32)
    pos = np.array([0, 3, 77, 4096, 163839], np.int64)
    xr = rng.standard_normal((T, H, 40)).astype(np.float32)
    cpu, dev, moved = _both("rope", xr, pos, inv_freq, 20, 1.2)
    assert cpu is None and dev is None  # in place on both
    np.testing.assert_allclose(moved[0], xr, **tol("cuda.rope", "float32"))

    gu = (rng.standard_normal((T, 2 * N)) * 3).astype(np.float32)
    cpu, dev, _ = _both("silu_mul", gu)
    np.testing.assert_allclose(dev, cpu, **tol("cuda.silu_mul", "float32"))

    logits = rng.standard_normal((T, 16)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(16)).astype(np.float32)
    (ids_cpu, w_cpu), (ids_dev, w_dev), _ = _both("moe_route", logits, bias, 4, 4, 2, True, 2.5)
    assert ids_cpu.dtype == ids_dev.dtype == np.int32
    np.testing.assert_array_equal(ids_dev, ids_cpu)
    np.testing.assert_allclose(w_dev, w_cpu, **tol("cuda.moe_route", "float32"))

    gate_up = (rng.standard_normal((4, 2 * 16, K)) / np.sqrt(K)).astype(np.float32)
    down = (rng.standard_normal((4, K, 16)) / 4).astype(np.float32)
    h = rng.standard_normal((T, K)).astype(np.float32)
    cpu, dev, _ = _both("moe_experts", h, ids_cpu, w_cpu, gate_up, down, 4)  # experts 4..7 of 16
    np.testing.assert_allclose(dev, cpu, **tol("cuda.moe_experts", "float32"))

    table = rng.standard_normal((10, K)).astype(BF16)
    ids = np.array([3, 12, 10, 19, 25], np.int64)
    cpu, dev, _ = _both("embedding", ids, table, 10)
    np.testing.assert_array_equal(dev, cpu)

    pool = rng.standard_normal((3, 4, 8)).astype(BF16)
    rows = rng.standard_normal((3, 8)).astype(BF16)
    cpu, dev, _ = _both("kv_append", pool, rows, np.array([5, -1, 11], np.int64))  # -1: another rank's token
    np.testing.assert_array_equal(dev.view(np.uint16), cpu.view(np.uint16))

    o_parts = rng.standard_normal((3, T, H, 8)).astype(np.float32)
    lse_parts = rng.standard_normal((3, T, H)).astype(np.float32)
    (o_cpu, lse_cpu), (o_dev, lse_dev), _ = _both("merge_states", o_parts, lse_parts, module=_core.ops)
    np.testing.assert_allclose(o_dev, o_cpu, **tol("cuda.merge_states", "float32"))
    np.testing.assert_allclose(lse_dev, lse_cpu, **tol("cuda.merge_states", "float32"))


@pytest.mark.cuda
@gpu
def test_each_device_names_the_dtypes_it_runs():
    """bfloat16 activations are a CUDA-only input; float32 x with bfloat16 w a CPU-only pair (cuBLAS takes one
    input dtype): the other device raises ArgumentError naming the argument, never converts silently."""
    x = np.ones((2, 8), BF16)
    w = np.ones(8, BF16)
    assert cuda.rms_norm(x, w).dtype == BF16
    with pytest.raises(_core.ArgumentError, match="'x'"):
        _core.layers.rms_norm(x, w)
    xf, wb = np.ones((2, 8), np.float32), np.ones((3, 8), BF16)
    assert _core.layers.linear(xf, wb).shape == (2, 3)
    with pytest.raises(_core.ArgumentError, match="'w'"):
        cuda.linear(xf, wb)


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("with_wuv", [False, True])
def test_helix_attention_twins_agree_on_one_rank(dtype, with_wuv):
    """Two steps (a prompt chunk of two sequences, then a decode token each) on identical caches: the same
    output from both devices, and the same rows stored in both caches. Several CP ranks: tests/mpi/."""
    rng = np.random.default_rng([dtype == "bfloat16", with_wuv])
    store = np.float32 if dtype == "float32" else BF16
    H, R, P, Dv, tpb = 4, 32, 16, 24, 4
    D = R + P
    caches = [_core.PagedKVCache(16, tpb, D, dtype) for _ in range(2)]
    for cache in caches:
        cache.add_sequence(5)
        cache.add_sequence(9)
    w_uv = (rng.standard_normal((H, Dv, R)) / np.sqrt(R)).astype(np.float32) if with_wuv else None
    comm = _core.self_communicator()
    for positions, q_seq in [([0, 1, 2, 3, 4, 0, 1], [0, 0, 0, 0, 0, 1, 1]), ([5, 2], [0, 1])]:
        T = len(positions)
        args = (
            rng.standard_normal((T, H, D)).astype(store),  # the CUDA kernels read q as the cache
            rng.standard_normal((T, D)).astype(store),
            np.array(positions, np.int64),
            np.array([5, 9], np.int64),
            np.array(q_seq, np.int64),
            D**-0.5,
            R,
            w_uv,
        )
        cpu = _core.helix_attention(comm, caches[0], *args)
        dev = cuda.helix_attention(comm, caches[1], *args)
        assert cpu.shape == dev.shape == (T, H, Dv if with_wuv else R)
        np.testing.assert_allclose(dev, cpu, **tol("cuda.helix_attention", dtype))
    for seq in (5, 9):
        np.testing.assert_array_equal(caches[1].read(seq).view(np.uint8), caches[0].read(seq).view(np.uint8))
        np.testing.assert_array_equal(caches[1].positions(seq), caches[0].positions(seq))
