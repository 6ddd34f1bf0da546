"""Float64 NumPy specification of the decoder-layer ops of the compiled runtime (helix._core.layers):
linear, rms_norm, rope, silu_mul, moe_route, moe_experts, embedding. Imports nothing compiled.

Each function has the name of its op; arrays of any float dtype (bfloat16 included) are read as float64.
"""

from __future__ import annotations

import numpy as np

__all__ = ["embedding", "linear", "moe_experts", "moe_route", "rms_norm", "rope", "silu_mul"]


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
