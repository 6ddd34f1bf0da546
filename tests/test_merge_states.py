"""helix.ops.merge_states against the float64 reference (helix.reference)."""

from __future__ import annotations

import helix
import helix._core
import numpy as np
import pytest
from helix.reference import merge_states as ref_merge_states
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import tol

merge_states = helix._core.ops.merge_states


def random_parts(rng: np.random.Generator, n: int, t: int, h: int, d: int, lse_scale: float = 5.0):
    o_parts = rng.standard_normal((n, t, h, d)).astype(np.float32)
    lse_parts = (lse_scale * rng.standard_normal((n, t, h))).astype(np.float32)
    return o_parts, lse_parts


def check_against_reference(o_parts: np.ndarray, lse_parts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    o, lse = merge_states(o_parts, lse_parts)
    ref_o, ref_lse = ref_merge_states(o_parts, lse_parts)
    assert o.dtype == np.float32 and lse.dtype == np.float32
    assert o.shape == ref_o.shape and lse.shape == ref_lse.shape
    assert not np.isnan(o).any() and not np.isnan(lse).any()
    np.testing.assert_allclose(o, ref_o, **tol("merge_states", "float32"))
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(ref_lse))
    finite = np.isfinite(ref_lse)
    np.testing.assert_allclose(lse[finite], ref_lse[finite], **tol("merge_states", "float32"))
    return o, lse


@pytest.mark.parametrize("n", range(1, 9))
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 7), (2, 17, 65), (1, 128, 512)])
def test_matches_reference(n: int, shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(n * 1000 + sum(shape))
    check_against_reference(*random_parts(rng, n, *shape))


def test_one_part_is_the_identity() -> None:
    rng = np.random.default_rng(1)
    o_parts, lse_parts = random_parts(rng, 1, 4, 3, 9)
    o, lse = merge_states(o_parts, lse_parts)
    np.testing.assert_array_equal(o, o_parts[0])
    np.testing.assert_array_equal(lse, lse_parts[0])


def test_all_neg_inf_gives_zero_and_neg_inf() -> None:
    o_parts = np.full((3, 2, 4, 5), np.nan, dtype=np.float32)  # empty shards' o is never read
    lse_parts = np.full((3, 2, 4), -np.inf, dtype=np.float32)
    o, lse = merge_states(o_parts, lse_parts)
    np.testing.assert_array_equal(o, 0.0)
    assert np.isneginf(lse).all()


def test_zero_parts_give_the_empty_state() -> None:
    o, lse = merge_states(np.zeros((0, 2, 3, 4), np.float32), np.zeros((0, 2, 3), np.float32))
    np.testing.assert_array_equal(o, np.zeros((2, 3, 4)))
    assert np.isneginf(lse).all()


def test_empty_dimensions() -> None:
    o, lse = merge_states(np.zeros((3, 0, 2, 4), np.float32), np.zeros((3, 0, 2), np.float32))
    assert o.shape == (0, 2, 4) and lse.shape == (0, 2)
    o, lse = merge_states(np.zeros((3, 2, 2, 0), np.float32), np.zeros((3, 2, 2), np.float32))
    assert o.shape == (2, 2, 0)
    np.testing.assert_allclose(lse, np.log(3.0), rtol=1e-6)


@pytest.mark.parametrize("rows", [(5,), (2, 3, 2, 1)])
def test_any_row_shape_merges_like_t_h_rows(rows: tuple[int, ...]) -> None:
    """o_parts [N, ..., D]: the rows between N and D are flattened (as the CUDA twin takes them)."""
    rng = np.random.default_rng(len(rows))
    o_parts, lse_parts = random_parts(rng, 3, 1, int(np.prod(rows)), 8)
    o, lse = merge_states(o_parts.reshape(3, *rows, 8), lse_parts.reshape(3, *rows))
    ref_o, ref_lse = ref_merge_states(o_parts, lse_parts)
    np.testing.assert_allclose(o.reshape(ref_o.shape), ref_o, **tol("merge_states", "float32"))
    np.testing.assert_allclose(lse.reshape(ref_lse.shape), ref_lse, **tol("merge_states", "float32"))


def test_mixture_of_empty_and_finite_parts() -> None:
    rng = np.random.default_rng(2)
    o_parts, lse_parts = random_parts(rng, 6, 5, 7, 11)
    mask = rng.random(lse_parts.shape) < 0.5
    lse_parts[mask] = -np.inf
    o_parts[mask] = np.nan  # garbage in empty shards
    lse_parts[:, 0, 0] = -np.inf  # one row fully empty
    o, lse = check_against_reference(o_parts, lse_parts)
    np.testing.assert_array_equal(o[0, 0], 0.0)
    assert lse[0, 0] == -np.inf


def test_huge_lse_differences() -> None:
    rng = np.random.default_rng(3)
    o_parts, _ = random_parts(rng, 4, 3, 5, 8)
    choices = np.array([-1e30, -200.0, -88.0, 0.0, 88.0, 200.0, 1e30, -np.inf], dtype=np.float32)
    lse_parts = rng.choice(choices, size=(4, 3, 5)).astype(np.float32)
    o, lse = check_against_reference(o_parts, lse_parts)
    assert np.isfinite(o).all()


def test_merging_shards_of_one_softmax_equals_the_whole() -> None:
    # Partial softmax states of a split score vector merge to the softmax over all scores.
    rng = np.random.default_rng(4)
    scores = rng.standard_normal((2, 3, 40)) * 3  # [T, H, S]
    values = rng.standard_normal((40, 6))  # [S, D]
    cuts = [0, 7, 8, 25, 40]
    o_parts, lse_parts = [], []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        s = scores[..., a:b]
        lse = np.log(np.exp(s).sum(-1))
        o_parts.append(np.exp(s - lse[..., None]) @ values[a:b])
        lse_parts.append(lse)
    o, lse = merge_states(np.stack(o_parts).astype(np.float32), np.stack(lse_parts).astype(np.float32))
    full_lse = np.log(np.exp(scores).sum(-1))
    np.testing.assert_allclose(o, np.exp(scores - full_lse[..., None]) @ values, atol=1e-5)
    np.testing.assert_allclose(lse, full_lse, rtol=1e-6)


@pytest.mark.parametrize(
    ("o_parts", "lse_parts", "name"),
    [
        (np.zeros(4, np.float32), np.zeros(1, np.float32), "o_parts"),  # rank: [N, ..., D] needs N and D
        (np.zeros((2, 1, 3, 4), np.float64), np.zeros((2, 1, 3), np.float32), "o_parts"),  # dtype
        (np.zeros((2, 1, 3, 4), np.float32), np.zeros((2, 1, 3), np.float64), "lse_parts"),
        (np.zeros((2, 1, 3, 4), np.float32), np.zeros((3, 1, 3), np.float32), "lse_parts"),  # N mismatch
        (np.zeros((2, 1, 3, 4), np.float32), np.zeros((2, 1, 4), np.float32), "lse_parts"),  # H mismatch
        (np.zeros((2, 1, 3, 4), np.float32), np.zeros((2, 1), np.float32), "lse_parts"),
        (np.zeros((2, 1, 3, 8), np.float32)[..., ::2], np.zeros((2, 1, 3), np.float32), "o_parts"),  # strided
        ([[[[0.0]]]], np.zeros((1, 1, 1), np.float32), "o_parts"),  # not an ndarray
        (np.zeros((1, 1, 1, 1), np.float32), "lse", "lse_parts"),
    ],
)
def test_bad_inputs_name_the_argument(o_parts, lse_parts, name: str) -> None:
    with pytest.raises(helix.ArgumentError, match=f"'{name}'"):
        merge_states(o_parts, lse_parts)


def test_bf16_input_is_rejected() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    with pytest.raises(helix.ArgumentError, match="'o_parts'.*float32"):
        merge_states(np.zeros((1, 1, 1, 2), ml_dtypes.bfloat16), np.zeros((1, 1, 1), np.float32))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 8),
    t=st.integers(1, 3),
    h=st.integers(1, 5),
    d=st.integers(1, 9),
    seed=st.integers(0, 2**32 - 1),
    empty_fraction=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_merge_is_invariant_under_permutation_of_parts(n, t, h, d, seed, empty_fraction) -> None:
    rng = np.random.default_rng(seed)
    o_parts, lse_parts = random_parts(rng, n, t, h, d)
    lse_parts[rng.random(lse_parts.shape) < empty_fraction] = -np.inf
    perm = rng.permutation(n)
    o, lse = merge_states(o_parts, lse_parts)
    o_p, lse_p = merge_states(np.ascontiguousarray(o_parts[perm]), np.ascontiguousarray(lse_parts[perm]))
    # Summation order changes the rounding, not the value.
    np.testing.assert_allclose(o_p, o, **tol("merge_states", "float32"))
    np.testing.assert_allclose(lse_p, lse, **tol("merge_states", "float32"))
    assert not np.isnan(o_p).any() and not np.isnan(lse_p).any()
    # And merging in two stages (a tree, as a real all-to-all might) gives the same state.
    k = rng.integers(0, n + 1)
    o_a, lse_a = merge_states(o_parts[:k].copy(), lse_parts[:k].copy())
    o_b, lse_b = merge_states(o_parts[k:].copy(), lse_parts[k:].copy())
    o_ab, lse_ab = merge_states(np.stack([o_a, o_b]), np.stack([lse_a, lse_b]))
    np.testing.assert_allclose(o_ab, o, **tol("merge_states", "float32"))
    np.testing.assert_allclose(lse_ab, lse, **tol("merge_states", "float32"))
