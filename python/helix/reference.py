"""Float64 NumPy specification of the runtime's ops. Imports nothing compiled.

Every compiled kernel is tested against the function of the same name here. Inputs may be float32 or
ml_dtypes.bfloat16 arrays; they are widened to float64 exactly, so the reference sees the same values
the kernel stores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["mla_attention", "paged_mla_attention"]


def mla_attention(
    q: np.ndarray,
    kv: np.ndarray,
    q_pos: np.ndarray,
    kv_pos: np.ndarray,
    scale: float,
    kv_lora_rank: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Partial MLA attention (absorbed form) over one shard of latent keys.

    q [T, H, D], kv [S, D] (the first kv_lora_rank columns are the latent, also the value),
    q_pos [T], kv_pos [S] int64; key s is visible to query t iff kv_pos[s] <= q_pos[t].
    Returns o [T, H, kv_lora_rank] (normalized) and lse [T, H] (natural log of the sum of
    exp(scale * q.k) over visible keys); a query with nothing visible gets o = 0, lse = -inf.
    """
    q64 = np.asarray(q, dtype=np.float64)
    kv64 = np.asarray(kv, dtype=np.float64)
    T, H, D = q64.shape
    S = kv64.shape[0]
    if kv64.shape != (S, D) or not 0 < kv_lora_rank <= D:
        raise ValueError("kv must be [S, D] and 0 < kv_lora_rank <= D")
    scores = scale * np.einsum("thd,sd->ths", q64, kv64)  # [T, H, S]
    visible = np.asarray(kv_pos)[None, :] <= np.asarray(q_pos)[:, None]  # [T, S]
    scores = np.where(visible[:, None, :], scores, -np.inf)
    o = np.zeros((T, H, kv_lora_rank))
    lse = np.full((T, H), -np.inf)
    if S == 0:
        return o, lse
    mx = scores.max(axis=-1, keepdims=True)  # [T, H, 1]
    any_visible = np.isfinite(mx[..., 0])
    weights = np.exp(scores - np.where(np.isfinite(mx), mx, 0.0))  # invisible -> exp(-inf) = 0
    total = weights.sum(axis=-1)  # [T, H]
    value = kv64[:, :kv_lora_rank]
    o[any_visible] = (weights @ value)[any_visible] / total[any_visible][:, None]
    lse[any_visible] = mx[..., 0][any_visible] + np.log(total[any_visible])
    return o, lse


def paged_mla_attention(
    q: np.ndarray,
    q_pos: np.ndarray,
    seq_keys: Sequence[np.ndarray],
    seq_positions: Sequence[np.ndarray],
    q_seq_index: np.ndarray,
    scale: float,
    kv_lora_rank: int,
) -> tuple[np.ndarray, np.ndarray]:
    """mla_attention for a batch of sequences, each query token reading its own sequence's keys.

    q [T, H, D]; q_pos [T]; seq_keys[b] [S_b, D] and seq_positions[b] [S_b] are the keys (in any order)
    and global positions of sequence b, as the cache holds them; q_seq_index [T] in [0, B) names the
    sequence of each query token. Returns o [T, H, kv_lora_rank], lse [T, H].
    """
    q64 = np.asarray(q, dtype=np.float64)
    T, H, _ = q64.shape
    o = np.zeros((T, H, kv_lora_rank))
    lse = np.full((T, H), -np.inf)
    index = np.asarray(q_seq_index)
    for b, (keys, positions) in enumerate(zip(seq_keys, seq_positions, strict=True)):
        tokens = np.flatnonzero(index == b)
        if tokens.size:
            o[tokens], lse[tokens] = mla_attention(
                q64[tokens], keys, np.asarray(q_pos)[tokens], positions, scale, kv_lora_rank
            )
    return o, lse
