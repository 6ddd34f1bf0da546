"""Float64 NumPy specification of ``merge_states`` (to be folded into helix.reference).

Imports nothing compiled: this is the readable twin that the kernel is tested against.
"""

from __future__ import annotations

import numpy as np

__all__ = ["merge_states"]


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
