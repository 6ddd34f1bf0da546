"""CUDA kernels against float64 NumPy references, and the Helix claim on one GPU.

Every test marked ``cuda`` is skipped (not failed) when ``helix._core.cuda.device_count() == 0``.
The two tests at the top always run: the build flags are consistent, and a CUDA op without a GPU (or
without CUDA) raises helix.HelixError rather than crashing.
"""

from __future__ import annotations

import os
import pathlib

import ml_dtypes
import numpy as np
import pytest
from helix import _core
from tolerances import tol

cuda = _core.cuda
BF16 = ml_dtypes.bfloat16
HAS_GPU = cuda.device_count() > 0  # the SIMT emulator (cuda.emulated()) counts as one device
EMULATED = cuda.emulated()
gpu = pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU visible")
ROOT = pathlib.Path(__file__).resolve().parents[1]


# ---- always run ----------------------------------------------------------------------------------


def _expected_built_with_cuda() -> bool | None:
    """What the build should report: HELIX_EXPECT_CUDA=0/1 if set, else build/CMakeCache.txt's view."""
    env = os.environ.get("HELIX_EXPECT_CUDA")
    if env in ("0", "1"):
        return env == "1"
    cache = ROOT / "build" / "CMakeCache.txt"
    if not cache.exists():
        return None
    entries = {}
    for line in cache.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "//")):
            key, value = line.split("=", 1)
            entries[key.split(":")[0]] = value
    if entries.get("HELIX_ENABLE_CUDA", "AUTO") == "OFF":
        return False
    if entries.get("HELIX_ENABLE_CUDA") == "EMULATOR":
        return True
    return "CMAKE_CUDA_FLAGS" in entries  # cached once enable_language(CUDA) has run


def test_built_with_cuda_is_reported_consistently():
    built = cuda.built_with_cuda()
    assert isinstance(built, bool)
    if not built:
        assert not cuda.built_with_nccl()
        assert not cuda.built_with_cublas()
        assert cuda.device_count() == 0
    assert cuda.device_count() >= 0
    expected = _expected_built_with_cuda()
    if expected is not None:
        assert built == expected


def test_cuda_op_without_gpu_raises_helix_error():
    o_parts = np.zeros((2, 3, 8), np.float32)
    lse_parts = np.zeros((2, 3), np.float32)
    if HAS_GPU:
        # With a GPU the op runs; a bad argument still raises (ArgumentError is a HelixError).
        with pytest.raises(_core.ArgumentError, match="lse_parts"):
            cuda.merge_states(o_parts, lse_parts[:, :2].copy())
        return
    msg = "without CUDA" if not cuda.built_with_cuda() else "no CUDA device"
    for call in (
        lambda: cuda.merge_states(o_parts, lse_parts),
        lambda: cuda.rms_norm(np.ones((2, 4), np.float32), np.ones(4, np.float32)),
        lambda: _core.cuda_bench.bench_copy(1 << 20),
        lambda: cuda.nccl_collectives_one_rank(np.ones(4, np.float32)),
    ):
        with pytest.raises(_core.HelixError, match=msg):
            call()


# ---- float64 references --------------------------------------------------------------------------


def attention_ref(q, kv, q_pos, kv_pos, scale, R):
    """q [T,H,D], kv [S,D], q_pos [T], kv_pos [S] -> o [T,H,R], lse [T,H] in float64."""
    q = q.astype(np.float64)
    kv = kv.astype(np.float64)
    T, H, _ = q.shape
    o = np.zeros((T, H, R))
    lse = np.full((T, H), -np.inf)
    for t in range(T):
        vis = kv_pos <= q_pos[t]
        if not vis.any():
            continue
        k = kv[vis]
        s = scale * (q[t] @ k.T)  # [H, S_vis]
        m = s.max(axis=1, keepdims=True)
        e = np.exp(s - m)
        total = e.sum(axis=1, keepdims=True)
        o[t] = (e / total) @ k[:, :R]
        lse[t] = (m + np.log(total))[:, 0]
    return o, lse


def merge_ref(o_parts, lse_parts):
    o_parts = o_parts.astype(np.float64)
    lse_parts = lse_parts.astype(np.float64)
    m = lse_parts.max(axis=0)
    safe_m = np.where(np.isfinite(m), m, 0.0)
    w = np.where(np.isfinite(lse_parts), np.exp(lse_parts - safe_m), 0.0)
    total = w.sum(axis=0)
    o = np.einsum("n...,n...d->...d", w, o_parts)
    o = np.where(total[..., None] > 0, o / np.where(total > 0, total, 1.0)[..., None], 0.0)
    lse = np.where(total > 0, safe_m + np.log(np.where(total > 0, total, 1.0)), -np.inf)
    return o, lse


def bf16(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32).astype(BF16)


def miss_fraction(out, ref):
    """Share of elements outside the reference implementation's module-test bound (FACTS §1)."""
    return float(np.mean(~(np.abs(out - ref) < 0.1 + 0.05 * np.abs(ref))))


# ---- attention ------------------------------------------------------------------------------------

KERNELS = ["simple", "tensor_core"]


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(
    "S,H,D,R,T,splits",
    [(1, 4, 64, 64, 1, 0), (100, 128, 576, 512, 1, 0), (257, 33, 576, 512, 3, 5), (64, 16, 128, 64, 2, 1)],
)
def test_mla_attention(kernel, S, H, D, R, T, splits):
    rng = np.random.default_rng(S * 1000 + H)
    q = bf16(rng, (T, H, D))
    kv = bf16(rng, (S, D))
    kv_pos = np.arange(S, dtype=np.int64)
    q_pos = np.arange(S - T, S, dtype=np.int64)  # a causal chunk of the last T positions
    scale = 1.0 / np.sqrt(192.0)
    o, lse = cuda.mla_attention(q, kv, q_pos, kv_pos, scale, R, kernel=kernel, num_splits=splits)
    o_ref, lse_ref = attention_ref(q, kv, q_pos, kv_pos, scale, R)
    np.testing.assert_allclose(o, o_ref, **tol("cuda.mla_attention", "bfloat16"))
    np.testing.assert_allclose(lse, lse_ref, **tol("cuda.mla_attention.lse", "bfloat16"))


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("kernel", KERNELS)
def test_mla_attention_nothing_visible_gives_zero_and_minus_inf(kernel):
    rng = np.random.default_rng(1)
    q = bf16(rng, (2, 32, 576))
    kv = bf16(rng, (40, 576))
    kv_pos = np.arange(100, 140, dtype=np.int64)
    o, lse = cuda.mla_attention(q, kv, np.array([5, 99], np.int64), kv_pos, 0.07, 512, kernel=kernel)
    assert np.all(o == 0) and np.all(np.isneginf(lse))
    empty = np.zeros((0, 576), BF16)
    o, lse = cuda.mla_attention(
        q, empty, np.array([5, 99], np.int64), np.zeros(0, np.int64), 0.07, 512, kernel=kernel
    )
    assert np.all(o == 0) and np.all(np.isneginf(lse))


def build_paged(rng, lengths, tpb, D, cp=1, cp_rank=0, num_extra_blocks=3):
    """One CP rank's paged pool for sequences of `lengths` tokens (positions 0..n-1, keys ~ N(0,1)).

    Returns (pool, tables, kv_pos, num_slots, full_keys): rank-owned positions (p // tpb) % cp == cp_rank
    packed densely into shuffled blocks, kv_pos [num_blocks, tpb] the position of each pool row; unused
    rows and blocks are NaN-poisoned with position 0 (visible: reading one would show); full_keys[b]
    [n, D] are all keys of sequence b (for the unsharded reference).
    """
    full = [bf16(rng, (n, D)) for n in lengths]
    owned = [np.nonzero((np.arange(n) // tpb) % cp == cp_rank)[0] for n in lengths]
    blocks_per = [(len(o) + tpb - 1) // tpb for o in owned]
    num_blocks = sum(blocks_per) + num_extra_blocks
    perm = rng.permutation(num_blocks)
    pool = np.full((num_blocks, tpb, D), np.nan, np.float32).astype(BF16)
    max_blocks = max(max(blocks_per), 1)
    tables = np.zeros((len(lengths), max_blocks), np.int32)
    kv_pos = np.zeros((num_blocks, tpb), np.int64)
    num_slots = np.array([len(o) for o in owned], np.int64)
    nxt = 0
    for b, pos in enumerate(owned):
        for k in range(blocks_per[b]):
            tables[b, k] = perm[nxt]
            nxt += 1
        for k, p in enumerate(pos):
            pool[tables[b, k // tpb], k % tpb] = full[b][p]
            kv_pos[tables[b, k // tpb], k % tpb] = p
    return pool, tables, kv_pos, num_slots, full


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("kernel", KERNELS)
def test_paged_mla_attention_batch_of_different_lengths(kernel):
    rng = np.random.default_rng(7)
    lengths = [1, 31, 32, 33, 200, 0]
    tpb, H, D, R = 32, 40, 576, 512
    pool, tables, kv_pos, num_slots, full = build_paged(rng, lengths, tpb, D)
    # Two query tokens per sequence: the last position and one 3 earlier (causal chunk).
    q_seq = np.repeat(np.arange(len(lengths)), 2).astype(np.int64)
    q_pos = np.array([max(n - 1 - d, 0) for n in lengths for d in (0, 3)], np.int64)
    q = bf16(rng, (len(q_seq), H, D))
    scale = 0.0721
    o, lse = cuda.paged_mla_attention(
        q, q_pos, q_seq, pool, tables, kv_pos, num_slots, scale, R, kernel=kernel
    )
    assert not np.isnan(o).any()
    for t, b in enumerate(q_seq):
        n = lengths[b]
        o_ref, lse_ref = attention_ref(q[t : t + 1], full[b], q_pos[t : t + 1], np.arange(n), scale, R)
        np.testing.assert_allclose(o[t : t + 1], o_ref, **tol("cuda.mla_attention", "bfloat16"))
        np.testing.assert_allclose(lse[t : t + 1], lse_ref, **tol("cuda.mla_attention.lse", "bfloat16"))


@pytest.mark.cuda
@gpu
def test_paged_mla_attention_rejects_bad_block_table():
    rng = np.random.default_rng(0)
    pool, tables, kv_pos, num_slots, _ = build_paged(rng, [40], 32, 64)
    tables[0, 1] = pool.shape[0]
    with pytest.raises(_core.ArgumentError, match="block_tables"):
        cuda.paged_mla_attention(
            bf16(rng, (1, 2, 64)),
            np.array([39], np.int64),
            np.zeros(1, np.int64),
            pool,
            tables,
            kv_pos,
            num_slots,
            0.1,
            64,
        )


# The reference implementation's module-test shapes (FACTS §1): (batch, ctx), 32 heads, R=512, P=64, block 32.
MODULE_SHAPES = [(1, 64), (1, 512), (1, 4096), (1, 32768), (8, 2048), (8, 16384), (16, 4096), (16, 8192)]
# Under the SIMT emulator (cuda/ run on the CPU) the long contexts take minutes each: a subset with the
# same features (one and several sequences, varied lengths, several splits and key tiles, both CP sizes)
# runs instead; the full list stays for real GPUs.
EMULATED_MODULE_SHAPES = [(1, 64), (1, 512), (1, 4096), (8, 512)]


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("batch,ctx", EMULATED_MODULE_SHAPES if EMULATED else MODULE_SHAPES)
@pytest.mark.parametrize("cp", [2, 4])
def test_sharded_attention_equals_unsharded_on_one_gpu(batch, ctx, cp):
    """N CP ranks emulated on one GPU: per-rank partial attention, the all-to-all as copies, GPU merge."""
    rng = np.random.default_rng(batch * 100003 + ctx + cp)
    H, R, P, tpb = 32, 512, 64, 32
    D = R + P
    lengths = [ctx - (b % 3) * 7 if ctx > 64 else ctx for b in range(batch)]  # varied lengths
    ranks = [build_paged(np.random.default_rng(1), lengths, tpb, D, cp, r) for r in range(cp)]
    full = ranks[0][4]  # same rng seed per rank: identical full keys
    q = bf16(rng, (batch, H, D))
    q_pos = np.array([n - 1 for n in lengths], np.int64)
    q_seq = np.arange(batch, dtype=np.int64)
    scale = 1.0 / np.sqrt(192.0)
    parts = [cuda.paged_mla_attention(q, q_pos, q_seq, *r[:4], scale, R) for r in ranks]
    o_parts = np.stack([p[0] for p in parts])
    lse_parts = np.stack([p[1] for p in parts])
    o, lse = cuda.merge_states(o_parts, lse_parts)
    o_ref = np.empty((batch, H, R))
    lse_ref = np.empty((batch, H))
    for b in range(batch):
        o_ref[b : b + 1], lse_ref[b : b + 1] = attention_ref(
            q[b : b + 1], full[b], q_pos[b : b + 1], np.arange(lengths[b]), scale, R
        )
    assert miss_fraction(o, o_ref) <= 0.02
    np.testing.assert_allclose(o, o_ref, **tol("cuda.mla_attention", "bfloat16"))
    np.testing.assert_allclose(lse, lse_ref, **tol("cuda.mla_attention.lse", "bfloat16"))


# ---- merge_states ---------------------------------------------------------------------------------


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize(
    "N,shape,D", [(1, (3, 4), 512), (2, (1, 128), 512), (7, (5, 3), 6), (256, (2, 3), 128), (3, (4,), 1)]
)
def test_merge_states(N, shape, D):
    rng = np.random.default_rng(N * 7 + D)
    o_parts = rng.standard_normal((N, *shape, D)).astype(np.float32)
    lse_parts = (rng.standard_normal((N, *shape)) * 5).astype(np.float32)
    if N > 1:  # empty shards: o = 0, lse = -inf, in some rows all parts
        lse_parts[0, ...] = -np.inf
        o_parts[0, ...] = 0
        lse_parts[:, 0] = -np.inf
        o_parts[:, 0] = 0
    o, lse = cuda.merge_states(o_parts, lse_parts)
    o_ref, lse_ref = merge_ref(o_parts, lse_parts)
    assert not np.isnan(o).any() and not np.isnan(lse).any()
    np.testing.assert_allclose(o, o_ref, **tol("cuda.merge_states", "float32"))
    np.testing.assert_allclose(lse, lse_ref, **tol("cuda.merge_states", "float32"))


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("N", [1, 3, 200])
@pytest.mark.parametrize("D", [8, 6])
def test_merge_states_nan_lse_gives_nan_row(N, D):
    """The contract of merge_states (cpp/include/helix/ops/merge_states.hpp): a NaN lse makes its row
    NaN, o and lse; the other rows are untouched. Both kernel variants (D % 4 == 0 and not)."""
    rng = np.random.default_rng(N + D)
    o_parts = rng.standard_normal((N, 4, D)).astype(np.float32)
    lse_parts = rng.standard_normal((N, 4)).astype(np.float32)
    lse_parts[N - 1, 1] = np.nan
    lse_parts[:, 2] = np.nan
    o, lse = cuda.merge_states(o_parts, lse_parts)
    assert np.isnan(o[1]).all() and np.isnan(o[2]).all() and np.isnan(lse[[1, 2]]).all()
    o_ref, lse_ref = merge_ref(o_parts[:, [0, 3]], lse_parts[:, [0, 3]])
    np.testing.assert_allclose(o[[0, 3]], o_ref, **tol("cuda.merge_states", "float32"))
    np.testing.assert_allclose(lse[[0, 3]], lse_ref, **tol("cuda.merge_states", "float32"))


# ---- small ops ------------------------------------------------------------------------------------


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype", [np.float32, BF16])
def test_kv_append(dtype):
    rng = np.random.default_rng(3)
    pool = rng.standard_normal((4, 8, 24)).astype(dtype)
    rows = rng.standard_normal((5, 24)).astype(dtype)
    dst = np.array([0, 9, 31, 17, 3], np.int64)
    out = cuda.kv_append(pool, rows, dst)
    ref = pool.reshape(32, 24).copy()
    ref[dst] = rows
    np.testing.assert_array_equal(out.reshape(32, 24).view(np.uint8), ref.view(np.uint8))


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype,name", [(np.float32, "float32"), (BF16, "bfloat16")])
def test_rms_norm(dtype, name):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((7, 1000)).astype(dtype)
    w = (1 + 0.1 * rng.standard_normal(1000)).astype(dtype)
    out = cuda.rms_norm(x, w, 1e-6)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt((x64**2).mean(axis=1, keepdims=True) + 1e-6) * w.astype(np.float64)
    np.testing.assert_allclose(out.astype(np.float64), ref, **tol("cuda.rms_norm", name))


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype,name", [(np.float32, "float32"), (BF16, "bfloat16")])
def test_rope(dtype, name):
    rng = np.random.default_rng(5)
    T, heads, width, offset, P = 4, 3, 192, 128, 64
    x = rng.standard_normal((T, heads, width)).astype(dtype)
    positions = np.array([0, 1, 4095, 163839], np.int64)
    inv_freq = (1.0 / 10000.0 ** (np.arange(0, P, 2) / P)).astype(np.float32)
    out = x.copy()
    assert cuda.rope(out, positions, inv_freq, offset, 1.3) is None  # in place, as the CPU twin
    ref = x.astype(np.float64)
    ang = positions[:, None].astype(np.float64) * inv_freq.astype(np.float64)[None, :]  # [T, P/2]
    c, s = np.cos(ang)[:, None, :] * 1.3, np.sin(ang)[:, None, :] * 1.3
    x0 = ref[..., offset : offset + P : 2].copy()
    x1 = ref[..., offset + 1 : offset + P : 2].copy()
    ref[..., offset : offset + P : 2] = x0 * c - x1 * s
    ref[..., offset + 1 : offset + P : 2] = x0 * s + x1 * c
    np.testing.assert_allclose(out.astype(np.float64), ref, **tol("cuda.rope", name))


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype,name", [(np.float32, "float32"), (BF16, "bfloat16")])
def test_silu_mul(dtype, name):
    rng = np.random.default_rng(6)
    gate = (rng.standard_normal((5, 300)) * 4).astype(dtype)
    up = rng.standard_normal((5, 300)).astype(dtype)
    out = cuda.silu_mul(np.concatenate([gate, up], axis=1))
    g = gate.astype(np.float64)
    ref = g / (1 + np.exp(-g)) * up.astype(np.float64)
    np.testing.assert_allclose(out.astype(np.float64), ref, **tol("cuda.silu_mul", name))


def moe_route_ref(logits, bias, n_group, topk_group, top_k, scaling, norm):
    s = 1 / (1 + np.exp(-logits.astype(np.float64)))
    b = s + bias.astype(np.float64)
    T, E = logits.shape
    weights = np.zeros((T, top_k))
    ids = np.zeros((T, top_k), np.int64)
    for t in range(T):
        groups = b[t].reshape(n_group, -1)
        gscore = np.sort(groups, axis=1)[:, -2:].sum(axis=1)
        kept = np.argsort(-gscore, kind="stable")[:topk_group]
        mask = np.zeros(E, bool)
        for g in kept:
            mask[g * (E // n_group) : (g + 1) * (E // n_group)] = True
        cand = np.where(mask, b[t], -np.inf)
        ids[t] = np.argsort(-cand, kind="stable")[:top_k]
        w = s[t, ids[t]]
        weights[t] = (w / (w.sum() + 1e-20) if norm else w) * scaling
    return weights, ids


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("E,n_group,topk_group,top_k", [(32, 4, 2, 8), (8, 8, 3, 3), (64, 8, 8, 64)])
def test_moe_route_degenerate_bias_matches_cpu(E, n_group, topk_group, top_k):
    """-inf, +inf and NaN correction biases (whole groups of them, one expert per group, every expert
    chosen): the same experts as the CPU twin, every id valid and distinct."""
    rng = np.random.default_rng(E * top_k)
    logits = rng.standard_normal((6, E)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(E)).astype(np.float32)
    bias[: E // 2] = -np.inf
    bias[E // 2 :: 5] = np.nan
    bias[E - 1] = np.inf
    ids, w = cuda.moe_route(logits, bias, top_k, n_group, topk_group, True, 1.0)
    ids_cpu, w_cpu = _core.layers.moe_route(logits, bias, top_k, n_group, topk_group, True, 1.0)
    np.testing.assert_array_equal(ids, ids_cpu)
    np.testing.assert_allclose(w, w_cpu, **tol("cuda.moe_route", "float32"))
    assert all(len(set(row)) == top_k and 0 <= min(row) and max(row) < E for row in ids.tolist())


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize(
    "E,n_group,topk_group,top_k,norm",
    [(256, 8, 4, 8, True), (8, 2, 1, 2, True), (64, 1, 1, 6, False)],
)
def test_moe_route(E, n_group, topk_group, top_k, norm):
    rng = np.random.default_rng(E + top_k)
    logits = rng.standard_normal((16, E)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(E)).astype(np.float32)
    ids, w = cuda.moe_route(logits, bias, top_k, n_group, topk_group, norm, 2.5)
    assert ids.dtype == np.int32
    w_ref, ids_ref = moe_route_ref(logits, bias, n_group, topk_group, top_k, 2.5, norm)
    np.testing.assert_array_equal(ids, ids_ref)
    np.testing.assert_allclose(w, w_ref, **tol("cuda.moe_route", "float32"))


def moe_experts_ref(h, idx, weight, gate_up, down, local_first, round_bf16):
    """float64 routed experts; round_bf16 rounds h and the activation to bf16 first, as the GPU path does
    with bf16 weights (so only the fp32 summation differs)."""
    rnd = (lambda a: a.astype(BF16).astype(np.float64)) if round_bf16 else (lambda a: a)
    gu, dn = gate_up.astype(np.float64), down.astype(np.float64)
    F = gu.shape[1] // 2
    out = np.zeros(h.shape)
    for t in range(h.shape[0]):
        for k in range(idx.shape[1]):
            e = int(idx[t, k]) - local_first
            if 0 <= e < gu.shape[0]:
                g = gu[e] @ rnd(h[t].astype(np.float64))
                act = rnd(g[:F] / (1 + np.exp(-g[:F])) * g[F:])
                out[t] += float(weight[t, k]) * (dn[e] @ act)
    return out


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(
    "T,top_k,hidden,F",
    # 2F = 528: a partial column tile; hidden 2056 with 4-12 rows per expert: the experts with 9 or more
    # rows take K in two tiles, the second partial (r rows: tiles of 16384 / r values), the others in one
    [(1, 3, 48, 24), (5, 3, 48, 24), (16, 3, 48, 24), (7, 2, 1040, 264), (16, 4, 2056, 16)],
)
def test_moe_experts_matches_cpu_twin_on_every_rank(dtype, T, top_k, hidden, F):
    """Expert-parallel ranks of uneven size (some tokens meet no local expert, experts get up to T rows):
    each rank's device result equals the float64 reference and the CPU twin; the ranks sum to the whole."""
    rng = np.random.default_rng(T * 1000 + hidden)
    E = 8
    gate_up = (rng.standard_normal((E, 2 * F, hidden)) / np.sqrt(hidden)).astype(np.float32)
    down = (rng.standard_normal((E, hidden, F)) / np.sqrt(F)).astype(np.float32)
    if dtype == "bfloat16":
        gate_up, down = gate_up.astype(BF16), down.astype(BF16)
    h = rng.standard_normal((T, hidden)).astype(np.float32)
    idx, weight = _core.layers.moe_route(
        rng.standard_normal((T, E)).astype(np.float32), np.zeros(E, np.float32), top_k, 1, 1, True, 2.5
    )
    total = np.zeros((T, hidden))
    for first, count in [(0, 3), (3, 1), (4, 4)]:
        gu, dn = gate_up[first : first + count], down[first : first + count]
        out = cuda.moe_experts(h, idx, weight, gu, dn, first)
        want = moe_experts_ref(h, idx, weight, gu, dn, first, dtype == "bfloat16")
        np.testing.assert_allclose(out, want, **tol("cuda.moe_experts", "float32"))
        cpu = _core.layers.moe_experts(h, idx, weight, gu, dn, first)
        np.testing.assert_allclose(out, cpu, **tol("cuda.moe_experts", dtype))
        total += out
    full = moe_experts_ref(h, idx, weight, gate_up, down, 0, dtype == "bfloat16")
    np.testing.assert_allclose(total, full, **tol("cuda.moe_experts", "float32"))


@pytest.mark.cuda
@gpu
def test_moe_experts_rejects_shapes_the_device_path_cannot_take():
    gate_up, down = np.zeros((4, 16, 16), np.float32), np.zeros((4, 16, 8), np.float32)
    T = 17  # more tokens than one expert's GEMV takes
    h = np.zeros((T, 16), np.float32)
    idx, w = np.zeros((T, 2), np.int32), np.zeros((T, 2), np.float32)
    with pytest.raises(_core.ArgumentError, match="T=17"):
        cuda.moe_experts(h, idx, w, gate_up, down)
    with pytest.raises(_core.ArgumentError, match="topk_idx"):
        cuda.moe_experts(h[:2], idx[:2].astype(np.int64), w[:2], gate_up, down)
    with pytest.raises(_core.ArgumentError, match="hidden=12"):
        cuda.moe_experts(h[:2, :12].copy(), idx[:2], w[:2], gate_up[:, :, :12].copy(), down[:, :12].copy())


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("out_dtype", ["float32", "bfloat16"])
def test_linear(out_dtype):
    rng = np.random.default_rng(8)
    x = bf16(rng, (5, 300))
    w = bf16(rng, (700, 300), 0.05)
    y = cuda.linear(x, w, out=np.zeros((5, 700), BF16 if out_dtype == "bfloat16" else np.float32))
    assert y.dtype == (BF16 if out_dtype == "bfloat16" else np.float32)
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    np.testing.assert_allclose(y.astype(np.float64), ref, **tol("cuda.linear", out_dtype))


@pytest.mark.cuda
@gpu
def test_device_allocation_beyond_the_gpu_raises_device_memory_error():
    """cudaMalloc's out-of-memory becomes helix.DeviceMemoryError (a HelixError) with the size asked for and
    the device's free memory; the failure is not left behind for the next launch to report."""
    msg = r"out of GPU memory: cannot allocate [\d.]+ GiB on device 0 "
    with pytest.raises(_core.DeviceMemoryError, match=msg):
        _core.cuda_bench.bench_copy(1 << 50)
    assert issubclass(_core.DeviceMemoryError, _core.HelixError)
    out = cuda.rms_norm(np.ones((2, 8), np.float32), np.ones(8, np.float32))
    np.testing.assert_allclose(out, 1.0, rtol=1e-6)


@pytest.mark.cuda
@gpu
def test_nccl_one_rank_collectives_are_identity():
    if not cuda.built_with_nccl():
        pytest.skip("built without NCCL")
    x = np.arange(1000, dtype=np.float32) - 17.5
    results = cuda.nccl_collectives_one_rank(x)
    assert set(results) == {"all_reduce_sum", "all_gather", "all_to_all", "broadcast", "split_all_reduce_sum"}
    for name, value in results.items():
        np.testing.assert_array_equal(value, x, err_msg=name)
