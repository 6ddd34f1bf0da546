#include "helix/kv_cache.hpp"

#include <vector>

#include "helix/error.hpp"

namespace helix {

PagedKVCache::PagedKVCache(int64_t num_blocks, int64_t tokens_per_block, int64_t head_dim, DType dtype, int64_t cp_rank,
                           int64_t cp_size)
    : table_(num_blocks, tokens_per_block, cp_rank, cp_size), pool_(num_blocks, tokens_per_block, head_dim, dtype) {}

void PagedKVCache::append(int64_t seq_id, const int64_t* positions, int64_t n, const void* rows) {
  HELIX_CHECK_ARG(table_.has_sequence(seq_id), "unknown sequence ", seq_id);
  HELIX_CHECK_ARG(n >= 0, "argument 'n' must be >= 0, got ", n);
  HELIX_CHECK_ARG(n == 0 || (positions != nullptr && rows != nullptr), "argument 'positions' or 'rows' has no data");
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = positions[i];
    HELIX_CHECK_ARG(p < 0 || table_.owns(p), "argument 'positions': position ", p, " (index ", i, ") of sequence ",
                    seq_id, " belongs to CP rank ", table_.owner_rank(p), ", not to this cache's rank ",
                    table_.cp_rank(), " (cp_size ", table_.cp_size(), ", tokens_per_block ", table_.tokens_per_block(),
                    ")");
  }
  const std::vector<int64_t> one_sequence(static_cast<size_t>(n), 0);  // q_seq_index: every token is seq_id's
  StepPlan plan = table_.plan_step(StepTokens{positions, one_sequence.data(), &seq_id, n, 1});
  const std::vector<int64_t> dst = table_.commit_step(plan);
  pool_.write_rows(dst.data(), n, rows);
}

void PagedKVCache::poison_unused(float value) {
  const std::vector<int64_t> rows = table_.unused_rows();
  pool_.fill_rows(rows.data(), static_cast<int64_t>(rows.size()), value);
}

}  // namespace helix
