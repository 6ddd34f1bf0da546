// The KV hand-off of disaggregated serving (docs/disaggregated.md): reading the rows a rank holds of one
// sequence, and importing rows into an empty sequence as one all-or-nothing step. What moves is the
// compressed latent row of each token and layer, [kv_lora_rank + rope_dim] values in the pool's storage
// dtype; which positions a rank holds is the BlockTable's rule, (p / tokens_per_block) % cp.
//
// Both work on an Engine's BlockTable and its backend's pools (host or device memory); the rows pass through
// host memory.
#pragma once

#include <cstdint>
#include <vector>

#include "helix/block_table.hpp"
#include "helix/engine.hpp"
#include "helix/tensor.hpp"

namespace helix {

// The global positions this rank holds of `seq_id`, ascending (ArgumentError if the sequence is unknown).
std::vector<int64_t> kv_owned_positions(const BlockTable& table, int64_t seq_id);

// Copies this rank's rows of `seq_id` into out [num_layers, n, D] (the KV dtype), row i of every layer
// holding position kv_owned_positions(table, seq_id)[i]. ArgumentError naming `out` on a wrong shape/dtype.
void kv_read_rows(Engine& engine, int64_t seq_id, const TensorView& out);

// Imports positions [0, num_positions) into the empty sequence `seq_id` as one step: rows [num_layers, n, D]
// (the KV dtype) hold this rank's positions of [0, num_positions) in ascending order (n of them, by the
// block rule). Validated before anything changes (sequence known and empty, num_positions >= 1, the rows'
// shape and dtype; KVCacheFullError when a CP rank lacks the blocks), then committed and written to every
// layer's pool. Every rank of the engine must call it with the same seq_id and num_positions.
void kv_import_rows(Engine& engine, int64_t seq_id, int64_t num_positions, const TensorView& rows);

// How many of positions [0, num_positions) CP rank cp_rank owns under (tokens_per_block, cp_size).
int64_t kv_owned_count(int64_t num_positions, int64_t tokens_per_block, int64_t cp_rank, int64_t cp_size);

}  // namespace helix
