"""reference_model (float64 NumPy) against transformers' DeepseekV3ForCausalLM on tiny random checkpoints.

Oracle tests (marked ``oracle``) run transformers in float32 as shipped (logits within the
("model_logits", "float32") tolerance, identical greedy tokens for 32 steps) and in float64 with its
float32 casts removed (then the two must agree to rounding: ("model_logits", "float64")). The other tests
check the reference's own pieces without torch.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from helix.config import ModelConfig
from helix.reference_model import ReferenceModel, apply_rope_interleaved, moe_route, yarn_inv_freq
from helix.tiny import make_tiny_model
from tolerances import tol

PROMPTS = [
    [0, 5, 17, 300, 499, 42, 7],
    [0, 401, 3],
    [0, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26],
]
GREEDY_PROMPTS = [[0, 5, 17, 300, 499], [0, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22]]
GREEDY_STEPS = 32

# name -> make_tiny_model arguments. Together: q_lora and q_proj, dense + MoE layers, YaRN (including
# mscale != mscale_all_dim, where cos/sin carry an attention factor) and plain RoPE, both config layouts,
# float32 / bfloat16 storage, FP8 blocks with partial edges, shards, an MTP layer to skip.
SHAPES: dict[str, dict] = {
    "default": {},
    "q_proj_t5_mscale": {
        "layout": "transformers5",
        "q_lora_rank": None,
        "num_hidden_layers": 3,
        "first_k_dense_replace": 2,
        "rope_scaling": {"mscale": 0.707, "mscale_all_dim": 1.0, "factor": 16.0},
        "max_position_embeddings": 8192,
        "seed": 1,
    },
    "all_moe_plain_rope": {
        "vocab_size": 500,
        "hidden_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "q_lora_rank": 48,
        "kv_lora_rank": 32,
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8,
        "v_head_dim": 24,
        "n_routed_experts": 16,
        "num_experts_per_tok": 4,
        "n_group": 4,
        "topk_group": 2,
        "n_shared_experts": 2,
        "first_k_dense_replace": 0,
        "num_hidden_layers": 2,
        "norm_topk_prob": False,
        "rope_scaling": None,
        "seed": 2,
    },
    "fp8_bf16_shards_mtp": {"fp8": True, "dtype": "bfloat16", "shards": 3, "mtp": True, "seed": 3},
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    out = {}
    for name, kwargs in SHAPES.items():
        make_tiny_model(root / name, **kwargs)
        out[name] = root / name
    return out


def _hf_dir(models: dict[str, Path], name: str, tmp_path_factory) -> str:
    """transformers reads FP8 folders through a float32 dequantized copy (made with torch, not helix)."""
    from hf_oracle import write_dequantized_copy

    if SHAPES[name].get("fp8"):
        return str(write_dequantized_copy(models[name], tmp_path_factory.mktemp(name + "_dequant")))
    return str(models[name])


@pytest.mark.oracle
@pytest.mark.parametrize("name", list(SHAPES))
def test_logits_and_greedy_match_transformers(models, name, tmp_path_factory):
    from hf_oracle import hf_greedy, hf_inv_freq, hf_logits, hf_logits_float64, load_hf_model

    ref = ReferenceModel.from_pretrained(models[name])
    hf_dir = _hf_dir(models, name, tmp_path_factory)
    hf = load_hf_model(hf_dir)

    # RoPE frequencies and attention factor as transformers derives them from our config.json.
    inv_freq, attention_factor = hf_inv_freq(hf)
    np.testing.assert_allclose(ref.rope[0], inv_freq, rtol=2e-7, atol=0)
    assert ref.rope[1] == pytest.approx(attention_factor, rel=1e-12)
    assert ref.config.softmax_scale == pytest.approx(hf.model.layers[0].self_attn.scaling, rel=1e-12)

    ref_logits = [ref.forward(p) for p in PROMPTS]
    for p, r in zip(PROMPTS, ref_logits, strict=True):
        np.testing.assert_allclose(hf_logits(hf, p), r, **tol("model_logits", "float32"))
    for r, h in zip(ref_logits, hf_logits_float64(hf_dir, PROMPTS, inv_freq=ref.rope[0]), strict=True):
        np.testing.assert_allclose(h, r, **tol("model_logits", "float64"))

    ref_out = ref.generate_greedy(GREEDY_PROMPTS, GREEDY_STEPS)
    hf_tokens, hf_step_logits = hf_greedy(hf, GREEDY_PROMPTS, GREEDY_STEPS)
    assert ref_out.token_ids == hf_tokens
    for r, h in zip(ref_out.step_logits, hf_step_logits, strict=True):
        np.testing.assert_allclose(h, r, **tol("model_logits", "float32"))


# ---- the reference's pieces, without torch ------------------------------------------------------


def test_incremental_decode_equals_full_forward(models):
    """The latent cache path (one token at a time, positions continuing) equals one causal pass."""
    ref = ReferenceModel.from_pretrained(models["default"])
    prompt = PROMPTS[2]
    full = ref.forward(prompt)
    cache = ref.new_cache()
    steps = np.concatenate([ref.forward(prompt[:5], cache)] + [ref.forward([t], cache) for t in prompt[5:]])
    np.testing.assert_allclose(steps, full, rtol=1e-12, atol=1e-12)
    # Causality: a later token does not change earlier logits.
    np.testing.assert_allclose(ref.forward(prompt[:4]), full[:4], rtol=1e-12, atol=1e-12)


def test_greedy_uses_argmax_of_step_logits(models):
    ref = ReferenceModel.from_pretrained(models["default"])
    out = ref.generate_greedy(GREEDY_PROMPTS[:1], 6)
    assert out.token_ids[0] == [int(np.argmax(row)) for row in out.step_logits[0]]
    seq = GREEDY_PROMPTS[0] + out.token_ids[0][:-1]
    np.testing.assert_allclose(
        ref.forward(seq)[len(GREEDY_PROMPTS[0]) - 1 :], out.step_logits[0], rtol=1e-10, atol=1e-10
    )


def test_yarn_frequencies():
    cfg = make_config()
    inv_freq, factor = yarn_inv_freq(cfg)
    P, base = cfg.qk_rope_head_dim, cfg.rope_theta
    plain = base ** (-np.arange(0, P, 2) / P)
    # original context 512, P=16: low bound floor(0.81)=0, high bound ceil(3.82)=4:
    # pairs >= 4 are divided by 40, pairs 1-3 blended.
    np.testing.assert_allclose(inv_freq[0], plain[0])
    np.testing.assert_allclose(inv_freq[4:], plain[4:] / 40.0)
    assert np.all(inv_freq[1:4] < plain[1:4]) and np.all(inv_freq[1:4] > plain[1:4] / 40.0)
    assert factor == 1.0


def test_rope_rotates_pairs_in_place():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3, 8))
    pos = np.array([0, 1, 2, 100, 4096])
    inv = np.array([1.0, 0.1, 0.01, 0.001])
    y = apply_rope_interleaved(x, pos, inv)
    np.testing.assert_allclose(y[0], x[0])  # position 0: identity
    np.testing.assert_allclose(np.hypot(y[..., 0::2], y[..., 1::2]), np.hypot(x[..., 0::2], x[..., 1::2]))
    a = 100 * 0.1  # pair 1 of position 100
    np.testing.assert_allclose(y[3, :, 2], x[3, :, 2] * math.cos(a) - x[3, :, 3] * math.sin(a))
    np.testing.assert_allclose(y[3, :, 3], x[3, :, 3] * math.cos(a) + x[3, :, 2] * math.sin(a))


def make_config(**kw) -> ModelConfig:
    from helix.tiny import TINY_DEFAULT_CONFIG

    return ModelConfig.from_dict({**TINY_DEFAULT_CONFIG, **kw})


@pytest.mark.parametrize("norm", [True, False])
def test_moe_route_matches_brute_force(norm):
    """noaux_tc routing against an enumeration of every allowed group set."""
    cfg = make_config(
        n_routed_experts=12, n_group=3, topk_group=2, num_experts_per_tok=3, norm_topk_prob=norm
    )
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, cfg.hidden_size))
    gate = rng.normal(size=(12, cfg.hidden_size)) / 16
    bias = rng.normal(0, 0.2, size=12)
    weights, ids = moe_route(cfg, x, gate, bias)
    for t in range(x.shape[0]):
        s = 1 / (1 + np.exp(-(gate @ x[t])))
        b = s + bias
        gscore = [sorted(b[g * 4 : g * 4 + 4])[-2:] for g in range(3)]
        best_groups = max(itertools.combinations(range(3), 2), key=lambda gs: sum(sum(gscore[g]) for g in gs))
        allowed = [e for e in range(12) if e // 4 in best_groups]
        chosen = sorted(allowed, key=lambda e: -b[e])[:3]
        assert sorted(ids[t]) == sorted(chosen)
        w = s[ids[t]]
        if norm:
            w = w / w.sum()
        np.testing.assert_allclose(weights[t], w * cfg.routed_scaling_factor)
