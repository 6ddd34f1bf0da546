// The Helix attention step of one layer on one rank (DESIGN.md §3 steps 5-8):
//   1. write the new tokens' latent rows [c_kv | k_pe] into this rank's pool, only where it owns the position;
//   2. paged partial attention over the local shard for all H_tp heads and all T query tokens;
//   3. optionally project each head's partial output with W_UV (exact: the merge is linear), so that
//      Dv instead of R values per head cross the wire;
//   4. pack (o, lse) per destination and exchange them with ONE all-to-all over the CP group
//      (head chunk c, of H_c = H_tp / cp heads, goes to CP rank c);
//   5. merge the cp partial states of this rank's head chunk by their log-sum-exp.
#pragma once

#include <cstdint>
#include <vector>

#include "helix/block_table.hpp"
#include "helix/comm.hpp"
#include "helix/kv_cache.hpp"
#include "helix/kv_pool.hpp"
#include "helix/tensor.hpp"

namespace helix {

struct HelixAttentionTimings {
  double append_s = 0, attention_s = 0, project_s = 0, exchange_s = 0, merge_s = 0;
};

// One layer, after the engine validated the step and committed it to `table` (the slots of every layer):
// cp_comm     the CP group (size cp, rank = table.cp_rank())
// step        positions [T] (global), q_seq_index [T], seq_ids [B]
// new_rows    [T]           int64 pool row of each token this rank owns, -1 for the others (commit_step)
// q           [T, H_tp, D]  f32|bf16  absorbed queries, D = kv_lora_rank + rope_dim = pool.head_dim()
// new_kv      [T, D]        pool dtype: latent rows of the T new tokens (same on every CP rank)
// w_uv        [H_tp, Dv, R] f32|bf16, or an empty view (data == nullptr): exchange the R-wide latent
// out         [T, H_tp / cp, W] f32 with W = Dv if w_uv is given, else R
// Not validated here (the engine builds every argument); the PagedKVCache overload validates.
void helix_attention(Communicator& cp_comm, const BlockTable& table, KVPool& pool, const StepTokens& step,
                     const int64_t* new_rows, const TensorView& q, const TensorView& new_kv, float scale,
                     int64_t kv_lora_rank, const TensorView& w_uv, const TensorView& out,
                     HelixAttentionTimings* timings = nullptr);

// The same on one PagedKVCache (Python, benchmarks, tests): validates every argument, then commits the step
// to cache.table() (all or nothing: the same error on every CP rank whose cache saw the same calls) and runs
// the step above; a failure after the commit takes it back.
// positions [T] i64, seq_ids [B] i64 (each added to the cache on every rank), q_seq_index [T] i64 in [0, B).
void helix_attention(Communicator& cp_comm, PagedKVCache& cache, const TensorView& q, const TensorView& new_kv,
                     const TensorView& positions, const TensorView& seq_ids, const TensorView& q_seq_index, float scale,
                     int64_t kv_lora_rank, const TensorView& w_uv, const TensorView& out,
                     HelixAttentionTimings* timings = nullptr);

// Bytes one rank sends per call (to the other cp-1 ranks): (cp-1)/cp * T * H_tp * (W + 1) * 4.
int64_t helix_exchange_bytes(int64_t cp, int64_t T, int64_t H_tp, int64_t width);

}  // namespace helix
