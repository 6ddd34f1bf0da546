"""Every numerical tolerance of the test suite, per op and dtype, each with its reason.

Entries are (atol, rtol) for numpy.testing.assert_allclose against the float64 reference.
"""

from __future__ import annotations

TOLERANCES: dict[tuple[str, str], tuple[float, float]] = {
    # (op, dtype): (atol, rtol)  # reason
    # float32 sum of <= 4 N(0,1) terms in MPI's order vs float64: a few float32 ulps of the operands.
    ("all_reduce_sum", "float32"): (1e-6, 1e-6),
    # bf16 operands summed in float32, rounded once to bf16: half a bf16 ulp (2^-9 relative) of the sum.
    ("all_reduce_sum", "bfloat16"): (1e-6, 2.0**-8),
}


def tol(op: str, dtype: str) -> dict[str, float]:
    atol, rtol = TOLERANCES[(op, dtype)]
    return {"atol": atol, "rtol": rtol}
