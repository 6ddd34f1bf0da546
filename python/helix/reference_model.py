"""Float64 NumPy specification of DeepSeekV3ForCausalLM (the whole model), for tests.

Written plainly from the architecture (DeepSeek-V3's model code and transformers' formulas), independent
of the runtime: MLA is computed *unabsorbed* here (keys and values expanded per head from the latent
cache through kv_b_proj), while the runtime uses the absorbed form. Imports nothing compiled.

Shapes: T new tokens, S cached + new tokens, D hidden, H heads, R kv_lora_rank, P qk_rope_head_dim,
Dn qk_nope_head_dim, Dv v_head_dim, E routed experts, V vocabulary. Weights are the checkpoint's tensors
by name (Linear weights [out, in]), as ``helix.checkpoint.Checkpoint.load_weights`` returns them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from helix.checkpoint import Checkpoint, expected_tensors
from helix.config import ModelConfig

__all__ = [
    "GreedyOutput",
    "LayerCache",
    "ReferenceModel",
    "apply_rope_interleaved",
    "decoder_layer",
    "ffn",
    "mla_attention",
    "moe_route",
    "rms_norm",
    "silu_mlp",
    "truncate_cache",
    "yarn_inv_freq",
]


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x [..., n] / sqrt(mean(x^2) + eps) * weight [n]."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def yarn_inv_freq(config: ModelConfig) -> tuple[np.ndarray, float]:
    """(inv_freq [P/2] float64, attention_factor). Plain RoPE: theta^(-2i/P), factor 1. YaRN: pair i keeps
    its frequency below the low correction bound, is divided by ``factor`` above the high bound, and is
    blended linearly in between (the bounds are where a pair turns beta_fast / beta_slow times over the
    original context)."""
    P = config.qk_rope_head_dim
    base = config.rope_theta
    inv_freq = base ** (-np.arange(0, P, 2, dtype=np.float64) / P)
    rs = config.rope_scaling
    if rs is None:
        return inv_freq, 1.0
    factor = rs["factor"]
    original = rs["original_max_position_embeddings"]

    def correction_dim(rotations: float) -> float:
        # Rotary dimension whose wavelength fits ``rotations`` times into the original context.
        return P * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(rs["beta_fast"]), correction_dim(rs["beta_slow"])
    if rs["truncate"]:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, P - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(P // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    inv_freq = inv_freq / factor * ramp + inv_freq * (1.0 - ramp)
    return inv_freq, config.rope_attention_factor


def apply_rope_interleaved(
    x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray, attention_factor: float = 1.0
) -> np.ndarray:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x [T, ..., P] by angle positions[t] * inv_freq[i];
    the pairs stay in place. Scaled by attention_factor (transformers scales cos and sin by it)."""
    angle = positions.astype(np.float64)[:, None] * inv_freq[None, :]  # [T, P/2]
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (inv_freq.shape[0],)
    cos, sin = np.cos(angle).reshape(shape), np.sin(angle).reshape(shape)
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = odd * cos + even * sin
    return out * attention_factor


def silu_mlp(x: np.ndarray, gate: np.ndarray, up: np.ndarray, down: np.ndarray) -> np.ndarray:
    """down(silu(gate(x)) * up(x)); x [T, D], gate/up [I, D], down [D, I]."""
    g = x @ gate.T
    return ((g / (1.0 + np.exp(-g))) * (x @ up.T)) @ down.T


def moe_route(
    config: ModelConfig, x: np.ndarray, gate: np.ndarray, bias: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """DeepSeek-V3 "noaux_tc" routing of x [T, D]: (weights [T, k], expert ids [T, k]).

    s = sigmoid(x @ gate^T); selection uses s + bias: a group's score is the sum of its two best biased
    scores, the topk_group best groups stay, and the k best experts among them are chosen. The weights use
    the unbiased s, renormalized over the k (norm_topk_prob), times routed_scaling_factor."""
    c = config
    T = x.shape[0]
    scores = 1.0 / (1.0 + np.exp(-(x @ gate.T)))  # [T, E]
    biased = scores + bias
    groups = biased.reshape(T, c.n_group, c.expert_group_size())
    group_score = np.sort(groups, axis=-1)[..., -2:].sum(axis=-1)  # [T, n_group]
    kept = np.argsort(-group_score, axis=-1, kind="stable")[:, : c.topk_group]
    group_mask = np.zeros((T, c.n_group), dtype=bool)
    np.put_along_axis(group_mask, kept, True, axis=-1)
    expert_mask = np.repeat(group_mask, c.expert_group_size(), axis=-1)  # [T, E]
    candidates = np.where(expert_mask, biased, -np.inf)
    ids = np.argsort(-candidates, axis=-1, kind="stable")[:, : c.num_experts_per_tok]
    weights = np.take_along_axis(scores, ids, axis=-1)
    if c.norm_topk_prob:
        weights = weights / (weights.sum(axis=-1, keepdims=True) + 1e-20)
    return weights * c.routed_scaling_factor, ids


@dataclass
class LayerCache:
    """Latent KV of one layer for one sequence: c_kv [S, R] (normalized) and k_pe [S, P] (rotated)."""

    c_kv: np.ndarray
    k_pe: np.ndarray


def mla_attention(
    config: ModelConfig,
    w: Mapping[str, np.ndarray],
    prefix: str,
    x: np.ndarray,
    positions: np.ndarray,
    cache: LayerCache,
    rope: tuple[np.ndarray, float],
) -> np.ndarray:
    """Multi-head latent attention of x [T, D] (already normalized) at ``positions`` [T]; appends the new
    tokens' latents to ``cache`` (positions must continue it) and returns o_proj's output [T, D]."""
    c = config
    T, H = x.shape[0], c.num_attention_heads
    Dn, P, Dv, R = c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim, c.kv_lora_rank
    if c.q_lora_rank is None:
        q = x @ w[prefix + "q_proj.weight"].T
    else:
        q_lat = rms_norm(
            x @ w[prefix + "q_a_proj.weight"].T, w[prefix + "q_a_layernorm.weight"], c.rms_norm_eps
        )
        q = q_lat @ w[prefix + "q_b_proj.weight"].T
    q = q.reshape(T, H, Dn + P)
    q_nope, q_pe = q[..., :Dn], apply_rope_interleaved(q[..., Dn:], positions, *rope)

    kv = x @ w[prefix + "kv_a_proj_with_mqa.weight"].T  # [T, R + P]
    c_kv = rms_norm(kv[:, :R], w[prefix + "kv_a_layernorm.weight"], c.rms_norm_eps)
    k_pe = apply_rope_interleaved(kv[:, R:], positions, *rope)  # one rope key shared by all heads
    cache.c_kv = np.concatenate([cache.c_kv, c_kv])
    cache.k_pe = np.concatenate([cache.k_pe, k_pe])
    S = cache.c_kv.shape[0]

    # Unabsorbed: expand every cached latent to per-head keys and values.
    kv_full = (cache.c_kv @ w[prefix + "kv_b_proj.weight"].T).reshape(S, H, Dn + Dv)
    k_nope, v = kv_full[..., :Dn], kv_full[..., Dn:]
    scores = np.einsum("thd,shd->hts", q_nope, k_nope) + np.einsum("thp,sp->hts", q_pe, cache.k_pe)
    scores *= c.softmax_scale
    key_pos = np.arange(S)
    scores = np.where(key_pos[None, None, :] <= positions[None, :, None], scores, -np.inf)  # causal
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    o = np.einsum("hts,shd->thd", p, v).reshape(T, H * Dv)
    return o @ w[prefix + "o_proj.weight"].T


def ffn(config: ModelConfig, w: Mapping[str, np.ndarray], mlp: str, moe: bool, x: np.ndarray) -> np.ndarray:
    """Dense MLP or MoE (routed + shared experts) of x [T, D] (already normalized); ``mlp`` is the weights'
    prefix, ``model.layers.L.mlp.``."""
    if not moe:
        return silu_mlp(
            x, w[mlp + "gate_proj.weight"], w[mlp + "up_proj.weight"], w[mlp + "down_proj.weight"]
        )
    weights, ids = moe_route(config, x, w[mlp + "gate.weight"], w[mlp + "gate.e_score_correction_bias"])
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        for weight, e in zip(weights[t], ids[t], strict=True):
            e_ = f"{mlp}experts.{e}."
            y = silu_mlp(
                x[t : t + 1], w[e_ + "gate_proj.weight"], w[e_ + "up_proj.weight"], w[e_ + "down_proj.weight"]
            )
            out[t] += weight * y[0]
    if config.n_shared_experts:
        s = mlp + "shared_experts."
        out += silu_mlp(x, w[s + "gate_proj.weight"], w[s + "up_proj.weight"], w[s + "down_proj.weight"])
    return out


def decoder_layer(
    config: ModelConfig,
    w: Mapping[str, np.ndarray],
    prefix: str,
    moe: bool,
    h: np.ndarray,
    positions: np.ndarray,
    cache: LayerCache,
    rope: tuple[np.ndarray, float],
) -> np.ndarray:
    """One decoder block ``prefix`` (``model.layers.L.``) on the residual stream h [T, D] at ``positions``
    [T]: ``h += MLA(RMSNorm(h)); h += FFN(RMSNorm(h))``. Appends the tokens' latents to ``cache``."""
    eps = config.rms_norm_eps
    x = rms_norm(h, w[prefix + "input_layernorm.weight"], eps)
    h = h + mla_attention(config, w, prefix + "self_attn.", x, positions, cache, rope)
    x = rms_norm(h, w[prefix + "post_attention_layernorm.weight"], eps)
    return h + ffn(config, w, prefix + "mlp.", moe, x)


def truncate_cache(cache: Sequence[LayerCache], length: int) -> None:
    """Keep positions [0, length) of every layer's cache (speculative decoding drops rejected rows)."""
    for layer in cache:
        layer.c_kv, layer.k_pe = layer.c_kv[:length], layer.k_pe[:length]


@dataclass
class GreedyOutput:
    """Per prompt: the generated token ids and the logits [steps, V] each was chosen from."""

    token_ids: list[list[int]]
    step_logits: list[np.ndarray] = field(default_factory=list)


class ReferenceModel:
    """DeepSeekV3ForCausalLM in float64 over a weights dict (name -> array, any float dtype)."""

    def __init__(self, config: ModelConfig, weights: Mapping[str, np.ndarray]) -> None:
        missing = [n for n in expected_tensors(config) if n not in weights]
        if missing:
            raise KeyError(f"reference model: missing weight {missing[0]!r}")
        self.config = config
        self.w = {n: np.asarray(weights[n], dtype=np.float64) for n in expected_tensors(config)}
        self.rope = yarn_inv_freq(config)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> ReferenceModel:
        config = ModelConfig.from_pretrained(model_dir)
        with Checkpoint.open(model_dir, config) as ckpt:
            return cls(config, ckpt.load_weights(config, dtype=np.float64))

    def new_cache(self) -> list[LayerCache]:
        c = self.config
        return [
            LayerCache(np.zeros((0, c.kv_lora_rank)), np.zeros((0, c.qk_rope_head_dim)))
            for _ in range(c.num_hidden_layers)
        ]

    def forward_hidden(self, token_ids: Sequence[int], cache: list[LayerCache] | None = None) -> np.ndarray:
        """The final hidden states [T, D] (after model.norm, what lm_head and the MTP layer read) of
        ``token_ids`` continuing the sequence held in ``cache`` (a fresh one when None); positions are
        len(cache) .. len(cache) + T - 1. The cache is extended in place."""
        c, w = self.config, self.w
        if cache is None:
            cache = self.new_cache()
        ids = np.asarray(token_ids, dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0 or ids.min() < 0 or ids.max() >= c.vocab_size:
            raise ValueError(f"token ids must be a non-empty list in [0, {c.vocab_size})")
        positions = cache[0].c_kv.shape[0] + np.arange(ids.size)
        h = w["model.embed_tokens.weight"][ids]  # [T, D]
        for i in range(c.num_hidden_layers):
            h = decoder_layer(
                c, w, f"model.layers.{i}.", c.is_moe_layer(i), h, positions, cache[i], self.rope
            )
        return rms_norm(h, w["model.norm.weight"], c.rms_norm_eps)

    def forward(self, token_ids: Sequence[int], cache: list[LayerCache] | None = None) -> np.ndarray:
        """Logits [T, V] of ``token_ids`` (see ``forward_hidden``)."""
        return self.forward_hidden(token_ids, cache) @ self.w["lm_head.weight"].T

    def generate_greedy(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_at_eos: bool = False
    ) -> GreedyOutput:
        """Greedy continuation of each prompt (independently, with a latent cache): max_new_tokens ids
        each (fewer when stop_at_eos and an eos id is generated; the eos id is kept)."""
        out = GreedyOutput(token_ids=[], step_logits=[])
        for prompt in prompts:
            cache = self.new_cache()
            logits = self.forward(prompt, cache)[-1]
            tokens: list[int] = []
            steps: list[np.ndarray] = []
            for _ in range(max_new_tokens):
                steps.append(logits)
                tokens.append(int(np.argmax(logits)))
                if stop_at_eos and tokens[-1] in self.config.eos_token_ids:
                    break
                if len(tokens) < max_new_tokens:
                    logits = self.forward([tokens[-1]], cache)[-1]
            out.token_ids.append(tokens)
            out.step_logits.append(np.stack(steps) if steps else np.zeros((0, self.config.vocab_size)))
        return out
