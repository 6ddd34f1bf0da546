// The paged KV cache of one rank: a pool of fixed-size blocks, a free list, and per-sequence block tables.
//
// Helix ownership (DESIGN.md §4): with (cp_rank, cp_size), the token at global position p belongs to
// CP rank (p / tokens_per_block) % cp_size. A cache accepts only the positions it owns and packs them
// densely into its own blocks, in the order they are appended: slot k of a sequence is row
// k % tokens_per_block of block block_table[k / tokens_per_block], and positions[k] is its global position.
// Every failed call (unknown sequence, foreign or duplicate position, exhausted pool) throws and leaves
// the cache unchanged: ArgumentError for bad arguments, KVCacheFullError when the pool is exhausted.
// Not thread-safe: one caller mutates a cache at a time (kernels may read views concurrently).
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "helix/dtype.hpp"
#include "helix/error.hpp"

namespace helix {

// What a kernel needs to read one sequence's keys from the pool.
struct SequenceView {
  const int32_t* block_table;  // [ceil(num_tokens / tokens_per_block)] block indices into the pool
  const int64_t* positions;    // [num_tokens] global position of each slot
  int64_t num_tokens;          // slots in use (the last block may be partly filled)
};

class PagedKVCache {
 public:
  // Pool of [num_blocks, tokens_per_block, head_dim] rows of `dtype` (Float32 or BFloat16), zero-filled.
  // Requires num_blocks >= 1, tokens_per_block >= 1, head_dim >= 1, cp_size >= 1, 0 <= cp_rank < cp_size.
  PagedKVCache(int64_t num_blocks, int64_t tokens_per_block, int64_t head_dim, DType dtype, int64_t cp_rank = 0,
               int64_t cp_size = 1);

  // Registers an empty sequence; throws ArgumentError if `seq_id` already exists.
  void add_sequence(int64_t seq_id);
  // rows: [n, head_dim] of the cache's dtype; positions: [n] global positions, all >= 0, owned by this
  // rank, distinct, and not yet held for `seq_id`. Slots are filled in the given order.
  void append(int64_t seq_id, const int64_t* positions, int64_t n, const void* rows);
  // Returns the sequence's blocks to the free list and forgets it.
  void free_sequence(int64_t seq_id);

  bool has_sequence(int64_t seq_id) const;
  // The CP rank that owns global position p >= 0: (p / tokens_per_block) % cp_size.
  int64_t owner_rank(int64_t position) const;
  // True when global position p belongs to this rank (false for p < 0).
  bool owns(int64_t position) const;
  // Blocks needed to append `positions` (owned ones only; foreign ones are skipped) to `seq_id`, beyond
  // those it already has. Throws ArgumentError for an unknown sequence or a negative position.
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
  // Valid until the next add_sequence/append/free_sequence of this cache.
  SequenceView view(int64_t seq_id) const;
  // The pool: [num_blocks, tokens_per_block, head_dim] of dtype().
  // 64-byte aligned; each row starts at pool + (block * tokens_per_block + row) * row_bytes().
  const void* pool() const { return pool_.get(); }
  void* pool() { return pool_.get(); }
  int64_t row_bytes() const { return head_dim_ * dtype_size(dtype_); }

  // Test/debug aid: writes `value` (e.g. NaN) into every slot that holds no token (free blocks and the
  // tail of partly filled blocks), so tests can prove that kernels never read unused slots.
  void poison_unused(float value);

 private:
  struct Sequence {
    std::vector<int32_t> blocks;
    std::vector<int64_t> positions;
    std::unordered_set<int64_t> held;
  };
  const Sequence& sequence(int64_t seq_id) const;
  Sequence& sequence(int64_t seq_id);
  // Validates `positions` for an append to `seq` (throws ArgumentError); returns nothing, changes nothing.
  void check_append(int64_t seq_id, const Sequence& seq, const int64_t* positions, int64_t n) const;
  // Fills rows [row_begin, row_end) of `block` with `value` in the cache dtype.
  void fill_rows(int32_t block, int64_t row_begin, int64_t row_end, float value);

  int64_t num_blocks_, tokens_per_block_, head_dim_;
  DType dtype_;
  int64_t cp_rank_, cp_size_;
  struct FreeDeleter {
    void operator()(unsigned char* p) const;
  };
  std::unique_ptr<unsigned char[], FreeDeleter> pool_;
  std::vector<int32_t> free_;  // stack of free block indices
  std::unordered_map<int64_t, Sequence> seqs_;
};

}  // namespace helix
