"""Pearson's chi-square goodness-of-fit p-value, for the statistical tests of sampling (no SciPy here)."""

from __future__ import annotations

import math
from collections import Counter

__all__ = ["chi_square_p_value"]


def chi_square_p_value(counts: Counter, exact: dict[tuple[int, ...], float], n: int) -> float:
    """Upper tail of Pearson's chi-square of ``counts`` (n draws) against the probabilities ``exact`` (Wilson-
    Hilferty normal approximation); cells expecting fewer than 5 draws are pooled into one; an outcome of
    probability 0 (or not in ``exact``) that occurs gives 0."""
    if sum(counts.values()) != n:
        raise ValueError(f"counts hold {sum(counts.values())} draws, not {n}")
    if any(exact.get(c, 0.0) == 0.0 for c in counts if counts[c]):
        return 0.0
    stat, cells, pooled_obs, pooled_exp = 0.0, 0, 0, 0.0
    for cell, prob in exact.items():
        if prob * n < 5:
            pooled_obs, pooled_exp = pooled_obs + counts[cell], pooled_exp + prob * n
            continue
        stat += (counts[cell] - prob * n) ** 2 / (prob * n)
        cells += 1
    if pooled_exp > 0:
        stat += (pooled_obs - pooled_exp) ** 2 / pooled_exp
        cells += 1
    df = max(cells - 1, 1)
    z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))
