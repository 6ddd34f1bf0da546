// The configuration of one rank's engine (ModelConfig in Python, plus the parallel layout), the weights it
// holds, and their checks: one definition, whichever device the engine runs on.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "helix/comm.hpp"
#include "helix/dtype.hpp"
#include "helix/tensor.hpp"

namespace helix {

// Model dimensions and the parallel layout of this rank.
struct EngineConfig {
  int64_t vocab_size = 0, hidden_size = 0, num_layers = 0, num_heads = 0;
  int64_t q_lora_rank = 0;  // 0: q_proj instead of q_a/q_b
  int64_t kv_lora_rank = 0, qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
  int64_t intermediate_size = 0, moe_intermediate_size = 0;
  int64_t n_routed_experts = 0, num_experts_per_tok = 0, n_shared_experts = 0, n_group = 1, topk_group = 1;
  int64_t first_k_dense_replace = 0, moe_layer_freq = 1;
  bool norm_topk_prob = true;
  float routed_scaling_factor = 1.f, rms_norm_eps = 1e-6f, softmax_scale = 1.f, rope_attention_factor = 1.f;
  std::vector<float> rope_inv_freq;  // [qk_rope_head_dim / 2]
  // Layout: world = tp * cp ranks, rank = tp_rank * cp + cp_rank.
  int64_t tp = 1, cp = 1, rank = 0;
  int64_t tokens_per_block = 32, num_kv_blocks = 0;
  DType kv_dtype = DType::Float32;
  bool wuv_before_exchange = false;     // send Dv instead of R values per head
  bool expert_tensor_parallel = false;  // experts split by intermediate over all ranks instead of by expert
  // 0 or 1: the multi-token-prediction layer L = num_layers (weights layers.L.*, its own KV pool and block
  // table), run by Engine::mtp_step for speculative decoding (docs/speculative.md).
  int64_t num_mtp_layers = 0;

  // The MTP layer's block is MoE whatever first_k_dense_replace says (every release, and transformers).
  bool is_moe_layer(int64_t layer) const {
    return n_routed_experts > 0 &&
           (layer >= num_layers || (layer >= first_k_dense_replace && layer % moe_layer_freq == 0));
  }
  int64_t num_kv_layers() const { return num_layers + num_mtp_layers; }  // layers with a KV pool
  int64_t mtp_layer() const { return num_layers; }
  int64_t world() const { return tp * cp; }
  int64_t tp_rank() const { return rank / cp; }
  int64_t cp_rank() const { return rank % cp; }
  int64_t heads_tp() const { return num_heads / tp; }
  int64_t heads_chunk() const { return num_heads / (tp * cp); }
  int64_t vocab_shard() const { return (vocab_size + world() - 1) / world(); }
  int64_t kv_row_width() const { return kv_lora_rank + qk_rope_head_dim; }  // D: [c_kv | k_pe]
  // This rank's routed experts: n_local of them from global id local_first, each F wide.
  int64_t local_experts() const { return expert_tensor_parallel ? n_routed_experts : n_routed_experts / world(); }
  int64_t first_local_expert() const { return expert_tensor_parallel ? 0 : rank * local_experts(); }
  int64_t expert_width() const {
    return expert_tensor_parallel ? moe_intermediate_size / world() : moe_intermediate_size;
  }
};

// Throws ArgumentError naming the first inconsistent field.
void validate_engine_config(const EngineConfig& c);

// The communicator matches the config's world size and rank (ArgumentError otherwise).
void check_engine_world(const EngineConfig& c, const Communicator& world);

struct ExpectedWeight {
  std::vector<int64_t> shape;
  bool matrix;  // linear weights may be float32 or bfloat16; norms, router and bias are float32
};

// "layers.<layer>.<name>"
std::string layer_weight_name(int64_t layer, const char* name);

// Every weight this rank holds, with its shard shape (python/helix/sharding.py gives the same names).
std::map<std::string, ExpectedWeight> expected_weight_shapes(const EngineConfig& c);

// Shape and dtype of weight `name` against `expected` (ArgumentError naming the weight).
void check_engine_weight(const std::map<std::string, ExpectedWeight>& expected, const std::string& name,
                         const TensorView& w);

}  // namespace helix
