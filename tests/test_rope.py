"""rope (helix._core.layers.rope) and the YaRN frequencies of helix.rope, against the float64 reference
and against Hugging Face transformers' DeepSeek-V3 (the oracle)."""

from __future__ import annotations

import numpy as np
import pytest
from helix import reference as ref
from helix.rope import yarn_inv_freq, yarn_softmax_scale
from tolerances import tol

layers = pytest.importorskip("helix._core").layers
ArgumentError = pytest.importorskip("helix._core").ArgumentError

V3_YARN = {
    "rope_type": "yarn",
    "rope_theta": 10000.0,
    "factor": 40.0,
    "original_max_position_embeddings": 4096,
    "beta_fast": 32,
    "beta_slow": 1,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
}

# (rope_dim, max_position_embeddings, rope_parameters): DeepSeek-V3 itself, a small model whose mscale and
# mscale_all_dim differ (attention factor != 1), the original config.json layout ("type"), no truncation,
# an explicit attention_factor, and plain RoPE.
CASES = [
    (64, 163840, V3_YARN),
    (
        16,
        2048,
        {
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 512,
            "beta_fast": 32,
            "beta_slow": 1,
            "mscale": 0.707,
            "mscale_all_dim": 1.0,
        },
    ),
    (
        32,
        8192,
        {
            "type": "yarn",
            "rope_theta": 50000.0,
            "factor": 8.0,
            "original_max_position_embeddings": 1024,
            "beta_fast": 16,
            "beta_slow": 2,
            "mscale": 1.0,
            "mscale_all_dim": 0.5,
            "truncate": False,
        },
    ),
    (
        16,
        4096,
        {
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 2.0,
            "original_max_position_embeddings": 2048,
            "attention_factor": 1.25,
        },
    ),
    (16, 4096, {"rope_type": "default", "rope_theta": 10000.0}),
]


def _hf_config(rope_dim: int, max_pos: int, params: dict):
    transformers = pytest.importorskip("transformers")
    params = dict(params)
    if "type" in params:  # the original layout: rope_scaling + top-level rope_theta
        theta = params.pop("rope_theta")
        return transformers.DeepseekV3Config(
            hidden_size=64,
            num_attention_heads=4,
            qk_rope_head_dim=rope_dim,
            qk_nope_head_dim=32,
            v_head_dim=32,
            max_position_embeddings=max_pos,
            rope_scaling=params,
            rope_theta=theta,
        )
    return transformers.DeepseekV3Config(
        hidden_size=64,
        num_attention_heads=4,
        qk_rope_head_dim=rope_dim,
        qk_nope_head_dim=32,
        v_head_dim=32,
        max_position_embeddings=max_pos,
        rope_parameters=params,
    )


@pytest.mark.oracle
@pytest.mark.parametrize("case", CASES, ids=["v3", "mscale", "orig-layout", "attention-factor", "default"])
def test_yarn_inv_freq_and_softmax_scale_match_transformers(case):
    rope_dim, max_pos, params = case
    config = _hf_config(rope_dim, max_pos, params)
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import (
        DeepseekV3Attention,
        DeepseekV3RotaryEmbedding,
    )

    rotary = DeepseekV3RotaryEmbedding(config)
    inv_freq, attention_factor = yarn_inv_freq(
        rope_dim, params["rope_theta"], params, max_position_embeddings=max_pos
    )
    assert inv_freq.dtype == np.float64 and inv_freq.shape == (rope_dim // 2,)
    np.testing.assert_allclose(inv_freq, rotary.inv_freq.double().numpy(), **tol("yarn_inv_freq", "float32"))
    assert attention_factor == pytest.approx(rotary.attention_scaling, rel=1e-12)
    attn = DeepseekV3Attention(config, layer_idx=0)
    assert yarn_softmax_scale(32 + rope_dim, params, max_position_embeddings=max_pos) == pytest.approx(
        attn.scaling, rel=1e-12
    )


def test_deepseek_v3_softmax_scale_and_frequency_bounds():
    assert yarn_softmax_scale(192, V3_YARN) == pytest.approx(0.1352338, abs=1e-7)
    inv_freq, attention_factor = yarn_inv_freq(64, 10000.0, V3_YARN)
    plain, _ = yarn_inv_freq(64, 10000.0, None)
    assert attention_factor == 1.0
    # High-frequency pairs keep their frequency, low-frequency pairs are divided by the factor.
    np.testing.assert_allclose(inv_freq[:10], plain[:10], rtol=1e-15)
    np.testing.assert_allclose(inv_freq[-8:], plain[-8:] / 40.0, rtol=1e-15)
    assert yarn_softmax_scale(192, None) == 192**-0.5


def test_yarn_rejects_bad_input():
    with pytest.raises(ValueError, match="rope scaling type"):
        yarn_inv_freq(64, 10000.0, {"type": "longrope", "factor": 2.0})
    with pytest.raises(ValueError, match="rope_dim"):
        yarn_inv_freq(63, 10000.0)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        yarn_inv_freq(64, 10000.0, {"type": "yarn", "original_max_position_embeddings": 4096})


@pytest.mark.parametrize(
    "shape,offset", [((5, 3, 192), 128), ((1, 1, 64), 0), ((4, 576), 512), ((2, 7, 20), 3)]
)
def test_rope_matches_reference(shape, offset):
    rng = np.random.default_rng(sum(shape) + offset)
    x = rng.standard_normal(shape).astype(np.float32)
    inv_freq = yarn_inv_freq(64 if shape[-1] >= 64 + offset else 16, 10000.0, V3_YARN)[0].astype(np.float32)
    positions = np.array([0, 1, 4095, 4096, 1_000_003][: shape[0]], dtype=np.int64)
    expected = ref.rope(x, positions, inv_freq, offset, 1.3)
    before = x.copy()
    assert layers.rope(x, positions, inv_freq, offset, 1.3) is None  # in place
    np.testing.assert_allclose(x, expected, **tol("rope", "float32"))
    untouched = np.ones(shape[-1], bool)
    untouched[offset : offset + 2 * len(inv_freq)] = False
    np.testing.assert_array_equal(x[..., untouched], before[..., untouched])


@pytest.mark.oracle
@pytest.mark.parametrize("case", CASES[:3], ids=["v3", "mscale", "orig-layout"])
def test_rope_in_place_gives_transformers_dot_products(case):
    """HF rotates interleaved pairs and then de-interleaves; rotating in place differs only by that channel
    permutation, applied to q and k alike, so q.k is the same."""
    torch = pytest.importorskip("torch")
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import (
        DeepseekV3RotaryEmbedding,
        apply_rotary_pos_emb_interleave,
    )

    rope_dim, max_pos, params = case
    config = _hf_config(rope_dim, max_pos, params)
    rng = np.random.default_rng(rope_dim)
    t, h = 6, 3
    positions = np.array([0, 1, 2, 100, 1023, 2000], dtype=np.int64)
    q = rng.standard_normal((t, h, rope_dim)).astype(np.float32)
    k = rng.standard_normal((t, 1, rope_dim)).astype(np.float32)

    rotary = DeepseekV3RotaryEmbedding(config)
    pos_t = torch.from_numpy(positions)[None, :]
    cos, sin = rotary(torch.zeros(1, dtype=torch.float32), pos_t)
    q_hf, k_hf = apply_rotary_pos_emb_interleave(
        torch.from_numpy(q).permute(1, 0, 2)[None], torch.from_numpy(k).permute(1, 0, 2)[None], cos, sin
    )
    q_hf = q_hf[0].permute(1, 0, 2).numpy()  # [T, H, P], de-interleaved
    k_hf = k_hf[0].permute(1, 0, 2).numpy()

    inv_freq, attention_factor = yarn_inv_freq(
        rope_dim, params["rope_theta"], params, max_position_embeddings=max_pos
    )
    inv_freq = inv_freq.astype(np.float32)
    q_ours, k_ours = q.copy(), k.copy()
    layers.rope(q_ours, positions, inv_freq, 0, attention_factor)
    layers.rope(k_ours, positions, inv_freq, 0, attention_factor)

    # The same values up to HF's de-interleave: [even channels | odd channels].
    half = rope_dim // 2
    np.testing.assert_allclose(q_ours[..., 0::2], q_hf[..., :half], **tol("rope_hf", "float32"))
    np.testing.assert_allclose(q_ours[..., 1::2], q_hf[..., half:], **tol("rope_hf", "float32"))
    # Every query-key score (all token pairs, the shared key broadcast over heads) is the same.
    scores_ours = np.einsum("thp,sp->ths", q_ours.astype(np.float64), k_ours[:, 0].astype(np.float64))
    scores_hf = np.einsum("thp,sp->ths", q_hf.astype(np.float64), k_hf[:, 0].astype(np.float64))
    np.testing.assert_allclose(scores_ours, scores_hf, atol=1e-3 * rope_dim**0.5, rtol=1e-4)


def test_rope_errors_name_the_argument():
    x = np.ones((2, 3, 8), np.float32)
    pos = np.zeros(2, np.int64)
    inv = np.ones(2, np.float32)
    with pytest.raises(ArgumentError, match="'offset'"):
        layers.rope(x, pos, inv, 5)
    with pytest.raises(ArgumentError, match="'positions'"):
        layers.rope(x, np.zeros(3, np.int64), inv)
    with pytest.raises(ArgumentError, match="'positions'"):
        layers.rope(x, np.zeros(2, np.int32), inv)
    with pytest.raises(ArgumentError, match="'inv_freq'"):
        layers.rope(x, pos, np.ones(2, np.float64))
    with pytest.raises(ArgumentError, match="'x'"):
        layers.rope(np.ones(8, np.float32), pos, inv)
    ro = np.ones((2, 4), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ArgumentError, match="'x'"):
        layers.rope(ro, pos, inv)
