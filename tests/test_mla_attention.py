"""helix.ops.mla_attention against the float64 reference (helix.reference.mla_attention)."""

from __future__ import annotations

import functools

import helix
import ml_dtypes
import numpy as np
import pytest
from helix import reference
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import BF16_ROUNDED_PATHS, mla_attention_tol, tol

ops = helix.ops
BF16 = ml_dtypes.bfloat16
KERNEL_PATHS = ops.kernel_paths()  # every path -> "" where it runs here, else why not


def make_inputs(rng, T, H, D, S, q_dtype=np.float32, kv_dtype=np.float32, causal=True, shuffle=False):
    q = rng.standard_normal((T, H, D), dtype=np.float32).astype(q_dtype)
    kv = rng.standard_normal((S, D), dtype=np.float32).astype(kv_dtype)
    kv_pos = np.arange(S, dtype=np.int64)
    if shuffle:
        kv_pos = rng.permutation(kv_pos)
    # Causal chunk: the T query tokens are the last T positions (S >= T) or all see everything.
    q_pos = np.arange(S - T, S, dtype=np.int64) if causal else np.full(T, S, dtype=np.int64)
    return q, kv, q_pos, kv_pos


@functools.cache
def reference_case(shape, q_dtype, kv_dtype, spread=1.0, shuffle=False):
    """The inputs (q, kv, q_pos, kv_pos, scale, R) of one case, q scaled by `spread` (scale = D^-0.5: the
    scores have a standard deviation of ~spread), and their float64 reference (o_ref, lse_ref); built once
    for all the kernel paths."""
    T, H, D, R, S = shape
    rng = np.random.default_rng([*shape, int(spread), q_dtype == BF16, kv_dtype == BF16, shuffle])
    q, kv, q_pos, kv_pos = make_inputs(rng, T, H, D, S, q_dtype, kv_dtype, shuffle=shuffle)
    q = (q.astype(np.float32) * np.float32(spread)).astype(q_dtype)
    args = (q, kv, q_pos, kv_pos, D**-0.5, R)
    return args, reference.mla_attention(*args)


def run_and_check(args, bounds, ref=None):
    """ops.mla_attention(*args) against the float64 reference (ref, or computed here); returns (o, lse)."""
    o, lse = ops.mla_attention(*args)
    check(o, lse, reference.mla_attention(*args) if ref is None else ref, bounds)
    return o, lse


def check(o, lse, ref, bounds):
    """o and lse against the float64 reference ref = (o_ref, lse_ref) within bounds = (o bound, lse bound),
    each {atol, rtol}."""
    o_bound, lse_bound = bounds
    o_ref, lse_ref = ref
    assert o.dtype == np.float32 and lse.dtype == np.float32
    assert o.shape == o_ref.shape and lse.shape == lse_ref.shape
    assert not np.isnan(o).any() and not np.isnan(lse).any()
    np.testing.assert_allclose(o, o_ref, **o_bound)
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(lse_ref))
    finite = np.isfinite(lse_ref)
    np.testing.assert_allclose(lse[finite], lse_ref[finite], **lse_bound)


SHAPES = [
    # T, H, D, R, S
    (1, 128, 576, 512, 200),  # DeepSeek-V3 decode
    (1, 5, 37, 21, 130),  # odd heads and widths
    (3, 17, 33, 33, 65),  # R == D, one past a 64-key tile (AVX-512, portable)
    (4, 3, 8, 1, 64),  # R == 1, exactly one tile
    (7, 16, 72, 64, 300),  # causal prefill chunk
    (2, 1, 2, 1, 5),  # tiny
    (1, 129, 40, 32, 127),  # rows spill into a second 128-row block
    # the AMX key tile (256 keys) exactly, one past it, and several tiles (in-place key loads at D = 576, 64)
    (1, 16, 64, 64, 256),
    (2, 16, 64, 48, 257),
    (2, 128, 576, 512, 1000),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_matches_reference(kernel_path, shape, dtype):
    """O(1) scores, T = 1 and causal chunks T > 1 over shuffled key positions."""
    t = np.float32 if dtype == "float32" else BF16
    args, ref = reference_case(shape, t, t, shuffle=True)
    run_and_check(args, mla_attention_tol(kernel_path, dtype), ref)


def test_float32_query_with_bfloat16_keys(kernel_path):
    rng = np.random.default_rng(1)
    q, kv, q_pos, kv_pos = make_inputs(rng, 2, 16, 96, 150, np.float32, BF16)
    run_and_check((q, kv, q_pos, kv_pos, 0.1, 80), mla_attention_tol(kernel_path, "bfloat16"))


def test_bfloat16_query_with_float32_keys(kernel_path):
    rng = np.random.default_rng(2)
    q, kv, q_pos, kv_pos = make_inputs(rng, 2, 6, 50, 90, BF16, np.float32)
    run_and_check((q, kv, q_pos, kv_pos, 0.2, 48), mla_attention_tol(kernel_path, "float32"))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_empty_shard_and_invisible_keys(kernel_path, dtype):
    t = np.float32 if dtype == "float32" else BF16
    rng = np.random.default_rng(3)
    q = rng.standard_normal((3, 5, 24), dtype=np.float32).astype(t)
    # S = 0: nothing to attend to.
    o, lse = ops.mla_attention(
        q, np.zeros((0, 24), t), np.arange(3, dtype=np.int64), np.zeros(0, np.int64), 0.3, 16
    )
    assert o.shape == (3, 5, 16) and np.all(o == 0) and np.all(np.isneginf(lse))
    # Keys all in the future of the first query token, visible to the last one only.
    kv = rng.standard_normal((70, 24), dtype=np.float32).astype(t)
    kv_pos = np.arange(100, 170, dtype=np.int64)
    q_pos = np.array([5, 99, 200], dtype=np.int64)
    o, lse = run_and_check((q, kv, q_pos, kv_pos, 0.3, 16), mla_attention_tol(kernel_path, dtype))
    assert np.all(o[:2] == 0) and np.all(np.isneginf(lse[:2]))


LARGE_SCORE_SHAPES = [
    # T, H, D, R, S
    (1, 16, 576, 512, 300),  # DeepSeek-V3 decode
    (4, 8, 576, 512, 257),  # causal chunk, one past the AMX key tile
    (3, 5, 72, 64, 65),  # one past the AVX-512 key tile
]


@pytest.mark.parametrize("shape", LARGE_SCORE_SHAPES)
@pytest.mark.parametrize("spread", [10, 100])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_large_score_spreads(kernel_path, shape, spread, dtype):
    """Large-magnitude float32 q (|q| ~ spread): scale * q.k has a standard deviation of `spread`, so the
    scores span tens (spread 10, maxima ~50) or hundreds (spread 100, maxima ~500). Every error in a score
    is amplified by the softmax: the bf16-rounded paths lose ~2^-9 of each score, the split paths ~2^-17."""
    args, ref = reference_case(shape, np.float32, np.float32 if dtype == "float32" else BF16, spread)
    assert np.abs(ref[1]).max() > 2 * spread  # the scores are large indeed
    run_and_check(args, mla_attention_tol(kernel_path, dtype, large_scores=True), ref)


def test_large_scores_do_not_overflow(kernel_path):
    rng = np.random.default_rng(4)
    q, kv, q_pos, kv_pos = make_inputs(rng, 1, 8, 64, 100)
    # float32 keys, scores of several hundred: exact fp32 products on every path.
    run_and_check((q * 30, kv, q_pos, kv_pos, 1.0, 64), mla_attention_tol(kernel_path, "float32"))


def test_paths_agree_on_float32_keys():
    """float32 keys run exact float32 products on every path."""
    rng = np.random.default_rng(5)
    q, kv, q_pos, kv_pos = make_inputs(rng, 3, 20, 100, 333, shuffle=True)
    results = {}
    for path in (name for name, why in KERNEL_PATHS.items() if not why):
        ops.set_kernel_path(path)
        try:
            results[path] = ops.mla_attention(q, kv, q_pos, kv_pos, 0.1, 90)
        finally:
            ops.set_kernel_path("auto")
    for o, lse in results.values():
        np.testing.assert_allclose(o, results["portable"][0], **tol("mla_attention", "float32"))
        np.testing.assert_allclose(lse, results["portable"][1], **tol("mla_attention", "float32"))


def test_auto_is_float32_grade():
    """Auto: the split AMX path where AMX is available, else the exact AVX-512 kernels, else portable; never
    a bf16-rounded path."""
    expected = next(p for p in ("amx_split", "avx512", "portable") if not KERNEL_PATHS[p])
    assert ops.kernel_path() == expected and expected not in BF16_ROUNDED_PATHS


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_key_splits_merge_exactly(kernel_path, threads):
    """More threads than row blocks: the keys are split and the partial states merged."""
    args, ref = reference_case((1, 128, 576, 512, 1100), BF16, BF16, shuffle=True)
    before = ops.num_threads()
    try:
        ops.set_num_threads(threads)
        o, lse = ops.mla_attention(*args)
    finally:
        ops.set_num_threads(before)
    check(o, lse, ref, mla_attention_tol(kernel_path, "bfloat16"))


def test_threads_do_not_change_the_result():
    rng = np.random.default_rng(6)
    q, kv, q_pos, kv_pos = make_inputs(rng, 1, 32, 64, 1000)
    before = ops.num_threads()
    try:
        ops.set_num_threads(1)
        o1, lse1 = ops.mla_attention(q, kv, q_pos, kv_pos, 0.1, 48)
        ops.set_num_threads(3)
        o3, lse3 = ops.mla_attention(q, kv, q_pos, kv_pos, 0.1, 48)
    finally:
        ops.set_num_threads(before)
    np.testing.assert_allclose(o1, o3, **tol("mla_attention", "float32"))
    np.testing.assert_allclose(lse1, lse3, **tol("mla_attention", "float32"))


# ---- bad inputs ------------------------------------------------------------------------------------------


def good_args():
    rng = np.random.default_rng(7)
    q, kv, q_pos, kv_pos = make_inputs(rng, 2, 4, 16, 10)
    return dict(q=q, kv=kv, q_pos=q_pos, kv_pos=kv_pos, scale=0.25, kv_lora_rank=12)


BAD = [
    ("q", lambda a: a["q"].astype(np.float64)),  # dtype
    ("q", lambda a: a["q"][0]),  # ndim
    ("q", lambda a: a["q"].tolist()),  # not an array
    ("q", lambda a: np.asfortranarray(a["q"])),  # not C-contiguous
    ("kv", lambda a: a["kv"][:, :15].copy()),  # D mismatch
    ("kv", lambda a: a["kv"].astype(np.float16)),
    ("kv", lambda a: np.asfortranarray(a["kv"])),
    ("q_pos", lambda a: a["q_pos"].astype(np.int32)),
    ("q_pos", lambda a: a["q_pos"][:1].copy()),  # length != T
    ("kv_pos", lambda a: a["kv_pos"][:9].copy()),  # length != S
    ("kv_pos", lambda a: a["kv_pos"].reshape(2, 5)),
    ("kv_lora_rank", lambda a: 0),
    ("kv_lora_rank", lambda a: 17),
    ("scale", lambda a: float("nan")),
    ("scale", lambda a: 0.0),
    ("scale", lambda a: -1.0),
    ("scale", lambda a: float("inf")),
]


@pytest.mark.parametrize("name,make", BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD)])
def test_bad_inputs_name_the_argument(name, make):
    args = good_args()
    args[name] = make(args)
    with pytest.raises(helix.ArgumentError, match=f"'{name}'"):
        ops.mla_attention(**args)


# ---- property: sharded partial attention + exact LSE merge == unsharded attention -------------------------


def lse_merge(parts):
    """Float64 log-sum-exp merge of [(o [T,H,R], lse [T,H])] partial states."""
    lses = np.stack([lse.astype(np.float64) for _, lse in parts])  # [N, T, H]
    mx = lses.max(axis=0)
    safe = np.where(np.isfinite(mx), mx, 0.0)
    w = np.exp(lses - safe)  # -inf -> 0
    total = w.sum(axis=0)
    o = sum(wi[..., None] * oi.astype(np.float64) for wi, (oi, _) in zip(w, parts, strict=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        o = np.where(total[..., None] > 0, o / np.where(total > 0, total, 1.0)[..., None], 0.0)
        lse = np.where(total > 0, safe + np.log(np.where(total > 0, total, 1.0)), -np.inf)
    return o, lse


@settings(max_examples=30, deadline=None)
@given(
    data=st.data(),
    n_shards=st.integers(1, 8),
    S=st.integers(0, 150),
    T=st.integers(1, 3),
    H=st.integers(1, 9),
    D=st.integers(1, 40),
)
def test_sharded_merge_equals_unsharded(data, n_shards, S, T, H, D):
    R = data.draw(st.integers(1, D))
    assignment = np.array(
        data.draw(st.lists(st.integers(0, n_shards - 1), min_size=S, max_size=S)), dtype=np.int64
    )
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    q, kv, _, kv_pos = make_inputs(rng, T, H, D, S, shuffle=True)
    q_pos = np.sort(rng.integers(-1, S + 1, size=T)).astype(np.int64)  # some tokens may see nothing
    o_full, lse_full = ops.mla_attention(q, kv, q_pos, kv_pos, 0.3, R)
    parts = []
    for shard in range(n_shards):
        keys = np.flatnonzero(assignment == shard)
        parts.append(ops.mla_attention(q, np.ascontiguousarray(kv[keys]), q_pos, kv_pos[keys].copy(), 0.3, R))
    o, lse = lse_merge(parts)
    np.testing.assert_allclose(o, o_full, **tol("mla_attention", "float32"))
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(lse_full))
    finite = np.isfinite(lse_full)
    np.testing.assert_allclose(lse[finite], lse_full[finite], **tol("mla_attention", "float32"))
    o_ref, _ = reference.mla_attention(q, kv, q_pos, kv_pos, 0.3, R)
    np.testing.assert_allclose(o, o_ref, **tol("mla_attention", "float32"))
