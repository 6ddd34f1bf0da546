// Writes the rows of a step's new tokens into a paged KV pool: pool row dst_rows[i]
// (= block * tokens_per_block + slot % tokens_per_block, see SequenceView::pool_row) <- rows[i], for every
// i with dst_rows[i] >= 0; a row < 0 (a token another CP rank owns) is skipped. Rows are copied as bytes.
#pragma once

#include <cstdint>

#include "helix/device.hpp"
#include "helix/tensor.hpp"

namespace helix {

struct KvAppendParams {
  void* pool = nullptr;               // [num_rows, row_bytes] bytes
  const void* rows = nullptr;         // [n, row_bytes] bytes
  const int64_t* dst_rows = nullptr;  // [n] in [0, num_rows), or < 0: skipped
  int64_t n = 0, row_bytes = 0;
};

// pool [num_blocks, tokens_per_block, D] f32|bf16; rows [n, D] of the pool's dtype; dst_rows [n] i64, each
// < num_blocks * tokens_per_block (negative: skipped).
KvAppendParams check_kv_append_args(const TensorView& pool, const TensorView& rows, const TensorView& dst_rows,
                                    Device device);

void kv_append_cpu(const KvAppendParams& p);
namespace cuda {
void launch_kv_append(const KvAppendParams& p, StreamHandle stream);
}  // namespace cuda

}  // namespace helix
