"""helix.ops.paged_mla_attention against the float64 reference (helix.reference.paged_mla_attention)."""

from __future__ import annotations

import helix
import ml_dtypes
import numpy as np
import pytest
from helix import reference
from tolerances import mla_attention_tol, tol

ops = helix.ops
BF16 = ml_dtypes.bfloat16


def build_cache(rng, lengths, tokens_per_block, D, dtype, cp_rank=0, cp_size=1, chunk=7):
    """A cache holding sequences 10, 11, ... of the given lengths (the owned positions of 0..L-1, appended in
    chunks), poisoned with NaN in every unused slot. Returns the cache and, per sequence,
    (rows, positions)."""
    np_dtype = np.float32 if dtype == "float32" else BF16
    cache = helix.PagedKVCache(64, tokens_per_block, D, dtype, cp_rank, cp_size)
    seqs = []
    for b, length in enumerate(lengths):
        positions = np.array([p for p in range(length) if cache.owns(p)], dtype=np.int64)
        rows = rng.standard_normal((positions.size, D), dtype=np.float32).astype(np_dtype)
        cache.add_sequence(10 + b)
        for i in range(0, positions.size, chunk):
            cache.append(10 + b, positions[i : i + chunk].copy(), rows[i : i + chunk].copy())
        seqs.append((rows, positions))
    cache.poison_unused(float("nan"))
    return cache, seqs


def run_and_check(cache, seqs, q, q_pos, q_seq_index, scale, R, bounds):
    """bounds: (o bound, lse bound), each {atol, rtol} against the float64 reference."""
    seq_ids = np.arange(10, 10 + len(seqs), dtype=np.int64)
    o, lse = ops.paged_mla_attention(q, q_pos, q_seq_index, *cache.paged_view(seq_ids), scale, R)
    o_ref, lse_ref = reference.paged_mla_attention(
        q, q_pos, [r for r, _ in seqs], [p for _, p in seqs], q_seq_index, scale, R
    )
    assert not np.isnan(o).any() and not np.isnan(lse).any()
    np.testing.assert_allclose(o, o_ref, **bounds[0])
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(lse_ref))
    finite = np.isfinite(lse_ref)
    np.testing.assert_allclose(lse[finite], lse_ref[finite], **bounds[1])
    return o, lse


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("tokens_per_block,D", [(16, 40), (32, 40), (8, 64), (16, 64), (48, 64)])
def test_batch_of_sequences_at_block_boundaries(kernel_path, dtype, tokens_per_block, D):
    """D = 64 with 16 | tokens_per_block: the AMX kernel loads 16-key groups in place from the pool; with
    8 tokens per block or D % 32 != 0 it copies them (both next to NaN-poisoned unused slots)."""
    rng = np.random.default_rng([tokens_per_block, D, dtype == "bfloat16"])
    tpb = tokens_per_block
    lengths = [0, 1, tpb - 1, tpb, tpb + 1, 3 * tpb, 150]
    H, R = 5, 32
    cache, seqs = build_cache(rng, lengths, tpb, D, dtype)
    # One decode token per sequence (sees everything), plus a 3-token causal chunk on the longest one.
    q_seq_index = np.array([*range(len(lengths)), 6, 6, 6], dtype=np.int64)
    q_pos = np.array([max(L, 1) for L in lengths] + [100, 120, 149], dtype=np.int64)
    q = rng.standard_normal((q_seq_index.size, H, D), dtype=np.float32)
    if dtype == "bfloat16":
        q = q.astype(BF16)
    o, lse = run_and_check(cache, seqs, q, q_pos, q_seq_index, 0.15, R, mla_attention_tol(kernel_path, dtype))
    assert np.all(o[0] == 0) and np.all(np.isneginf(lse[0]))  # the empty sequence


def test_deepseek_shape_matches_contiguous_kernel(kernel_path):
    rng = np.random.default_rng(11)
    cache, seqs = build_cache(rng, [300], 32, 576, "bfloat16", chunk=64)
    q = rng.standard_normal((2, 128, 576), dtype=np.float32)
    q_pos = np.array([299, 150], dtype=np.int64)
    bounds = mla_attention_tol(kernel_path, "bfloat16")
    o, lse = run_and_check(cache, seqs, q, q_pos, np.zeros(2, np.int64), 576**-0.5, 512, bounds)
    rows, positions = seqs[0]
    o2, lse2 = ops.mla_attention(q, rows, q_pos, positions, 576**-0.5, 512)
    np.testing.assert_allclose(o, o2, **tol("mla_attention", "float32"))
    np.testing.assert_allclose(lse, lse2, **tol("mla_attention", "float32"))


@pytest.mark.parametrize("spread", [10, 100])
def test_large_score_spreads_across_blocks(kernel_path, spread):
    """Large-magnitude q (scores with a standard deviation of `spread`) over bf16 keys of sequences at
    block boundaries (32 tokens per block): one decode token per sequence and a causal chunk."""
    rng = np.random.default_rng(spread)
    lengths = [31, 32, 33, 257]
    D, R = 576, 512
    cache, seqs = build_cache(rng, lengths, 32, D, "bfloat16", chunk=40)
    q_seq_index = np.array([0, 1, 2, 3, 3, 3], dtype=np.int64)
    q_pos = np.array([30, 31, 32, 254, 255, 256], dtype=np.int64)
    q = rng.standard_normal((q_seq_index.size, 4, D), dtype=np.float32) * np.float32(spread)
    bounds = mla_attention_tol(kernel_path, "bfloat16", large_scores=True)
    run_and_check(cache, seqs, q, q_pos, q_seq_index, D**-0.5, R, bounds)


@pytest.mark.parametrize("cp_rank", [0, 1, 2])
def test_helix_shard_of_a_cp_group(cp_rank):
    """Each rank's cache holds only its own blocks; its partial attention is over those keys."""
    rng = np.random.default_rng(cp_rank)
    cache, seqs = build_cache(rng, [200, 45], 16, 24, "float32", cp_rank=cp_rank, cp_size=3)
    for _rows, positions in seqs:
        assert all((p // 16) % 3 == cp_rank for p in positions)
    q = rng.standard_normal((3, 4, 24), dtype=np.float32)
    q_pos, q_seq_index = np.array([199, 44, 30], np.int64), np.array([0, 1, 0], np.int64)
    run_and_check(cache, seqs, q, q_pos, q_seq_index, 0.2, 20, mla_attention_tol("auto", "float32"))


def test_query_order_does_not_matter():
    rng = np.random.default_rng(12)
    cache, seqs = build_cache(rng, [70, 33, 5], 8, 16, "float32")
    q_seq_index = np.array([2, 0, 1, 0, 2], dtype=np.int64)
    q_pos = np.array([4, 69, 32, 10, 2], dtype=np.int64)
    q = rng.standard_normal((5, 3, 16), dtype=np.float32)
    run_and_check(cache, seqs, q, q_pos, q_seq_index, 0.3, 16, mla_attention_tol("auto", "float32"))


# ---- bad inputs ------------------------------------------------------------------------------------------


def good_args():
    rng = np.random.default_rng(13)
    cache, _ = build_cache(rng, [20, 9], 8, 16, "float32")
    q = rng.standard_normal((2, 4, 16), dtype=np.float32)
    pool, block_tables, kv_pos, num_slots = cache.paged_view(np.array([10, 11], np.int64))
    return dict(
        q=q,
        q_pos=np.array([19, 8], np.int64),
        q_seq=np.array([0, 1], np.int64),
        pool=pool,
        block_tables=block_tables,
        kv_pos=kv_pos,
        num_slots=num_slots,
        scale=0.25,
        kv_lora_rank=12,
    )


BAD = [
    ("q", lambda a: a["q"][:, :, :15].copy()),  # D != the pool's row width
    ("q", lambda a: a["q"].astype(np.float64)),
    ("q", lambda a: a["q"][0]),
    ("q_pos", lambda a: a["q_pos"][:1].copy()),
    ("q_pos", lambda a: a["q_pos"].astype(np.int32)),
    ("q_seq", lambda a: np.array([0, 2], np.int64)),  # out of range
    ("q_seq", lambda a: np.array([-1, 0], np.int64)),
    ("q_seq", lambda a: np.array([0], np.int64)),  # length != T
    ("pool", lambda a: a["pool"].astype(np.float64)),
    ("block_tables", lambda a: np.full_like(a["block_tables"], 64)),  # outside the pool's 64 blocks
    ("block_tables", lambda a: a["block_tables"].astype(np.int64)),
    ("kv_pos", lambda a: a["kv_pos"][:, :4].copy()),
    ("num_slots", lambda a: a["num_slots"] + 1000),  # more slots than the block table holds
    ("kv_lora_rank", lambda a: 17),
    ("scale", lambda a: float("nan")),
    ("kernel", lambda a: "tensor_core"),  # a CUDA kernel: the CPU picks its own (set_kernel_path)
    ("num_splits", lambda a: 3),
]


@pytest.mark.parametrize("name,make", BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD)])
def test_bad_inputs_name_the_argument(name, make):
    args = good_args()
    args[name] = make(args)
    with pytest.raises(helix.ArgumentError, match=f"'{name}'"):
        ops.paged_mla_attention(**args)


def test_paged_view_names_an_unknown_sequence():
    cache, _ = build_cache(np.random.default_rng(1), [5], 8, 16, "float32")
    with pytest.raises(helix.ArgumentError, match="'seq_ids'"):
        cache.paged_view(np.array([10, 99], np.int64))
