"""Every numerical tolerance of the test suite, per op and dtype, each with its reason.

Entries are (atol, rtol) for numpy.testing.assert_allclose against the float64 reference.
"""

from __future__ import annotations

TOLERANCES: dict[tuple[str, str], tuple[float, float]] = {
    # (op, dtype): (atol, rtol)  # reason
    # fp32 weights exp(lse_i - max) and an fp32 weighted sum of N <= 8 O(1) rows: a few ulps per term.
    ("merge_states", "float32"): (1e-5, 1e-5),
}


def tol(op: str, dtype: str) -> dict[str, float]:
    atol, rtol = TOLERANCES[(op, dtype)]
    return {"atol": atol, "rtol": rtol}
