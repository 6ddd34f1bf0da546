"""The tensors a DeepSeek-V3-architecture checkpoint holds for a ModelConfig: names and shapes of the
model's (``expected_tensors``) and of its multi-token-prediction layer (``expected_mtp_tensors``), and which
of them DeepSeek's FP8 releases quantize. Pure Python: imports nothing compiled."""

from __future__ import annotations

from helix.config import ModelConfig

__all__ = ["expected_mtp_tensors", "expected_tensors", "is_fp8_quantizable"]

_FP8_MODULES = frozenset(
    [
        "q_proj",
        "q_a_proj",
        "q_b_proj",
        "kv_a_proj_with_mqa",
        "kv_b_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
)


def is_fp8_quantizable(name: str) -> bool:
    """Whether DeepSeek FP8 checkpoints store this tensor as float8 with a weight_scale_inv: the Linear
    weights of the decoder blocks, the MTP layer's included (embeddings, lm_head, norms, the router, and the
    MTP layer's eh_proj and shared_head.head stay unquantized, as in DeepSeek-V3/R1's FP8 release)."""
    parts = name.split(".")
    return name.startswith("model.layers.") and parts[-1] == "weight" and parts[-2] in _FP8_MODULES


def expected_tensors(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint of ``config`` must hold, name -> shape (Linear weights are [out, in]).
    The multi-token-prediction layer is not among them (see ``expected_mtp_tensors``)."""
    c = config
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (c.vocab_size, c.hidden_size)}
    for i in range(c.num_hidden_layers):
        _decoder_layer(out, c, f"model.layers.{i}.", c.is_moe_layer(i))
    out["model.norm.weight"] = (c.hidden_size,)
    out["lm_head.weight"] = (c.vocab_size, c.hidden_size)
    return out


def expected_mtp_tensors(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The tensors of the multi-token-prediction (MTP) layer speculative decoding uses, name -> shape: the
    first MTP layer, at index num_hidden_layers (DeepSeek-V3/R1 ship exactly one). Its own embedding,
    ``enorm`` / ``hnorm`` (RMSNorms of the next token's embedding and of the main model's final hidden
    state), ``eh_proj`` [hidden, 2*hidden] on their concatenation [enorm(emb); hnorm(h)], a decoder block
    whose FFN is MoE (as in transformers and every release), ``shared_head.norm`` and ``shared_head.head``
    [vocab, hidden]. Empty when the config declares no MTP layer (num_nextn_predict_layers = 0)."""
    c = config
    if c.num_nextn_predict_layers == 0:
        return {}
    V, D = c.vocab_size, c.hidden_size
    p = f"model.layers.{c.mtp_layer_index}."
    out: dict[str, tuple[int, ...]] = {
        p + "embed_tokens.weight": (V, D),
        p + "enorm.weight": (D,),
        p + "hnorm.weight": (D,),
        p + "eh_proj.weight": (D, 2 * D),
    }
    _decoder_layer(out, c, p, moe=True)
    out[p + "shared_head.norm.weight"] = (D,)
    out[p + "shared_head.head.weight"] = (V, D)
    return out


def _decoder_layer(out: dict[str, tuple[int, ...]], c: ModelConfig, p: str, moe: bool) -> None:
    """The tensors of one decoder block under prefix ``p`` (``model.layers.L.``): MLA, then MoE or MLP."""
    H, D = c.num_attention_heads, c.hidden_size
    out[p + "input_layernorm.weight"] = (D,)
    out[p + "post_attention_layernorm.weight"] = (D,)
    a = p + "self_attn."
    if c.q_lora_rank is None:
        out[a + "q_proj.weight"] = (H * c.qk_head_dim, D)
    else:
        out[a + "q_a_proj.weight"] = (c.q_lora_rank, D)
        out[a + "q_a_layernorm.weight"] = (c.q_lora_rank,)
        out[a + "q_b_proj.weight"] = (H * c.qk_head_dim, c.q_lora_rank)
    out[a + "kv_a_proj_with_mqa.weight"] = (c.kv_lora_rank + c.qk_rope_head_dim, D)
    out[a + "kv_a_layernorm.weight"] = (c.kv_lora_rank,)
    out[a + "kv_b_proj.weight"] = (H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank)
    out[a + "o_proj.weight"] = (D, H * c.v_head_dim)
    m = p + "mlp."
    if moe:
        out[m + "gate.weight"] = (c.n_routed_experts, D)
        out[m + "gate.e_score_correction_bias"] = (c.n_routed_experts,)
        for e in range(c.n_routed_experts):
            _mlp(out, f"{m}experts.{e}.", D, c.moe_intermediate_size)
        if c.n_shared_experts:
            _mlp(out, m + "shared_experts.", D, c.moe_intermediate_size * c.n_shared_experts)
    else:
        _mlp(out, m, D, c.intermediate_size)


def _mlp(out: dict[str, tuple[int, ...]], prefix: str, hidden: int, inter: int) -> None:
    out[prefix + "gate_proj.weight"] = (inter, hidden)
    out[prefix + "up_proj.weight"] = (inter, hidden)
    out[prefix + "down_proj.weight"] = (hidden, inter)
