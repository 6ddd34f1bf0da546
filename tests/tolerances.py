"""Every numerical tolerance of the test suite, per op and dtype, each with its reason.

Entries are (atol, rtol) for numpy.testing.assert_allclose against the float64 reference.
"""

from __future__ import annotations

TOLERANCES: dict[tuple[str, str], tuple[float, float]] = {
    # (op, dtype): (atol, rtol)  # reason
    # float32 partial attention + LSE merge vs float64: softmax sums over <= ~100 keys in float32.
    ("helix_attention", "float32"): (2e-5, 2e-4),
    # bfloat16 cache: keys are rounded in the test too, but the kernel may also round q (and the
    # probabilities) to bfloat16 for its dot products: ~3 significant digits.
    ("helix_attention", "bfloat16"): (3e-2, 3e-2),
    # fp32 weights exp(lse_i - max) and an fp32 weighted sum of N <= 8 O(1) rows: a few ulps per term.
    ("merge_states", "float32"): (1e-5, 1e-5),
    # float32 sum of <= 4 N(0,1) terms in MPI's order vs float64: a few float32 ulps of the operands.
    ("all_reduce_sum", "float32"): (1e-6, 1e-6),
    # bf16 operands summed in float32, rounded once to bf16: half a bf16 ulp (2^-9 relative) of the sum.
    ("all_reduce_sum", "bfloat16"): (1e-6, 2.0**-8),
}


def tol(op: str, dtype: str) -> dict[str, float]:
    atol, rtol = TOLERANCES[(op, dtype)]
    return {"atol": atol, "rtol": rtol}
