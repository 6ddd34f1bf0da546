"""linear, rms_norm, silu_mul and embedding (helix._core.layers) against the float64 reference."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from helix import reference as ref
from tolerances import tol

layers = pytest.importorskip("helix._core").layers
ArgumentError = pytest.importorskip("helix._core").ArgumentError

ISAS = list(layers.linear_isas())
HAS_AMX = "amx" in ISAS
HAS_BF16_SPLIT = "avx512_bf16_split" in ISAS
SPLIT_ISAS = ("amx", "avx512_bf16_split")  # x as bf16 hi + lo
ROUNDED_ISAS = ("amx_bf16", "avx512_bf16")  # x rounded once to bf16
NO_AMX = pytest.mark.skipif(not HAS_AMX, reason="no usable AMX-BF16 on this CPU/OS")
NO_BF16 = pytest.mark.skipif(not HAS_BF16_SPLIT, reason="no AVX512_BF16 on this CPU")


def _linear_tol(isa: str, dtype: str) -> dict:
    if dtype == "bfloat16" and isa in ROUNDED_ISAS:
        return tol("linear.bf16", dtype)
    return tol("linear.split" if isa in SPLIT_ISAS and dtype == "bfloat16" else "linear", dtype)


def _rounded_x(x: np.ndarray) -> np.ndarray:
    """x rounded to bf16 (nearest even, as the one-product paths do) and back to float32."""
    return x.astype(ml_dtypes.bfloat16).astype(np.float32)


def _auto_tol(t: int, dtype: str) -> dict:
    """The tolerance of the path Auto picks: a split path for bf16 weights from 8 tokens on (AMX at 8,
    AVX512_BF16 at 16), where the CPU has one."""
    split = dtype == "bfloat16" and t >= layers.LINEAR_AMX_MIN_TOKENS and (HAS_AMX or HAS_BF16_SPLIT)
    return tol("linear.split" if split else "linear", dtype)


def _weight(rng: np.random.Generator, n: int, k: int, dtype: str) -> np.ndarray:
    w = (rng.standard_normal((n, k)) / np.sqrt(max(k, 1))).astype(np.float32)
    return w.astype(ml_dtypes.bfloat16) if dtype == "bfloat16" else w


# ---- linear ---------------------------------------------------------------------------------------------

# (T, N, K): decode sizes, ragged tails of every tile (rows % 4, tokens % 4, K % 16), T past one token
# block (K = 8192 gives 32-token blocks).
LINEAR_SHAPES = [
    (1, 64, 256),
    (1, 37, 100),
    (3, 21, 17),
    (5, 16, 1),
    (16, 40, 48),
    (17, 9, 33),
    (70, 20, 8192),
]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", LINEAR_SHAPES)
def test_linear_matches_reference(shape, dtype):
    t, n, k = shape
    rng = np.random.default_rng(t * 1000 + n + k)
    x = rng.standard_normal((t, k)).astype(np.float32)
    w = _weight(rng, n, k, dtype)
    np.testing.assert_allclose(layers.linear(x, w), ref.linear(x, w), **_auto_tol(t, dtype))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_linear_every_simd_path(isa, dtype):
    rng = np.random.default_rng(7)
    for t, n, k in [(1, 23, 77), (6, 13, 40), (9, 8, 300)]:
        x = rng.standard_normal((t, k)).astype(np.float32)
        w = _weight(rng, n, k, dtype)
        np.testing.assert_allclose(layers.linear(x, w, isa=isa), ref.linear(x, w), **_linear_tol(isa, dtype))


# T spans a partial 16-token tile (2, 5), the threshold (8), a ragged token pair (33) and several token
# blocks (512 at K = 2100: 96-token blocks); N odd (not a multiple of 16), K not a multiple of 32.
@pytest.mark.skipif(not HAS_AMX, reason="no usable AMX-BF16 on this CPU/OS")
@pytest.mark.parametrize("t", [2, 5, 8, 33, 512])
def test_linear_amx_accumulates_and_matches_reference_and_avx512(t):
    rng = np.random.default_rng(t)
    n, k = (37, 2100) if t == 512 else (45, 100)
    x = rng.standard_normal((t, k)).astype(np.float32)
    w = _weight(rng, n, k, "bfloat16")
    resid = rng.standard_normal((t, n)).astype(np.float32)
    out = resid.copy()
    layers.linear(x, w, out=out, accumulate=True, isa="amx")
    np.testing.assert_allclose(out, resid + ref.linear(x, w), **tol("linear.split", "bfloat16"))
    avx = layers.linear(x, w, isa="avx512")
    np.testing.assert_allclose(out - resid, avx, **tol("linear.split", "bfloat16"))


@pytest.mark.skipif(not HAS_AMX, reason="no usable AMX-BF16 on this CPU/OS")
def test_linear_auto_path_rule():
    rng = np.random.default_rng(3)
    k, n, t_min = 96, 40, layers.LINEAR_AMX_MIN_TOKENS
    wb = _weight(rng, n, k, "bfloat16")
    wf = _weight(rng, n, k, "float32")
    for t in (t_min - 1, t_min, 3 * t_min + 1):
        x = rng.standard_normal((t, k)).astype(np.float32)
        # bf16 weights: AMX from t_min tokens on, the SIMD path below (bitwise the same call).
        want = layers.linear(x, wb, isa="amx" if t >= t_min else layers.linear_isa())
        np.testing.assert_array_equal(layers.linear(x, wb), want)
        # float32 weights never use AMX (isa="amx" runs them on AVX-512).
        np.testing.assert_array_equal(layers.linear(x, wf), layers.linear(x, wf, isa="avx512"))
        np.testing.assert_array_equal(layers.linear(x, wf, isa="amx"), layers.linear(x, wf, isa="avx512"))


# The bf16 product paths: T below the threshold (2, 15), a half panel (16), ragged 32-token panels (33) and
# many panels / token blocks (512 at K = 2101); N not a multiple of the tiles, K odd (the last weight pairs
# with zero). x split: float32-grade. x rounded: against the float64 product of the bf16-rounded x only the
# fp32 accumulation differs; against the unrounded x (and the AVX-512 path), bf16-grade.
@pytest.mark.parametrize(
    "isa",
    [
        pytest.param("avx512_bf16_split", marks=NO_BF16),
        pytest.param("avx512_bf16", marks=NO_BF16),
        pytest.param("amx_bf16", marks=NO_AMX),
    ],
)
@pytest.mark.parametrize("t", [2, 15, 16, 33, 512])
def test_linear_bf16_paths_accumulate_and_match_reference_and_avx512(isa, t):
    rng = np.random.default_rng(100 + t)
    n, k = (37, 2101) if t == 512 else (45, 101)
    x = rng.standard_normal((t, k)).astype(np.float32)
    w = _weight(rng, n, k, "bfloat16")
    resid = rng.standard_normal((t, n)).astype(np.float32)
    out = resid.copy()
    layers.linear(x, w, out=out, accumulate=True, isa=isa)
    if isa in ROUNDED_ISAS:
        np.testing.assert_allclose(out, resid + ref.linear(_rounded_x(x), w), **tol("linear", "bfloat16"))
        # A real rounding of x, not a float32-grade product: further from the unrounded reference than 1e-4.
        assert np.abs(out - resid - ref.linear(x, w)).max() > 1e-4
    np.testing.assert_allclose(out, resid + ref.linear(x, w), **_linear_tol(isa, "bfloat16"))
    np.testing.assert_allclose(out - resid, layers.linear(x, w, isa="avx512"), **_linear_tol(isa, "bfloat16"))
    # float32 weights have no bf16 path: they run the AVX-512 one (bitwise).
    wf = _weight(rng, n, k, "float32")
    np.testing.assert_array_equal(layers.linear(x, wf, isa=isa), layers.linear(x, wf, isa="avx512"))


@pytest.mark.skipif(not HAS_BF16_SPLIT, reason="no AVX512_BF16 on this CPU (precision bf16 changes nothing)")
def test_linear_precision_bf16_rounds_x_from_16_tokens_only():
    rng = np.random.default_rng(5)
    w = _weight(rng, 40, 96, "bfloat16")
    wf = _weight(rng, 40, 96, "float32")
    xs = {t: rng.standard_normal((t, 96)).astype(np.float32) for t in (1, 8, 15, 16, 64)}
    float32_grade = {t: layers.linear(x, w) for t, x in xs.items()}
    split_64 = layers.linear(xs[64], w, isa="avx512_bf16_split")
    rounded = "amx_bf16" if HAS_AMX else "avx512_bf16"
    assert layers.linear_precision() == "float32"
    layers.set_linear_precision("bf16")
    try:
        assert layers.linear_precision() == "bf16"
        for t, x in xs.items():
            want = (
                layers.linear(x, w, isa=rounded) if t >= layers.LINEAR_BF16_MIN_TOKENS else float32_grade[t]
            )
            np.testing.assert_array_equal(layers.linear(x, w), want)
            np.testing.assert_array_equal(layers.linear(x, wf), layers.linear(x, wf, isa=layers.linear_isa()))
        # A named path runs as named, whatever the precision.
        np.testing.assert_array_equal(layers.linear(xs[64], w, isa="avx512_bf16_split"), split_64)
    finally:
        layers.set_linear_precision("float32")
    np.testing.assert_array_equal(layers.linear(xs[64], w), float32_grade[64])
    with pytest.raises(ArgumentError, match="'precision'"):
        layers.set_linear_precision("fp8")


@pytest.mark.skipif(not HAS_BF16_SPLIT or HAS_AMX, reason="needs AVX512_BF16 without AMX (AMX runs T >= 8)")
def test_linear_auto_uses_bf16_split_for_prefill_sized_calls():
    rng = np.random.default_rng(4)
    w = _weight(rng, 40, 96, "bfloat16")
    for t, want_isa in ((1, "avx512"), (8, "avx512"), (64, "avx512_bf16_split")):
        x = rng.standard_normal((t, 96)).astype(np.float32)
        np.testing.assert_array_equal(layers.linear(x, w), layers.linear(x, w, isa=want_isa))


def test_linear_accumulates_into_out():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 50)).astype(np.float32)
    w = _weight(rng, 30, 50, "bfloat16")
    resid = rng.standard_normal((4, 30)).astype(np.float32)
    out = resid.copy()
    got = layers.linear(x, w, out=out, accumulate=True)
    assert got is out
    np.testing.assert_allclose(out, resid + ref.linear(x, w), **tol("linear", "bfloat16"))
    # Without accumulate the old contents are overwritten.
    layers.linear(x, w, out=out)
    np.testing.assert_allclose(out, ref.linear(x, w), **tol("linear", "bfloat16"))


def test_linear_empty_and_zero_k():
    assert layers.linear(np.zeros((0, 8), np.float32), np.ones((3, 8), np.float32)).shape == (0, 3)
    np.testing.assert_array_equal(layers.linear(np.zeros((2, 0), np.float32), np.ones((3, 0), np.float32)), 0)


def test_linear_errors_name_the_argument():
    x = np.ones((2, 8), np.float32)
    w = np.ones((3, 8), np.float32)
    with pytest.raises(ArgumentError, match="'w'"):
        layers.linear(x, np.ones((3, 9), np.float32))
    with pytest.raises(ArgumentError, match="'x'"):
        layers.linear(x.astype(np.float64), w)
    with pytest.raises(ArgumentError, match="'x'"):
        layers.linear(np.ones((8, 2), np.float32).T, w)  # not C-contiguous
    with pytest.raises(ArgumentError, match="'w'"):
        layers.linear(x, np.ones((3, 8), np.float16))
    with pytest.raises(ArgumentError, match="'out'"):
        layers.linear(x, w, out=np.ones((2, 4), np.float32))
    with pytest.raises(ArgumentError, match="'out'"):
        layers.linear(x, w, accumulate=True)
    with pytest.raises(ArgumentError, match="'isa'"):
        layers.linear(x, w, isa="sse9")
    buf = np.ones((2, 8), np.float32)
    with pytest.raises(ArgumentError, match="overlap"):
        layers.linear(buf, np.ones((8, 8), np.float32), out=buf)
    with pytest.raises(ValueError):  # ArgumentError is also a ValueError
        layers.linear(x, w, out=np.ones((3, 2), np.float32))


# ---- rms_norm -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 7168), (5, 64), (3, 1)])
def test_rms_norm_matches_reference(shape):
    rng = np.random.default_rng(shape[1])
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    w = rng.uniform(0.5, 1.5, shape[1]).astype(np.float32)
    np.testing.assert_allclose(
        layers.rms_norm(x, w, 1e-6), ref.rms_norm(x, w, 1e-6), **tol("rms_norm", "float32")
    )
    expected = ref.rms_norm(x, w, 1e-6)
    assert layers.rms_norm(x, w, 1e-6, out=x) is x  # in place
    np.testing.assert_allclose(x, expected, **tol("rms_norm", "float32"))


def test_rms_norm_zero_row_gives_zero_and_eps_is_validated():
    x = np.zeros((2, 16), np.float32)
    np.testing.assert_array_equal(layers.rms_norm(x, np.ones(16, np.float32), 1e-6), 0)
    with pytest.raises(ArgumentError, match="'eps'"):
        layers.rms_norm(x, np.ones(16, np.float32), 0.0)
    with pytest.raises(ArgumentError, match="'weight'"):
        layers.rms_norm(x, np.ones(15, np.float32), 1e-6)
    with pytest.raises(ArgumentError, match="'out'"):
        layers.rms_norm(x, np.ones(16, np.float32), 1e-6, out=np.ones((2, 8), np.float32))


# ---- silu_mul -------------------------------------------------------------------------------------------


def test_silu_mul_matches_reference_and_saturates_without_nan():
    rng = np.random.default_rng(3)
    gu = (rng.standard_normal((6, 2 * 50)) * 4).astype(np.float32)
    gu[0, :4] = [-1e4, -100.0, 100.0, 1e4]
    got = layers.silu_mul(gu)
    assert got.shape == (6, 50) and np.isfinite(got).all()
    np.testing.assert_allclose(got, ref.silu_mul(gu), **tol("silu_mul", "float32"))


def test_silu_mul_errors():
    with pytest.raises(ArgumentError, match="'gate_up'"):
        layers.silu_mul(np.ones((2, 7), np.float32))
    with pytest.raises(ArgumentError, match="'out'"):
        layers.silu_mul(np.ones((2, 8), np.float32), out=np.ones((2, 8), np.float32))


# ---- embedding ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_embedding_shards_sum_to_the_full_table(dtype):
    rng = np.random.default_rng(5)
    vocab, hidden = 50, 12
    table = rng.standard_normal((vocab, hidden)).astype(np.float32)
    if dtype == "bfloat16":
        table = table.astype(ml_dtypes.bfloat16)
    ids = np.array([0, 49, 17, 18, 33, 5, 17], dtype=np.int64)
    total = np.zeros((len(ids), hidden))
    for start, end in [(0, 17), (17, 34), (34, 50)]:  # three uneven vocabulary shards
        shard = np.ascontiguousarray(table[start:end])
        got = layers.embedding(ids, shard, start)
        np.testing.assert_allclose(got, ref.embedding(ids, shard, start), **tol("embedding", dtype))
        total += got
    np.testing.assert_array_equal(total, table.astype(np.float64)[ids])


def test_embedding_ids_outside_the_shard_give_zero_rows_and_errors():
    table = np.ones((4, 3), np.float32)
    np.testing.assert_array_equal(
        layers.embedding(np.array([-1, 3, 4, 10], np.int64), table, 4), [[0] * 3, [0] * 3, [1] * 3, [0] * 3]
    )
    with pytest.raises(ArgumentError, match="'ids'"):
        layers.embedding(np.array([1], np.int32), table)
    with pytest.raises(ArgumentError, match="'vocab_start'"):
        layers.embedding(np.array([1], np.int64), table, -1)
    with pytest.raises(ArgumentError, match="'out'"):
        layers.embedding(
            np.array([1], np.int64), table, out=np.ones((1, 3), np.float32)[:, ::-1].copy()[:, :2]
        )
