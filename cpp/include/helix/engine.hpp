// The decoder engine of one rank: the sharded weights of a DeepSeek-V3-architecture model, the KV cache
// (one block table, one host pool per layer: every layer holds the same positions in the same slots), and
// the communicators; runs prefill chunks and decode steps through one code path (DESIGN.md §3). The Python
// layer loads and shards the weights and drives the decode loop.
//
// A step is all or nothing (DESIGN.md §4): every input is validated, identically on every rank, before any
// layer runs; a step that fails leaves the block table (and so every layer's cache) as it was.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "helix/block_table.hpp"
#include "helix/comm.hpp"
#include "helix/helix_attention.hpp"
#include "helix/kv_pool.hpp"
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

  // See BlockTable::add_sequence (reserve_tokens: the blocks of positions [0, reserve_tokens) on every CP rank).
  void add_sequence(int64_t seq_id, int64_t reserve_tokens = 0);
  void free_sequence(int64_t seq_id);
  int64_t num_free_blocks() const { return table_.num_free_blocks(); }
  int64_t num_kv_blocks() const { return config_.num_kv_blocks; }
  // The KV bookkeeping of this rank (admission queries, and tests that inspect it).
  const BlockTable& block_table() const { return table_; }
  // The KV storage itself, for the hand-off of disaggregated serving (helix/kv_transfer.hpp).
  BlockTable& kv_table() { return table_; }
  std::vector<KVPool>& kv_pools() { return pools_; }

  // One forward pass over T tokens of B sequences (prompt chunks and decode tokens alike).
  // tokens [T] i64, positions [T] i64 global, seq_ids [B] i64, q_seq_index [T] i64 in [0,B),
  // logit_rows [L] i64 in [0,T): the tokens whose logits are returned; logits [L, vocab_size] f32 (all ranks).
  void step(const TensorView& tokens, const TensorView& positions, const TensorView& seq_ids,
            const TensorView& q_seq_index, const TensorView& logit_rows, const TensorView& logits);

  // Benchmark aid: appends positions [0, num_tokens) to the empty sequence `seq_id`, with pseudo-random rows,
  // uniform in [-scale, scale), in every layer's pool where this rank owns the position (KVCacheFullError
  // when the pool is too small). As CudaEngine::fill_sequence_random.
  void fill_sequence_random(int64_t seq_id, int64_t num_tokens, uint64_t seed, float scale);

  const EngineConfig& config() const { return config_; }
  const EngineTimings& timings() const { return timings_; }

 private:
  struct Impl;
  // The layers of a validated, committed step (new_rows from BlockTable::commit_step).
  void forward(const TensorView& tokens, const StepTokens& step, const int64_t* new_rows, const TensorView& logit_rows,
               const TensorView& logits);

  EngineConfig config_;
  Communicator& world_;
  std::unique_ptr<Communicator> cp_comm_;
  BlockTable table_;
  std::vector<KVPool> pools_;  // per layer: [num_kv_blocks * tokens_per_block, kv_lora_rank + rope_dim]
  std::unique_ptr<Impl> impl_;
  EngineTimings timings_;
};

}  // namespace helix
