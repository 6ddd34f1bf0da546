// The decoder engine of one rank: the sharded weights of a DeepSeek-V3-architecture model, one paged KV
// cache per layer, and the communicators; runs prefill chunks and decode steps through one code path
// (DESIGN.md §3). The Python layer loads and shards the weights and drives the decode loop.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "helix/comm.hpp"
#include "helix/helix_attention.hpp"
#include "helix/kv_cache.hpp"
#include "helix/tensor.hpp"

namespace helix {

// Model dimensions (ModelConfig in Python) and the parallel layout of this rank.
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

  bool is_moe_layer(int64_t layer) const {
    return n_routed_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
  }
  int64_t world() const { return tp * cp; }
  int64_t heads_tp() const { return num_heads / tp; }
  int64_t heads_chunk() const { return num_heads / (tp * cp); }
  int64_t vocab_shard() const { return (vocab_size + world() - 1) / world(); }
};

// Time spent per component over the engine's life (seconds, this rank).
struct EngineTimings {
  double attention_s = 0, exchange_s = 0, linear_s = 0, moe_s = 0, allreduce_s = 0, other_s = 0;
  int64_t steps = 0;
};

class Engine {
 public:
  // world: all tp*cp ranks; the engine splits it into its CP group (consecutive ranks) itself.
  Engine(const EngineConfig& config, Communicator& world);
  ~Engine();

  // The shard this rank holds of weight `name` (see python/helix/sharding.py for names and shapes);
  // copied. Shapes are checked against the config.
  void set_weight(const std::string& name, const TensorView& w);
  // Throws naming the first missing weight.
  void check_weights() const;
  std::vector<std::string> expected_weights() const;

  void add_sequence(int64_t seq_id);
  void free_sequence(int64_t seq_id);
  int64_t num_free_blocks() const;
  int64_t num_kv_blocks() const { return config_.num_kv_blocks; }
  // This rank's cache of one layer (every layer's cache holds the same positions in the same slots).
  PagedKVCache& cache(int64_t layer);

  // One forward pass over T tokens of B sequences (prompt chunks and decode tokens alike).
  // tokens [T] i64, positions [T] i64 global, seq_ids [B] i64, q_seq_index [T] i64 in [0,B),
  // logit_rows [L] i64 in [0,T): the tokens whose logits are returned; logits [L, vocab_size] f32 (all ranks).
  void step(const TensorView& tokens, const TensorView& positions, const TensorView& seq_ids,
            const TensorView& q_seq_index, const TensorView& logit_rows, const TensorView& logits);

  const EngineConfig& config() const { return config_; }
  const EngineTimings& timings() const { return timings_; }

 private:
  struct Impl;
  EngineConfig config_;
  Communicator& world_;
  std::unique_ptr<Communicator> cp_comm_;
  std::vector<std::unique_ptr<PagedKVCache>> caches_;
  std::unique_ptr<Impl> impl_;
  EngineTimings timings_;
};

}  // namespace helix
