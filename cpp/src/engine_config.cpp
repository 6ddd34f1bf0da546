#include "helix/engine_config.hpp"

namespace helix {

std::string layer_weight_name(int64_t layer, const char* name) {
  return "layers." + std::to_string(layer) + "." + name;
}

std::map<std::string, ExpectedWeight> expected_weight_shapes(const EngineConfig& c) {
  const int64_t N = c.world(), Htp = c.heads_tp(), Hc = c.heads_chunk(), R = c.kv_lora_rank, P = c.qk_rope_head_dim,
                Dn = c.qk_nope_head_dim, Dv = c.v_head_dim, hid = c.hidden_size;
  std::map<std::string, ExpectedWeight> e;
  e["embed_tokens"] = {{c.vocab_shard(), hid}, true};
  e["norm"] = {{hid}, false};
  e["lm_head"] = {{c.vocab_shard(), hid}, true};
  if (c.num_mtp_layers > 0) {
    auto M = [&](const char* n) { return layer_weight_name(c.mtp_layer(), n); };
    e[M("embed_tokens")] = {{c.vocab_shard(), hid}, true};
    e[M("enorm")] = {{hid}, false};
    e[M("hnorm")] = {{hid}, false};
    e[M("eh_proj")] = {{hid, 2 * hid}, true};  // replicated: its input and output are replicated
    e[M("shared_head.norm")] = {{hid}, false};
    e[M("shared_head.head")] = {{c.vocab_shard(), hid}, true};
  }
  for (int64_t l = 0; l < c.num_kv_layers(); ++l) {
    auto L = [&](const char* n) { return layer_weight_name(l, n); };
    e[L("input_layernorm")] = {{hid}, false};
    e[L("post_attention_layernorm")] = {{hid}, false};
    if (c.q_lora_rank > 0) {
      e[L("q_a_proj")] = {{c.q_lora_rank, hid}, true};
      e[L("q_a_layernorm")] = {{c.q_lora_rank}, false};
      e[L("q_b_proj")] = {{Htp * (Dn + P), c.q_lora_rank}, true};
    } else {
      e[L("q_proj")] = {{Htp * (Dn + P), hid}, true};
    }
    e[L("kv_a_proj_with_mqa")] = {{R + P, hid}, true};
    e[L("kv_a_layernorm")] = {{R}, false};
    e[L("w_uk")] = {{Htp, R, Dn}, true};  // W_UK^T per head: q_abs = w_uk[h] @ q_nope
    e[L("w_uv")] = {{Htp, Dv, R}, true};
    e[L("o_proj")] = {{hid, Hc * Dv}, true};
    if (c.is_moe_layer(l)) {
      const int64_t E = c.n_routed_experts, Fm = c.moe_intermediate_size, n_local = c.local_experts(),
                    Fe = c.expert_width();
      e[L("gate")] = {{E, hid}, false};
      e[L("e_score_correction_bias")] = {{E}, false};
      e[L("experts.gate_up_proj")] = {{n_local, 2 * Fe, hid}, true};
      e[L("experts.down_proj")] = {{n_local, hid, Fe}, true};
      if (c.n_shared_experts > 0) {
        const int64_t Fs = c.n_shared_experts * Fm / N;
        e[L("shared_experts.gate_up_proj")] = {{2 * Fs, hid}, true};
        e[L("shared_experts.down_proj")] = {{hid, Fs}, true};
      }
    } else {
      e[L("mlp.gate_up_proj")] = {{2 * c.intermediate_size / N, hid}, true};
      e[L("mlp.down_proj")] = {{hid, c.intermediate_size / N}, true};
    }
  }
  return e;
}

void validate_engine_config(const EngineConfig& c) {
  auto pos = [](int64_t v, const char* n) {
    HELIX_CHECK_ARG(v > 0, "engine config '", n, "' must be positive, got ", v);
  };
  pos(c.vocab_size, "vocab_size");
  pos(c.hidden_size, "hidden_size");
  pos(c.num_layers, "num_layers");
  pos(c.num_heads, "num_heads");
  pos(c.kv_lora_rank, "kv_lora_rank");
  pos(c.qk_rope_head_dim, "qk_rope_head_dim");
  pos(c.qk_nope_head_dim, "qk_nope_head_dim");
  pos(c.v_head_dim, "v_head_dim");
  pos(c.tp, "tp");
  pos(c.cp, "cp");
  pos(c.tokens_per_block, "tokens_per_block");
  pos(c.num_kv_blocks, "num_kv_blocks");
  HELIX_CHECK_ARG(c.num_mtp_layers == 0 || c.num_mtp_layers == 1, "engine config 'num_mtp_layers' must be 0 or 1, got ",
                  c.num_mtp_layers);
  HELIX_CHECK_ARG(c.num_mtp_layers == 0 || c.n_routed_experts > 0,
                  "engine config 'num_mtp_layers' = 1 needs n_routed_experts > 0 (the MTP block is MoE)");
  const int64_t N = c.world();
  HELIX_CHECK_ARG(c.rank >= 0 && c.rank < N, "engine config 'rank' ", c.rank, " is outside [0, ", N, ")");
  HELIX_CHECK_ARG(c.num_heads % N == 0, "num_heads (", c.num_heads, ") must be divisible by tp * cp (", N, ")");
  HELIX_CHECK_ARG(c.qk_rope_head_dim % 2 == 0, "qk_rope_head_dim must be even");
  HELIX_CHECK_ARG(static_cast<int64_t>(c.rope_inv_freq.size()) == c.qk_rope_head_dim / 2,
                  "rope_inv_freq must have qk_rope_head_dim / 2 = ", c.qk_rope_head_dim / 2, " entries");
  HELIX_CHECK_ARG(c.kv_dtype == DType::Float32 || c.kv_dtype == DType::BFloat16,
                  "kv_dtype must be float32 or bfloat16");
  bool any_dense = false, any_moe = false;
  for (int64_t l = 0; l < c.num_kv_layers(); ++l) (c.is_moe_layer(l) ? any_moe : any_dense) = true;
  if (any_dense) {
    HELIX_CHECK_ARG(c.intermediate_size % N == 0, "intermediate_size (", c.intermediate_size,
                    ") must be divisible by tp * cp (", N, ")");
  }
  if (any_moe) {
    HELIX_CHECK_ARG(c.num_experts_per_tok > 0 && c.num_experts_per_tok <= c.n_routed_experts,
                    "num_experts_per_tok must be in [1, n_routed_experts]");
    HELIX_CHECK_ARG(c.n_group > 0 && c.n_routed_experts % c.n_group == 0 && c.topk_group <= c.n_group,
                    "n_group must divide n_routed_experts and topk_group <= n_group");
    if (c.expert_tensor_parallel) {
      HELIX_CHECK_ARG(c.moe_intermediate_size % N == 0, "moe_intermediate_size (", c.moe_intermediate_size,
                      ") must be divisible by tp * cp (", N, ") for tensor-parallel experts");
    } else {
      HELIX_CHECK_ARG(c.n_routed_experts % N == 0, "n_routed_experts (", c.n_routed_experts,
                      ") must be divisible by tp * cp (", N, ") for expert parallelism");
    }
    HELIX_CHECK_ARG((c.n_shared_experts * c.moe_intermediate_size) % N == 0,
                    "the shared experts' width must be divisible by tp * cp (", N, ")");
  }
}

void check_engine_world(const EngineConfig& c, const Communicator& world) {
  HELIX_CHECK_ARG(world.size() == c.world(), "the communicator has ", world.size(), " ranks but tp * cp = ", c.world());
  HELIX_CHECK_ARG(world.rank() == c.rank, "the communicator's rank ", world.rank(),
                  " differs from the engine config's rank ", c.rank);
}

void check_engine_weight(const std::map<std::string, ExpectedWeight>& expected, const std::string& name,
                         const TensorView& w) {
  auto it = expected.find(name);
  HELIX_CHECK_ARG(it != expected.end(), "unknown weight '", name, "'");
  const ExpectedWeight& e = it->second;
  HELIX_CHECK_ARG(w.shape == e.shape, "weight '", name, "' has shape ", shape_str(w.shape), ", expected ",
                  shape_str(e.shape), " for this rank's shard");
  if (e.matrix) {
    check_tensor(w, name.c_str(), static_cast<int64_t>(e.shape.size()), {DType::Float32, DType::BFloat16});
  } else {
    check_tensor(w, name.c_str(), static_cast<int64_t>(e.shape.size()), {DType::Float32});
  }
}

}  // namespace helix
