"""Every numerical tolerance of the test suite, per op and dtype, each with its reason.

Entries are (atol, rtol) for numpy.testing.assert_allclose against the float64 reference.
"""

from __future__ import annotations

TOLERANCES: dict[tuple[str, str], tuple[float, float]] = {
    # (op, dtype): (atol, rtol)  # reason
    # linear: float32 accumulation over K <= 8192 of O(1/sqrt(K))-scaled inputs; bf16 weights are widened
    # exactly, so the reference (which reads the same bf16 values) sees the same rounding as float32.
    ("linear", "float32"): (2e-5, 1e-5),
    ("linear", "bfloat16"): (2e-5, 1e-5),
    # rms_norm: one float32 rounding of x * r * w (the sum of squares is in double).
    ("rms_norm", "float32"): (1e-6, 1e-5),
    # rope: cos/sin rounded to float32 (angles in double), two products per output.
    ("rope", "float32"): (2e-6, 1e-5),
    # rope against transformers: HF forms the angle pos * inv_freq in float32 (error ~ pos * 6e-8 rad).
    ("rope_hf", "float32"): (5e-4, 1e-4),
    # yarn_inv_freq against transformers, which computes the frequencies in float32.
    ("yarn_inv_freq", "float32"): (0.0, 1e-6),
    # silu_mul: float32 exp and one division.
    ("silu_mul", "float32"): (1e-6, 1e-6),
    # moe_route weights: float32 sigmoid, sum and division.
    ("moe_route", "float32"): (1e-6, 1e-5),
    # moe_experts: two float32 linear layers (accumulated over hidden, then F) and the weighted sum.
    ("moe_experts", "float32"): (2e-5, 1e-4),
    ("moe_experts", "bfloat16"): (2e-5, 1e-4),
    # embedding: a copy (bf16 widened exactly).
    ("embedding", "float32"): (0.0, 0.0),
    ("embedding", "bfloat16"): (0.0, 0.0),
}


def tol(op: str, dtype: str) -> dict[str, float]:
    atol, rtol = TOLERANCES[(op, dtype)]
    return {"atol": atol, "rtol": rtol}
