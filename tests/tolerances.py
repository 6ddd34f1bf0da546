"""Every numerical tolerance of the test suite, per op and dtype, each with its reason.

Entries are (atol, rtol) for numpy.testing.assert_allclose against the float64 reference.
"""

from __future__ import annotations

TOLERANCES: dict[tuple[str, str], tuple[float, float]] = {
    # (op, dtype): (atol, rtol)  # reason
    # CUDA kernels (tests/test_cuda_ops.py), inputs already rounded to bf16 in the reference:
    # tensor-core attention rounds the softmax probabilities to bf16 for the P @ V product (2^-9
    # relative per weight, averaging out over keys); scores and sums are fp32. Outputs are O(0.1).
    ("cuda.mla_attention", "bfloat16"): (4e-3, 2e-2),
    # LSE of the same: fp32 scores over D = 576 and an fp32 log-sum: ~1e-5 relative.
    ("cuda.mla_attention.lse", "bfloat16"): (1e-3, 1e-4),
    # fp32 merge of up to 256 parts: one fp32 exp and fma per part.
    ("cuda.merge_states", "float32"): (1e-5, 1e-4),
    # fp32 math; the bf16 output itself is rounded (2^-9 relative).
    ("cuda.rms_norm", "float32"): (1e-5, 1e-5),
    ("cuda.rms_norm", "bfloat16"): (1e-2, 8e-3),
    # float64 angle, fp32 rotation: a few fp32 ulps; bf16 output rounding as above.
    ("cuda.rope", "float32"): (1e-5, 1e-5),
    ("cuda.rope", "bfloat16"): (1e-2, 8e-3),
    ("cuda.silu_mul", "float32"): (1e-6, 1e-5),
    ("cuda.silu_mul", "bfloat16"): (1e-2, 8e-3),
    # fp32 sigmoid and renormalization of <= 8 weights.
    ("cuda.moe_route", "float32"): (1e-6, 1e-5),
    # cuBLAS bf16 x bf16 with fp32 accumulation over K <= 1024; bf16 output is rounded.
    ("cuda.linear", "float32"): (1e-3, 1e-3),
    ("cuda.linear", "bfloat16"): (2e-2, 8e-3),
}


def tol(op: str, dtype: str) -> dict[str, float]:
    atol, rtol = TOLERANCES[(op, dtype)]
    return {"atol": atol, "rtol": rtol}
