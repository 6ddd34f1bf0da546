// What the CPU engine (engine.cpp) and the CUDA engine (cuda/cuda_engine.cu) share: the config
// validation, the weight names and per-rank shard shapes, the weight checks, and the validation of a
// step's inputs with its KV plan. One implementation, so both engines accept and refuse the
// same inputs with the same messages.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "helix/block_table.hpp"
#include "helix/comm.hpp"
#include "helix/engine.hpp"
#include "helix/tensor.hpp"

namespace helix {

struct ExpectedWeight {
  std::vector<int64_t> shape;
  bool matrix;  // linear weights may be float32 or bfloat16; norms, router and bias are float32
};

// "layers.<layer>.<name>"
std::string layer_weight_name(int64_t layer, const char* name);

// Every weight this rank holds, with its shard shape (python/helix/sharding.py gives the same names).
std::map<std::string, ExpectedWeight> expected_weight_shapes(const EngineConfig& c);

// Throws ArgumentError naming the first inconsistent field.
void validate_engine_config(const EngineConfig& c);

// The communicator matches the config's world size and rank (ArgumentError otherwise).
void check_engine_world(const EngineConfig& c, const Communicator& world);

// Shape and dtype of weight `name` against `expected` (ArgumentError naming the weight).
void check_engine_weight(const std::map<std::string, ExpectedWeight>& expected, const std::string& name,
                         const TensorView& w);

// Validates the arguments of Engine::step (shapes, dtypes, token ids, rows) and plans the step on `table`
// (sequences, repeated and held positions, capacity on every CP rank): the whole step is checked before any
// work, identically on every rank. The plan is what the engine commits.
StepPlan check_step_inputs(const EngineConfig& c, const BlockTable& table, const TensorView& tokens,
                           const TensorView& positions, const TensorView& seq_ids, const TensorView& q_seq_index,
                           const TensorView& logit_rows, const TensorView& logits);

// fill_sequence_random of both engines: checks that `seq_id` exists and is empty, then plans and commits
// positions [0, num_tokens) as one step (KVCacheFullError when a CP rank lacks the blocks). Returns new_rows
// [num_tokens] (BlockTable::commit_step); `plan` is what undo_step takes back.
std::vector<int64_t> commit_fill(BlockTable& table, int64_t seq_id, int64_t num_tokens, StepPlan& plan);

// The step's host arrays, once check_step_inputs accepted them.
StepTokens step_tokens(const TensorView& positions, const TensorView& seq_ids, const TensorView& q_seq_index);

}  // namespace helix
