// PagedKVCache: a block table and one host pool, for a single layer used on its own (tests, the demo,
// benchmarks of one attention step, helix_attention from Python). The engines keep one BlockTable and one
// pool per layer instead (helix/block_table.hpp, helix/kv_pool.hpp).
//
// append() takes only positions this rank owns (CP rank (p / tokens_per_block) % cp_size == cp_rank) and
// packs them densely into its blocks in the order given. Every failed call (unknown sequence, foreign or
// repeated or held position, exhausted pool) throws and leaves the cache unchanged: ArgumentError for bad
// arguments, KVCacheFullError when the pool is exhausted. Not thread-safe.
#pragma once

#include <cstdint>

#include "helix/block_table.hpp"
#include "helix/dtype.hpp"
#include "helix/kv_pool.hpp"

namespace helix {

class PagedKVCache {
 public:
  // num_blocks blocks of tokens_per_block rows of head_dim values of `dtype` (Float32 or BFloat16), zeroed.
  PagedKVCache(int64_t num_blocks, int64_t tokens_per_block, int64_t head_dim, DType dtype, int64_t cp_rank = 0,
               int64_t cp_size = 1);

  // rows: [n, head_dim] of the cache's dtype; positions: [n] global positions, all >= 0, owned by this
  // rank, distinct, and not yet held for `seq_id`. Slots are filled in the given order.
  void append(int64_t seq_id, const int64_t* positions, int64_t n, const void* rows);
  // Test aid: writes `value` (e.g. NaN) into every pool row that holds no token, so that tests can prove
  // that kernels never read unused slots.
  void poison_unused(float value);

  BlockTable& table() { return table_; }
  const BlockTable& table() const { return table_; }
  KVPool& pool() { return pool_; }
  const KVPool& pool() const { return pool_; }

 private:
  BlockTable table_;
  KVPool pool_;
};

}  // namespace helix
