// The rows of one layer's KV cache in host memory (the CPU engine; PagedKVCache): a pool of
// [num_blocks, tokens_per_block, head_dim] values of `dtype`, addressed by pool row
// (block * tokens_per_block + row, see SequenceView::pool_row). Rows only: which rows hold what is the
// BlockTable's business.
#pragma once

#include <cstdint>
#include <memory>

#include "helix/dtype.hpp"

namespace helix {

class KVPool {
 public:
  // Zero-filled, 64-byte aligned. Requires num_blocks >= 1, tokens_per_block >= 1, head_dim >= 1 and
  // dtype Float32 or BFloat16 (ArgumentError naming the argument otherwise).
  KVPool(int64_t num_blocks, int64_t tokens_per_block, int64_t head_dim, DType dtype);

  // Copies rows [n, head_dim] (this pool's dtype) to pool rows dst_rows [n]; a row < 0 is skipped (kv_append_cpu).
  void write_rows(const int64_t* dst_rows, int64_t n, const void* rows);
  // Writes `value` (in the pool dtype) into every element of the given pool rows [n].
  void fill_rows(const int64_t* rows, int64_t n, float value);

  const void* data() const { return data_.get(); }  // [num_rows, head_dim]
  void* data() { return data_.get(); }
  const void* row(int64_t r) const { return data_.get() + r * row_bytes(); }
  void* row(int64_t r) { return data_.get() + r * row_bytes(); }
  int64_t num_rows() const { return num_rows_; }
  int64_t head_dim() const { return head_dim_; }
  DType dtype() const { return dtype_; }
  int64_t row_bytes() const { return head_dim_ * dtype_size(dtype_); }

 private:
  struct FreeDeleter {
    void operator()(unsigned char* p) const;
  };
  int64_t num_rows_, head_dim_;
  DType dtype_;
  std::unique_ptr<unsigned char[], FreeDeleter> data_;
};

}  // namespace helix
