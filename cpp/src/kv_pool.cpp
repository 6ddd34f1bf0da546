#include "helix/kv_pool.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

#include "helix/error.hpp"
#include "helix/ops/kv_append.hpp"

namespace helix {

namespace {

constexpr size_t kPoolAlignment = 64;  // one cache line: SIMD kernels may use aligned loads per row

}  // namespace

void KVPool::FreeDeleter::operator()(unsigned char* p) const { std::free(p); }

KVPool::KVPool(int64_t num_blocks, int64_t tokens_per_block, int64_t head_dim, DType dtype)
    : num_rows_(0), head_dim_(head_dim), dtype_(dtype) {
  HELIX_CHECK_ARG(num_blocks >= 1, "argument 'num_blocks' must be >= 1, got ", num_blocks);
  HELIX_CHECK_ARG(tokens_per_block >= 1, "argument 'tokens_per_block' must be >= 1, got ", tokens_per_block);
  HELIX_CHECK_ARG(head_dim >= 1, "argument 'head_dim' must be >= 1, got ", head_dim);
  HELIX_CHECK_ARG(dtype == DType::Float32 || dtype == DType::BFloat16,
                  "argument 'dtype' must be float32 or bfloat16, got ", dtype_name(dtype));
  // Pool bytes = num_blocks * tokens_per_block * row_bytes, guarded against int64 overflow.
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max() / 2;
  HELIX_CHECK_ARG(
      tokens_per_block <= kMax / head_dim / dtype_size(dtype) && num_blocks <= kMax / (tokens_per_block * row_bytes()),
      "pool of ", num_blocks, " x ", tokens_per_block, " x ", head_dim, " ", dtype_name(dtype), " is too large");
  num_rows_ = num_blocks * tokens_per_block;
  const int64_t bytes = num_rows_ * row_bytes();
  const size_t alloc = (static_cast<size_t>(bytes) + kPoolAlignment - 1) / kPoolAlignment * kPoolAlignment;
  data_.reset(static_cast<unsigned char*>(std::aligned_alloc(kPoolAlignment, alloc)));
  if (!data_) throw std::bad_alloc();
  std::memset(data_.get(), 0, alloc);
}

void KVPool::write_rows(const int64_t* dst_rows, int64_t n, const void* rows) {
  kv_append_cpu(KvAppendParams{data(), rows, dst_rows, n, row_bytes()});
}

void KVPool::fill_rows(const int64_t* rows, int64_t n, float value) {
  for (int64_t i = 0; i < n; ++i) {
    if (dtype_ == DType::Float32) {
      std::fill_n(static_cast<float*>(row(rows[i])), head_dim_, value);
    } else {
      std::fill_n(static_cast<bf16_t*>(row(rows[i])), head_dim_, float_to_bf16(value));
    }
  }
}

}  // namespace helix
