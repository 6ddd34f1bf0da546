// The decoder engine of one rank, on the CPU or one GPU (chosen at construction): the sharded weights of a
// DeepSeek-V3-architecture model, the KV bookkeeping (one BlockTable: every layer holds the same positions in
// the same slots) and the decoder step, which runs on a Backend (helix/backend.hpp) that holds the weights,
// one KV pool per layer and the communicators. Prefill chunks and decode steps run through one code path
// (DESIGN.md §3); the Python layer loads and shards the weights and drives the decode loop.
//
// A step is all or nothing (DESIGN.md §4): every input is validated, identically on every rank, before any
// layer runs; a step that fails leaves the block table (and so every layer's cache) as it was.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "helix/backend.hpp"
#include "helix/block_table.hpp"
#include "helix/comm.hpp"
#include "helix/engine_config.hpp"
#include "helix/tensor.hpp"

namespace helix {

class Engine {
 public:
  // world: all tp*cp ranks (rank = config.rank); the backend splits its CP group from it. device: the CPU, or
  // a CUDA device (no CUDA, no visible device or a bad index: Error / ArgumentError before anything is held).
  Engine(const EngineConfig& config, Communicator& world, const EngineDevice& device = {});
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // The shard this rank holds of weight `name` (see python/helix/sharding.py for names and shapes); copied
  // to the backend. Shapes are checked against the config.
  void set_weight(const std::string& name, const TensorView& w);
  // Throws naming the first missing weight.
  void check_weights() const;
  std::vector<std::string> expected_weights() const;
  const std::map<std::string, ExpectedWeight>& expected_weight_shapes() const { return expected_; }

  // See BlockTable::add_sequence (reserve_tokens: the blocks of positions [0, reserve_tokens) on every CP rank).
  // With an MTP layer the sequence is registered, with the same reservation, in its block table too.
  void add_sequence(int64_t seq_id, int64_t reserve_tokens = 0);
  void free_sequence(int64_t seq_id);
  // Keeps positions [0, num_tokens) of a sequence in every layer's cache (BlockTable::truncate): the rows of
  // rejected drafts after a verify step. Every rank calls it identically; no communication.
  void truncate(int64_t seq_id, int64_t num_tokens);
  // The same for the MTP layer's cache (ArgumentError without an MTP layer).
  void truncate_mtp(int64_t seq_id, int64_t num_tokens);
  int64_t num_free_blocks() const { return table_.num_free_blocks(); }
  int64_t num_kv_blocks() const { return config_.num_kv_blocks; }
  // The KV bookkeeping of this rank (admission queries, and tests that inspect it).
  const BlockTable& block_table() const { return table_; }
  // The MTP layer's (ArgumentError without one): same blocks, tokens_per_block and ownership rule, its own
  // positions (docs/speculative.md §4).
  const BlockTable& mtp_block_table() const;
  // The KV bookkeeping and storage, for the hand-off of disaggregated serving (helix/kv_transfer.hpp).
  BlockTable& kv_table() { return table_; }
  Backend& backend() { return *backend_; }

  // One forward pass over T tokens of B sequences (prompt chunks and decode tokens alike).
  // tokens [T] i64, positions [T] i64 global, seq_ids [B] i64, q_seq_index [T] i64 in [0,B),
  // logit_rows [L] i64 in [0,T): the tokens whose logits are returned; logits [L, vocab_size] f32 (host
  // memory, identical on every rank). Optional (an empty view: not wanted): hidden_rows [H] i64 in [0,T)
  // and hidden [H, hidden_size] f32 (host), the final hidden states of those rows after the model's final
  // norm (what the MTP layer reads), identical on every rank.
  void step(const TensorView& tokens, const TensorView& positions, const TensorView& seq_ids,
            const TensorView& q_seq_index, const TensorView& logit_rows, const TensorView& logits,
            const TensorView& hidden_rows = {}, const TensorView& hidden = {});

  // One pass of the multi-token-prediction layer (config.num_mtp_layers = 1; docs/speculative.md §2):
  // row t is eh_proj([enorm(embed(next_tokens[t])); hnorm(hidden[t])]) through the MTP decoder block at
  // positions[t] (its own KV cache), then shared_head. hidden [T, hidden_size] f32: the model's final hidden
  // states (Engine::step's `hidden`) or g of the previous draft; next_tokens [T] i64; positions, seq_ids,
  // q_seq_index and logit_rows [L] as in step. g [L, hidden_size] f32 (the block's output of the logit rows,
  // before shared_head.norm) and logits [L, vocab_size] f32: host memory, identical on every rank. All or
  // nothing, like step.
  void mtp_step(const TensorView& hidden, const TensorView& next_tokens, const TensorView& positions,
                const TensorView& seq_ids, const TensorView& q_seq_index, const TensorView& logit_rows,
                const TensorView& g, const TensorView& logits);

  // Benchmark aid: appends positions [0, num_tokens) to the empty sequence `seq_id`, with pseudo-random rows,
  // uniform in [-scale, scale), in every layer's pool where this rank owns the position (KVCacheFullError
  // when the pool is too small).
  void fill_sequence_random(int64_t seq_id, int64_t num_tokens, uint64_t seed, float scale);
  // The same for the MTP layer's cache (ArgumentError without an MTP layer): rows [0, num_tokens) of a sequence
  // empty there, so that a benchmark's long context is in both caches without a prefill.
  void fill_mtp_sequence_random(int64_t seq_id, int64_t num_tokens, uint64_t seed, float scale);

  const EngineConfig& config() const { return config_; }
  const EngineTimings& timings() const { return timings_; }
  const EngineDevice& device() const { return device_; }
  // Bytes of memory the backend holds: weights, KV pools, workspaces (device memory on a GPU).
  int64_t memory_bytes() const;

 private:
  EngineConfig config_;
  EngineDevice device_;
  BlockTable table_;
  std::optional<BlockTable> mtp_table_;  // with an MTP layer
  std::map<std::string, ExpectedWeight> expected_;
  std::unique_ptr<Backend> backend_;
  std::map<std::string, TensorView> weights_;  // views of the backend's copies
  EngineTimings timings_;

  // fill_sequence_random on `table`, the model's (mtp false) or the MTP layer's.
  void fill_random(BlockTable& table, bool mtp, int64_t seq_id, int64_t num_tokens, uint64_t seed, float scale);
};

// Validates the arguments of Engine::step (shapes, dtypes, token ids, rows) and plans the step on `table`
// (sequences, repeated and held positions, capacity on every CP rank): the whole step is checked before any
// work, identically on every rank. The plan is what the engine commits. `tokens_name` names the tokens in
// errors (mtp_step's are 'next_tokens').
StepPlan check_step_inputs(const EngineConfig& c, const BlockTable& table, const TensorView& tokens,
                           const TensorView& positions, const TensorView& seq_ids, const TensorView& q_seq_index,
                           const TensorView& logit_rows, const TensorView& logits, const TensorView& hidden_rows = {},
                           const TensorView& hidden = {}, const char* tokens_name = "tokens");

}  // namespace helix
