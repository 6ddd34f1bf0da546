"""moe_route and moe_experts (helix._core.layers) against the float64 reference and against Hugging Face
transformers' DeepseekV3TopkRouter / DeepseekV3Experts (the oracle)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from helix import reference as ref
from tolerances import tol

layers = pytest.importorskip("helix._core").layers
ArgumentError = pytest.importorskip("helix._core").ArgumentError

# (E, top_k, n_group, topk_group, norm_topk_prob, routed_scaling_factor)
ROUTINGS = [
    (16, 4, 4, 2, True, 2.5),
    (8, 2, 2, 1, True, 1.0),  # FACTS §4's small oracle config
    (12, 3, 1, 1, False, 1.5),  # one group: plain top-k, weights not renormalized
    (256, 8, 8, 4, True, 2.5),  # DeepSeek-V3
]


def _hf_config(
    e: int,
    top_k: int,
    n_group: int,
    topk_group: int,
    norm: bool,
    scale: float,
    hidden: int = 32,
    inter: int = 16,
):
    transformers = pytest.importorskip("transformers")
    return transformers.DeepseekV3Config(
        hidden_size=hidden,
        moe_intermediate_size=inter,
        n_routed_experts=e,
        num_experts_per_tok=top_k,
        n_group=n_group,
        topk_group=topk_group,
        norm_topk_prob=norm,
        routed_scaling_factor=scale,
        n_shared_experts=1,
        num_attention_heads=4,
    )


@pytest.mark.parametrize("routing", ROUTINGS, ids=lambda r: f"E{r[0]}k{r[1]}g{r[2]}/{r[3]}")
def test_moe_route_matches_reference(routing):
    e, top_k, n_group, topk_group, norm, scale = routing
    rng = np.random.default_rng(e + top_k)
    logits = (rng.standard_normal((9, e)) * 2).astype(np.float32)
    bias = (rng.standard_normal(e) * 0.3).astype(np.float32)
    idx, weight = layers.moe_route(logits, bias, top_k, n_group, topk_group, norm, scale)
    assert idx.dtype == np.int32 and idx.shape == (9, top_k) and weight.dtype == np.float32
    ref_idx, ref_weight = ref.moe_route(logits, bias, top_k, n_group, topk_group, norm, scale)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(weight, ref_weight, **tol("moe_route", "float32"))


@pytest.mark.oracle
@pytest.mark.parametrize("routing", ROUTINGS, ids=lambda r: f"E{r[0]}k{r[1]}g{r[2]}/{r[3]}")
def test_moe_route_matches_transformers_router(routing):
    torch = pytest.importorskip("torch")
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

    e, top_k, n_group, topk_group, norm, scale = routing
    config = _hf_config(e, top_k, n_group, topk_group, norm, scale)
    router = DeepseekV3TopkRouter(config)
    rng = np.random.default_rng(100 + e)
    gate = rng.standard_normal((e, 32)).astype(np.float32)
    bias = (rng.standard_normal(e) * 0.3).astype(np.float32)
    h = rng.standard_normal((11, 32)).astype(np.float32)
    with torch.no_grad():
        router.weight.copy_(torch.from_numpy(gate))
        router.e_score_correction_bias.copy_(torch.from_numpy(bias))
        _, hf_weight, hf_idx = router(torch.from_numpy(h))
    logits = layers.linear(h, gate)  # the engine's router: linear, then moe_route
    idx, weight = layers.moe_route(logits, bias, top_k, n_group, topk_group, norm, scale)
    # HF's top-k is unsorted: compare per token as {expert: weight}.
    for t in range(h.shape[0]):
        ours = dict(zip(idx[t].tolist(), weight[t].tolist(), strict=True))
        theirs = dict(zip(hf_idx[t].tolist(), hf_weight[t].tolist(), strict=True))
        assert sorted(ours) == sorted(theirs), f"token {t}"
        np.testing.assert_allclose(
            [ours[x] for x in sorted(ours)], [theirs[x] for x in sorted(ours)], **tol("moe_route", "float32")
        )


def test_moe_route_group_limit_and_bias_only_select():
    # Two groups of 4. Group 1 holds the single best expert (7) but group 0's top-2 sum is larger, so with
    # topk_group = 1 only group 0 is eligible. The bias lifts expert 0 above 1 for selection only.
    logits = np.array([[0.0, 1.0, 0.9, -5.0, -5.0, -5.0, -5.0, 3.0]], np.float32)
    bias = np.array([0.5, 0, 0, 0, 0, 0, 0, 0], np.float32)
    idx, weight = layers.moe_route(logits, bias, 2, 2, 1, False, 1.0)
    np.testing.assert_array_equal(idx, [[0, 1]])
    np.testing.assert_allclose(weight, [[0.5, 1 / (1 + np.exp(-1.0))]], rtol=1e-6)


def test_moe_route_errors_name_the_argument():
    logits = np.zeros((2, 8), np.float32)
    bias = np.zeros(8, np.float32)
    with pytest.raises(ArgumentError, match="'n_group'"):
        layers.moe_route(logits, bias, 2, 3, 1)
    with pytest.raises(ArgumentError, match="'topk_group'"):
        layers.moe_route(logits, bias, 2, 2, 3)
    with pytest.raises(ArgumentError, match="'top_k'"):
        layers.moe_route(logits, bias, 5, 2, 1)
    with pytest.raises(ArgumentError, match="'bias'"):
        layers.moe_route(logits, np.zeros(7, np.float32), 2, 2, 1)
    with pytest.raises(ArgumentError, match="'logits'"):
        layers.moe_route(logits.astype(np.float64), bias, 2, 2, 1)


def _experts(rng: np.random.Generator, n: int, hidden: int, inter: int, dtype: str):
    gate_up = (rng.standard_normal((n, 2 * inter, hidden)) / np.sqrt(hidden)).astype(np.float32)
    down = (rng.standard_normal((n, hidden, inter)) / np.sqrt(inter)).astype(np.float32)
    if dtype == "bfloat16":
        return gate_up.astype(ml_dtypes.bfloat16), down.astype(ml_dtypes.bfloat16)
    return gate_up, down


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("t", [1, 7, 40])
def test_moe_experts_sharded_over_ranks_matches_reference(dtype, t):
    rng = np.random.default_rng(t)
    e, top_k, hidden, inter = 8, 3, 48, 24
    gate_up, down = _experts(rng, e, hidden, inter, dtype)
    h = rng.standard_normal((t, hidden)).astype(np.float32)
    idx, weight = layers.moe_route(
        rng.standard_normal((t, e)).astype(np.float32), np.zeros(e, np.float32), top_k, 1, 1, True, 2.5
    )
    full = ref.moe_experts(h, idx, weight, gate_up, down)
    total = np.zeros((t, hidden))
    for first, count in [(0, 3), (3, 2), (5, 3)]:  # three expert-parallel ranks of uneven size
        out = layers.moe_experts(
            h, idx, weight, gate_up[first : first + count], down[first : first + count], first
        )
        np.testing.assert_allclose(
            out,
            ref.moe_experts(
                h, idx, weight, gate_up[first : first + count], down[first : first + count], first
            ),
            **tol("moe_experts", dtype),
        )
        total += out
    np.testing.assert_allclose(total, full, **tol("moe_experts", dtype))


def test_moe_experts_accumulates_and_skips_foreign_experts():
    rng = np.random.default_rng(9)
    gate_up, down = _experts(rng, 2, 16, 8, "float32")
    h = rng.standard_normal((3, 16)).astype(np.float32)
    idx = np.array([[10, 11], [0, 1], [11, 99]], np.int32)  # experts 10, 11 are local; others are not
    weight = np.array([[0.5, 2.0], [1.0, 1.0], [1.0, 1.0]], np.float32)
    base = rng.standard_normal((3, 16)).astype(np.float32)
    out = base.copy()
    assert layers.moe_experts(h, idx, weight, gate_up, down, 10, out) is out
    np.testing.assert_allclose(
        out, base + ref.moe_experts(h, idx, weight, gate_up, down, 10), **tol("moe_experts", "float32")
    )
    np.testing.assert_array_equal(out[1], base[1])  # routed only to other ranks' experts


@pytest.mark.oracle
def test_moe_experts_matches_transformers_experts():
    torch = pytest.importorskip("torch")
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Experts

    e, top_k, hidden, inter = 8, 2, 32, 16
    config = _hf_config(e, top_k, 2, 1, True, 2.5, hidden, inter)
    experts = DeepseekV3Experts(config)
    rng = np.random.default_rng(4)
    gate_up, down = _experts(rng, e, hidden, inter, "float32")
    h = rng.standard_normal((5, hidden)).astype(np.float32)
    idx, weight = layers.moe_route(
        rng.standard_normal((5, e)).astype(np.float32),
        rng.standard_normal(e).astype(np.float32) * 0.1,
        top_k,
        2,
        1,
        True,
        2.5,
    )
    with torch.no_grad():
        experts.gate_up_proj.copy_(torch.from_numpy(gate_up))
        experts.down_proj.copy_(torch.from_numpy(down))
        hf = experts(
            torch.from_numpy(h), torch.from_numpy(idx.astype(np.int64)), torch.from_numpy(weight)
        ).numpy()
    np.testing.assert_allclose(
        layers.moe_experts(h, idx, weight, gate_up, down), hf, **tol("moe_experts", "float32")
    )


def test_moe_experts_errors_name_the_argument():
    gate_up = np.zeros((2, 8, 16), np.float32)
    down = np.zeros((2, 16, 4), np.float32)
    h = np.zeros((3, 16), np.float32)
    idx = np.zeros((3, 2), np.int32)
    w = np.zeros((3, 2), np.float32)
    with pytest.raises(ArgumentError, match="'down'"):
        layers.moe_experts(h, idx, w, gate_up, np.zeros((2, 16, 5), np.float32))
    with pytest.raises(ArgumentError, match="'topk_idx'"):
        layers.moe_experts(h, idx.astype(np.int64), w, gate_up, down)
    with pytest.raises(ArgumentError, match="'topk_weight'"):
        layers.moe_experts(h, idx, np.zeros((3, 3), np.float32), gate_up, down)
    with pytest.raises(ArgumentError, match="'gate_up'"):
        layers.moe_experts(h, idx, w, np.zeros((2, 8, 15), np.float32), down)
    with pytest.raises(ArgumentError, match="'out'"):
        layers.moe_experts(h, idx, w, gate_up, down, 0, np.zeros((3, 15), np.float32))
    with pytest.raises(ArgumentError, match="'local_first'"):
        layers.moe_experts(h, idx, w, gate_up, down, -1)
