"""The issue-2 demo: Helix-sharded MLA attention equals unsharded attention.

A DeepSeek-V3-shaped attention (128 heads, 576-wide latent keys, 512-wide values) over a 32K-token context
stored in bfloat16 is split over N context-parallel pieces by the Helix block rule (position p lives on piece
(p // tokens_per_block) % N). Each piece holds its keys in its own paged KV cache and computes its partial
attention (o, lse) with the runtime; the pieces are merged exactly by log-sum-exp and compared with the
unsharded attention and the float64 reference.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

__all__ = ["DemoConfig", "main", "merge", "run"]


@dataclass(frozen=True)
class DemoConfig:
    shards: int = 4
    context: int = 32768
    heads: int = 128
    kv_lora_rank: int = 512
    rope_dim: int = 64
    tokens_per_block: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.shards, self.context, self.heads, self.kv_lora_rank, self.tokens_per_block) < 1:
            raise ValueError("shards, context, heads, kv_lora_rank and tokens_per_block must be >= 1")
        if self.rope_dim < 0:
            raise ValueError("rope_dim must be >= 0")

    @property
    def head_dim(self) -> int:
        return self.kv_lora_rank + self.rope_dim


def merge(o_parts: np.ndarray, lse_parts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact merge: o_parts [N, T, H, R], lse_parts [N, T, H] -> (o [T, H, R], lse [T, H])."""
    from helix import ops

    return ops.merge_states(np.ascontiguousarray(o_parts), np.ascontiguousarray(lse_parts))


def run(cfg: DemoConfig) -> dict[str, float]:
    import ml_dtypes

    import helix
    from helix import ops, reference

    rng = np.random.default_rng(cfg.seed)
    D, R, H = cfg.head_dim, cfg.kv_lora_rank, cfg.heads
    keys = rng.standard_normal((cfg.context, D), dtype=np.float32).astype(ml_dtypes.bfloat16)
    positions = np.arange(cfg.context, dtype=np.int64)
    q = rng.standard_normal((1, H, D), dtype=np.float32)  # the next token, after the whole context
    q_pos = np.array([cfg.context], dtype=np.int64)
    scale = D**-0.5
    one = np.zeros(1, dtype=np.int64)

    def cache_for(rank: int, size: int) -> helix.PagedKVCache:
        owned = (positions // cfg.tokens_per_block) % size == rank
        blocks = -(-int(owned.sum()) // cfg.tokens_per_block)
        cache = helix.PagedKVCache(max(blocks, 1), cfg.tokens_per_block, D, "bfloat16", rank, size)
        cache.add_sequence(0)
        if owned.any():
            cache.append(0, positions[owned], np.ascontiguousarray(keys[owned]))
        return cache

    pieces = [cache_for(rank, cfg.shards) for rank in range(cfg.shards)]
    o_parts, lse_parts, piece_seconds = [], [], []
    for cache in pieces:
        view = cache.paged_view(one)  # (pool, block_tables, kv_pos, num_slots) of sequence 0
        ops.paged_mla_attention(q, q_pos, one, *view, scale, R)  # warm-up
        t0 = time.perf_counter()
        o, lse = ops.paged_mla_attention(q, q_pos, one, *view, scale, R)
        piece_seconds.append(time.perf_counter() - t0)
        o_parts.append(o)
        lse_parts.append(lse)
    o_parts_a, lse_parts_a = np.stack(o_parts), np.stack(lse_parts)
    merge(o_parts_a, lse_parts_a)  # warm-up
    t0 = time.perf_counter()
    o_merged, lse_merged = merge(o_parts_a, lse_parts_a)
    merge_seconds = time.perf_counter() - t0

    full = cache_for(0, 1).paged_view(one)
    t0 = time.perf_counter()
    o_full, lse_full = ops.paged_mla_attention(q, q_pos, one, *full, scale, R)
    full_seconds = time.perf_counter() - t0
    o_ref, lse_ref = reference.mla_attention(q, keys, q_pos, positions, scale, R)
    return {
        "max_err_vs_unsharded_o": float(np.abs(o_merged - o_full).max()),
        "max_err_vs_unsharded_lse": float(np.abs(lse_merged - lse_full).max()),
        "max_err_vs_float64_o": float(np.abs(o_merged - o_ref).max()),
        "max_err_vs_float64_lse": float(np.abs(lse_merged - lse_ref).max()),
        "piece_seconds_mean": float(np.mean(piece_seconds)),
        "piece_seconds_max": float(np.max(piece_seconds)),
        "merge_seconds": merge_seconds,
        "unsharded_seconds": full_seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="helix demo", description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4, help="context-parallel pieces N (default 4)")
    parser.add_argument("--context", type=int, default=32768, help="context length in tokens (default 32768)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        cfg = DemoConfig(shards=args.shards, context=args.context, seed=args.seed)
    except ValueError as e:
        parser.error(str(e))
    from helix import ops

    print(
        f"Helix demo: MLA attention, {cfg.heads} heads, {cfg.head_dim}-wide latent keys "
        f"({cfg.kv_lora_rank} value), {cfg.context} tokens in bfloat16, {cfg.shards} pieces "
        f"(block rule, {cfg.tokens_per_block} tokens per block); kernels: {ops.kernel_path()}, "
        f"{ops.num_threads()} threads"
    )
    r = run(cfg)
    print(
        f"  time per piece      : {r['piece_seconds_mean'] * 1e3:8.2f} ms "
        f"(max {r['piece_seconds_max'] * 1e3:.2f} ms)"
    )
    print(f"  merge time          : {r['merge_seconds'] * 1e3:8.3f} ms")
    print(f"  unsharded attention : {r['unsharded_seconds'] * 1e3:8.2f} ms")
    print(
        f"  max |o - o_unsharded|     = {r['max_err_vs_unsharded_o']:.3e}   "
        f"max |lse - lse_unsharded| = {r['max_err_vs_unsharded_lse']:.3e}"
    )
    print(
        f"  max |o - o_float64|       = {r['max_err_vs_float64_o']:.3e}   "
        f"max |lse - lse_float64|   = {r['max_err_vs_float64_lse']:.3e}"
    )
    ok = r["max_err_vs_unsharded_o"] < 1e-4 and r["max_err_vs_float64_o"] < 1e-2
    print("  sharded == unsharded:", "yes" if ok else "NO")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
