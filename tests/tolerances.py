"""Every numerical tolerance of the test suite, per op and dtype, each with its reason.

Entries are (atol, rtol) for numpy.testing.assert_allclose against the float64 reference.
"""

from __future__ import annotations

TOLERANCES: dict[tuple[str, str], tuple[float, float]] = {
    # (op, dtype): (atol, rtol)  # reason
    # fp32 weights exp(lse_i - max) and an fp32 weighted sum of N <= 8 O(1) rows: a few ulps per term.
    ("merge_states", "float32"): (1e-5, 1e-5),
    # fp32 dot products over D <= 576 and an fp32 online softmax (exp2 polynomial, ~2e-7 relative) of
    # O(1) scores; o is a convex combination of O(1) values: errors of a few 1e-6, margin x10.
    ("mla_attention", "float32"): (5e-5, 5e-5),
    # bfloat16 keys: on the BF16 dot-product path (AMD auto, or forced) q and the softmax weights are rounded
    # to bf16 (2^-9 relative) before the products; o is a weighted mean of O(1) values, so ~1e-3 typical.
    ("mla_attention", "bfloat16"): (1e-2, 1e-2),
}


def tol(op: str, dtype: str) -> dict[str, float]:
    atol, rtol = TOLERANCES[(op, dtype)]
    return {"atol": atol, "rtol": rtol}
