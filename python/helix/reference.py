"""Float64 NumPy specification of the runtime's ops. Imports nothing compiled.

Every compiled kernel is tested against the function of the same name here. Inputs may be float32 or
ml_dtypes.bfloat16 arrays; they are widened to float64 exactly, so the reference sees the same values
the kernel stores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "embedding",
    "linear",
    "merge_states",
    "mla_attention",
    "moe_experts",
    "moe_route",
    "paged_mla_attention",
    "rms_norm",
    "rope",
    "silu_mul",
]


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


def merge_states(o_parts: np.ndarray, lse_parts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact log-sum-exp merge of N partial attention states, in float64.

    o_parts [N, T, H, D], lse_parts [N, T, H] (natural log) -> (o [T, H, D], lse [T, H]).

    mx = max_i lse_i; w_i = exp(lse_i - mx); o = sum_i w_i o_i / sum_i w_i; lse = mx + log(sum_i w_i).
    Rows whose parts are all -inf (or N = 0) give (0, -inf). A part of weight 0 contributes nothing,
    even if its o is not finite (an empty shard's output is never read).
    """
    o_parts = np.asarray(o_parts, dtype=np.float64)
    lse_parts = np.asarray(lse_parts, dtype=np.float64)
    if o_parts.ndim != 4:
        raise ValueError(f"o_parts must be [N, T, H, D], got shape {o_parts.shape}")
    if lse_parts.shape != o_parts.shape[:3]:
        raise ValueError(f"lse_parts must have shape {o_parts.shape[:3]}, got {lse_parts.shape}")
    _, t, h, d = o_parts.shape
    if lse_parts.shape[0] == 0:
        return np.zeros((t, h, d)), np.full((t, h), -np.inf)
    mx = lse_parts.max(axis=0)  # [T, H]
    empty = mx == -np.inf
    safe_mx = np.where(empty, 0.0, mx)
    w = np.exp(lse_parts - safe_mx[None])  # [N, T, H]; 0 for -inf parts
    total = w.sum(axis=0)  # [T, H]; >= 1 where not empty
    weights = w / np.where(empty, 1.0, total)[None]
    used = np.where(weights[..., None] > 0, o_parts, 0.0)  # weight-0 parts are never read
    o = (weights[..., None] * used).sum(axis=0)
    with np.errstate(divide="ignore"):
        lse = np.where(empty, -np.inf, safe_mx + np.log(np.where(empty, 1.0, total)))
    return o, lse


# ---- decoder-layer ops (helix._core.layers) ------------------------------------------------------


def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).astype(np.float64)


def linear(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x [T, K] @ w[N, K]^T -> [T, N]."""
    return _f64(x) @ _f64(w).T


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x [T, D] * rsqrt(mean(x^2, -1) + eps) * weight [D]."""
    x = _f64(x)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * _f64(weight)


def rope(
    x: np.ndarray,
    positions: np.ndarray,
    inv_freq: np.ndarray,
    offset: int = 0,
    attention_factor: float = 1.0,
) -> np.ndarray:
    """A rotated copy of x [T, S] or [T, H, S]: interleaved pairs of channels [offset, offset + P) turned by
    angle positions[t] * inv_freq[i] (P = 2 len(inv_freq)), cos and sin times attention_factor."""
    out = _f64(x).copy()
    view = out if out.ndim == 3 else out[:, None, :]
    half = len(inv_freq)
    angle = np.asarray(positions, dtype=np.float64)[:, None] * _f64(inv_freq)[None, :]  # [T, P/2]
    cos = (np.cos(angle) * attention_factor)[:, None, :]
    sin = (np.sin(angle) * attention_factor)[:, None, :]
    even = view[:, :, offset : offset + 2 * half : 2].copy()
    odd = view[:, :, offset + 1 : offset + 2 * half : 2].copy()
    view[:, :, offset : offset + 2 * half : 2] = even * cos - odd * sin
    view[:, :, offset + 1 : offset + 2 * half : 2] = odd * cos + even * sin
    return out


def silu_mul(gate_up: np.ndarray) -> np.ndarray:
    """silu(gate_up[:, :F]) * gate_up[:, F:] -> [T, F]."""
    gu = _f64(gate_up)
    f = gu.shape[1] // 2
    gate, up = gu[:, :f], gu[:, f:]
    return gate * (0.5 + 0.5 * np.tanh(0.5 * gate)) * up  # sigmoid(g) = (1 + tanh(g/2)) / 2, no overflow


def moe_route(
    logits: np.ndarray,
    bias: np.ndarray,
    top_k: int,
    n_group: int,
    topk_group: int,
    norm_topk_prob: bool = True,
    routed_scaling_factor: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """DeepSeek-V3 noaux_tc routing of logits [T, E]: (topk_idx int64 [T, top_k] in descending biased score,
    ties to the lower index; topk_weight float64 [T, top_k])."""
    logits = _f64(logits)
    t_count, e_count = logits.shape
    group = e_count // n_group
    s = 1.0 / (1.0 + np.exp(-logits))
    b = s + _f64(bias)[None, :]
    idx = np.zeros((t_count, top_k), dtype=np.int64)
    weight = np.zeros((t_count, top_k), dtype=np.float64)
    for t in range(t_count):
        grouped = b[t].reshape(n_group, group)
        group_score = np.sort(grouped, axis=1)[:, ::-1][:, : min(2, group)].sum(axis=1)
        kept = sorted(range(n_group), key=lambda g: (-group_score[g], g))[:topk_group]
        eligible = [e for g in kept for e in range(g * group, (g + 1) * group)]
        chosen = sorted(eligible, key=lambda e: (-b[t, e], e))[:top_k]
        idx[t] = chosen
        w = s[t, chosen]
        if norm_topk_prob:
            w = w / (w.sum() + 1e-20)
        weight[t] = w * routed_scaling_factor
    return idx, weight


def moe_experts(
    h: np.ndarray,
    topk_idx: np.ndarray,
    topk_weight: np.ndarray,
    gate_up: np.ndarray,
    down: np.ndarray,
    local_first: int = 0,
) -> np.ndarray:
    """The contribution [T, hidden] of experts [local_first, local_first + n_local) to the routed tokens:
    sum_k topk_weight[t,k] * down_e @ silu_mul(gate_up_e @ h[t])."""
    h = _f64(h)
    gate_up, down = _f64(gate_up), _f64(down)
    out = np.zeros_like(h)
    for t in range(h.shape[0]):
        for k in range(topk_idx.shape[1]):
            e = int(topk_idx[t, k]) - local_first
            if 0 <= e < gate_up.shape[0]:
                act = silu_mul((gate_up[e] @ h[t])[None, :])[0]
                out[t] += float(topk_weight[t, k]) * (down[e] @ act)
    return out


def embedding(ids: np.ndarray, table: np.ndarray, vocab_start: int = 0) -> np.ndarray:
    """table[ids - vocab_start] for ids in this shard [vocab_start, vocab_start + V), zero rows otherwise."""
    table = _f64(table)
    rows = np.asarray(ids, dtype=np.int64) - vocab_start
    inside = (rows >= 0) & (rows < table.shape[0])
    out = np.zeros((len(rows), table.shape[1]), dtype=np.float64)
    out[inside] = table[rows[inside]]
    return out
