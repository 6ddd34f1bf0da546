// The paged KV cache of one rank: a pool of fixed-size blocks, a free list, and per-sequence block tables.
//
// Helix ownership (DESIGN.md §4): with (cp_rank, cp_size), the token at global position p belongs to
// CP rank (p / tokens_per_block) % cp_size. A cache accepts only the positions it owns and packs them
// densely into its own blocks, in the order they are appended: slot k of a sequence is row
// k % tokens_per_block of block block_table[k / tokens_per_block], and positions[k] is its global position.
// Every failed call (unknown sequence, foreign or duplicate position, exhausted pool) throws and leaves
// the cache unchanged.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "helix/dtype.hpp"

namespace helix {

// What a kernel needs to read one sequence's keys from the pool.
struct SequenceView {
  const int32_t* block_table;  // [num_blocks] indices into the pool
  const int64_t* positions;    // [num_tokens] global position of each slot
  int64_t num_tokens;          // slots in use (the last block may be partly filled)
};

class PagedKVCache {
 public:
  // Pool of [num_blocks, tokens_per_block, head_dim] rows of `dtype` (Float32 or BFloat16).
  PagedKVCache(int64_t num_blocks, int64_t tokens_per_block, int64_t head_dim, DType dtype, int64_t cp_rank = 0,
               int64_t cp_size = 1);

  void add_sequence(int64_t seq_id);
  // rows: [n, head_dim] of the cache's dtype; positions: [n] global positions, all owned by this rank.
  void append(int64_t seq_id, const int64_t* positions, int64_t n, const void* rows);
  void free_sequence(int64_t seq_id);

  bool has_sequence(int64_t seq_id) const;
  // True when global position p belongs to this rank.
  bool owns(int64_t position) const;
  // Blocks needed to append `positions` (owned ones only) to `seq_id`, beyond those it already has.
  int64_t blocks_needed(int64_t seq_id, const int64_t* positions, int64_t n) const;

  int64_t num_blocks() const { return num_blocks_; }
  int64_t num_free_blocks() const { return static_cast<int64_t>(free_.size()); }
  int64_t tokens_per_block() const { return tokens_per_block_; }
  int64_t head_dim() const { return head_dim_; }
  DType dtype() const { return dtype_; }
  int64_t cp_rank() const { return cp_rank_; }
  int64_t cp_size() const { return cp_size_; }
  std::vector<int64_t> sequence_ids() const;

  // Global positions held for `seq_id`, in slot order.
  const std::vector<int64_t>& positions(int64_t seq_id) const;
  SequenceView view(int64_t seq_id) const;
  // The pool: [num_blocks, tokens_per_block, head_dim] of dtype().
  const void* pool() const { return pool_.data(); }
  void* pool() { return pool_.data(); }
  int64_t row_bytes() const { return head_dim_ * dtype_size(dtype_); }

 private:
  struct Sequence {
    std::vector<int32_t> blocks;
    std::vector<int64_t> positions;
    std::unordered_set<int64_t> held;
  };
  const Sequence& sequence(int64_t seq_id) const;

  int64_t num_blocks_, tokens_per_block_, head_dim_;
  DType dtype_;
  int64_t cp_rank_, cp_size_;
  std::vector<unsigned char> pool_;
  std::vector<int32_t> free_;  // stack of free block indices
  std::unordered_map<int64_t, Sequence> seqs_;
};

}  // namespace helix
