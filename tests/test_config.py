"""ModelConfig: both config.json layouts, derived values, and every refusal naming field and file."""

# ruff: noqa: E501  (DeepSeek-V3's config.json is kept verbatim below)

from __future__ import annotations

import copy
import json
import math

import pytest
from helix.config import ModelConfig, ModelConfigError
from helix.tiny import TINY_DEFAULT_CONFIG, make_tiny_model

# DeepSeek-V3's own config.json (original layout), abridged to the fields that matter.
DEEPSEEK_V3 = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "attention_bias": False,
    "bos_token_id": 0, "eos_token_id": 1, "first_k_dense_replace": 3, "hidden_act": "silu", "hidden_size": 7168,
    "intermediate_size": 18432, "kv_lora_rank": 512, "max_position_embeddings": 163840,
    "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256,
    "n_shared_experts": 1, "norm_topk_prob": True, "num_attention_heads": 128, "num_experts_per_tok": 8,
    "num_hidden_layers": 61, "num_key_value_heads": 128, "num_nextn_predict_layers": 1, "q_lora_rank": 1536,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]},
    "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "tie_word_embeddings": False,
    "topk_group": 4, "topk_method": "noaux_tc", "torch_dtype": "bfloat16", "v_head_dim": 128, "vocab_size": 129280,
}  # fmt: skip


def test_deepseek_v3_original_layout():
    c = ModelConfig.from_dict(DEEPSEEK_V3, source="v3.json")
    assert c.qk_head_dim == 192
    assert c.softmax_scale == pytest.approx(0.1352338, abs=5e-8)  # FACTS §3
    assert c.softmax_scale == pytest.approx(192**-0.5 * (0.1 * math.log(40) + 1) ** 2, rel=1e-14)
    assert c.rope_attention_factor == 1.0
    assert c.rope_scaling["factor"] == 40.0 and c.rope_scaling["original_max_position_embeddings"] == 4096
    assert c.quantization is not None and (c.quantization.block_rows, c.quantization.block_cols) == (128, 128)
    assert [c.is_moe_layer(i) for i in (0, 2, 3, 60)] == [False, False, True, True]
    assert c.eos_token_ids == (1,) and c.bos_token_id == 0 and c.num_nextn_predict_layers == 1
    with pytest.raises(IndexError):
        c.is_moe_layer(61)


def test_transformers5_layout_equals_original(tmp_path):
    a = make_tiny_model(tmp_path / "a")
    b = make_tiny_model(tmp_path / "b", layout="transformers5")
    raw = json.loads((tmp_path / "b" / "config.json").read_text())
    assert "rope_parameters" in raw and "rope_scaling" not in raw and "rope_theta" not in raw
    assert a == b
    assert a.rope_scaling is not None and a.softmax_scale > a.qk_head_dim**-0.5


def test_q_lora_null_and_plain_rope():
    c = ModelConfig.from_dict({**TINY_DEFAULT_CONFIG, "q_lora_rank": None, "rope_scaling": None})
    assert c.q_lora_rank is None and c.rope_scaling is None
    assert c.softmax_scale == c.qk_head_dim**-0.5 and c.rope_attention_factor == 1.0
    t5 = {k: v for k, v in TINY_DEFAULT_CONFIG.items() if k not in ("rope_scaling", "rope_theta")}
    t5["rope_parameters"] = {"rope_type": "default", "rope_theta": 5e5}
    c = ModelConfig.from_dict(t5)
    assert c.rope_scaling is None and c.rope_theta == 5e5


def test_mscale_rules():
    base = copy.deepcopy(TINY_DEFAULT_CONFIG)
    base["rope_scaling"] = {**base["rope_scaling"], "mscale": 0.707, "mscale_all_dim": 0}
    c = ModelConfig.from_dict(base)
    assert c.softmax_scale == c.qk_head_dim**-0.5  # no mscale_all_dim: no softmax correction
    assert c.rope_attention_factor == pytest.approx(0.1 * math.log(40) + 1)  # transformers' fallback
    base["rope_scaling"]["mscale_all_dim"] = 1.0
    c = ModelConfig.from_dict(base)
    m = lambda s: 0.1 * s * math.log(40) + 1  # noqa: E731
    assert c.rope_attention_factor == pytest.approx(m(0.707) / m(1.0))
    assert c.softmax_scale == pytest.approx(c.qk_head_dim**-0.5 * m(1.0) ** 2)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"model_type": "deepseek_v2"}, "model_type"),
        ({"scoring_func": "softmax"}, "scoring_func"),
        ({"topk_method": "greedy"}, "topk_method"),
        ({"tie_word_embeddings": True}, "tie_word_embeddings"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_interleave": False}, "rope_interleave"),
        ({"attention_bias": True}, "attention_bias"),
        ({"quantization_config": {"quant_method": "gptq"}}, "quant_method"),
        ({"quantization_config": {"quant_method": "fp8", "fmt": "e5m2"}}, "fmt"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
        ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "original_max_position_embeddings"),
        ({"n_group": 3}, "n_group"),
        ({"topk_group": 5, "n_group": 2}, "topk_group"),
        ({"num_experts_per_tok": 5}, "num_experts_per_tok"),
        ({"moe_layer_freq": 2}, "moe_layer_freq"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"hidden_size": "256"}, "hidden_size"),
        ({"qk_rope_head_dim": 15}, "qk_rope_head_dim"),
        ({"num_key_value_heads": 1}, "num_key_value_heads"),
        ({"eos_token_id": "x"}, "eos_token_id"),
        ({"kv_lora_rank": None}, "kv_lora_rank"),
    ],
)
def test_refusals_name_field_and_file(tmp_path, change, field):
    d = {**TINY_DEFAULT_CONFIG, **change}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ModelConfigError, match=field) as info:
        ModelConfig.from_pretrained(tmp_path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_field_and_bad_file(tmp_path):
    d = dict(TINY_DEFAULT_CONFIG)
    del d["vocab_size"]
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ModelConfigError, match="vocab_size"):
        ModelConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelConfigError, match="not valid JSON"):
        ModelConfig.from_pretrained(tmp_path)
    with pytest.raises(ModelConfigError, match="cannot read"):
        ModelConfig.from_pretrained(tmp_path / "nowhere")
