"""Rotary-embedding frequencies for DeepSeek-V3 (plain RoPE or YaRN), exactly as Hugging Face transformers
computes them (``_compute_yarn_parameters`` and DeepseekV3Attention's softmax scale), in float64.

Imports nothing compiled: the runtime's ``rope`` op takes ``inv_freq`` (cast to float32) and
``attention_factor`` from here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["yarn_get_mscale", "yarn_inv_freq", "yarn_softmax_scale"]


def _rope_type(scaling: Mapping[str, Any] | None) -> str:
    if not scaling:
        return "default"
    # The original config.json says "type", transformers 5 says "rope_type".
    kind = scaling.get("rope_type", scaling.get("type")) or "default"
    if kind not in ("default", "yarn"):
        raise ValueError(f"unsupported rope scaling type {kind!r} (supported: default, yarn)")
    return str(kind)


def _yarn_factor(scaling: Mapping[str, Any], max_position_embeddings: int | None) -> float:
    factor = scaling.get("factor")
    if factor is None:
        # DeepSeek-style configs may leave factor out: the ratio of the extended to the original context.
        if max_position_embeddings is None:
            raise ValueError("yarn rope scaling without 'factor' needs max_position_embeddings")
        factor = max_position_embeddings / scaling["original_max_position_embeddings"]
    return float(factor)


def yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude correction: 0.1 * mscale * ln(scale) + 1 for scale > 1, else 1."""
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def yarn_inv_freq(
    rope_dim: int,
    theta: float,
    scaling: Mapping[str, Any] | None = None,
    *,
    max_position_embeddings: int | None = None,
) -> tuple[np.ndarray, float]:
    """Inverse frequencies [rope_dim // 2] (float64) of the rotary pairs and the attention factor that
    multiplies cos and sin.

    ``scaling`` is the config's ``rope_scaling`` / ``rope_parameters`` dict (None or type "default": plain
    RoPE, attention factor 1). YaRN keys: factor, original_max_position_embeddings, beta_fast (32),
    beta_slow (1), mscale, mscale_all_dim, attention_factor, truncate (True). Pairs whose wavelength is
    short (below the low bound) keep their frequency, long ones are divided by factor, a linear ramp between.
    """
    if rope_dim <= 0 or rope_dim % 2:
        raise ValueError(f"rope_dim must be a positive even number, got {rope_dim}")
    if theta <= 1:
        raise ValueError(f"rope theta must be > 1, got {theta}")
    dim = rope_dim
    pos_freqs = float(theta) ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    if _rope_type(scaling) == "default":
        return 1.0 / pos_freqs, 1.0
    assert scaling is not None
    factor = _yarn_factor(scaling, max_position_embeddings)
    original = scaling["original_max_position_embeddings"]

    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim)
        else:
            attention_factor = yarn_get_mscale(factor)
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1

    def correction_dim(num_rotations: float) -> float:
        # The pair index whose wavelength fits num_rotations times into the original context.
        return (dim * math.log(original / (num_rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as transformers: avoid a zero-width ramp
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    extrapolation = 1.0 - ramp  # 1: keep the original frequency, 0: divide it by factor
    inv_freq = (1.0 / (factor * pos_freqs)) * (1.0 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, float(attention_factor)


def yarn_softmax_scale(
    qk_head_dim: int, scaling: Mapping[str, Any] | None = None, *, max_position_embeddings: int | None = None
) -> float:
    """The attention softmax scale of DeepSeek-V3: qk_head_dim^-0.5, times mscale^2 with
    mscale = yarn_get_mscale(factor, mscale_all_dim) when YaRN is on and mscale_all_dim is set
    (DeepSeek-V3: 192^-0.5 * (0.1 ln 40 + 1)^2 = 0.1352338)."""
    if qk_head_dim <= 0:
        raise ValueError(f"qk_head_dim must be positive, got {qk_head_dim}")
    scale = qk_head_dim**-0.5
    if _rope_type(scaling) != "default":
        assert scaling is not None
        mscale_all_dim = scaling.get("mscale_all_dim") or 0
        if mscale_all_dim:
            m = yarn_get_mscale(_yarn_factor(scaling, max_position_embeddings), mscale_all_dim)
            scale *= m * m
    return float(scale)
