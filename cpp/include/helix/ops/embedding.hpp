// Embedding lookup on one vocabulary shard: out[t] = table[ids[t] - vocab_start] when
// vocab_start <= ids[t] < vocab_start + V, else 0 (the all-reduce over shards sums in the owner's row).
#pragma once

#include <cstdint>

#include "helix/device.hpp"
#include "helix/dtype.hpp"
#include "helix/tensor.hpp"

namespace helix {

struct EmbeddingParams {
  const int64_t* ids = nullptr;  // [T]  global token ids
  const void* table = nullptr;   // [V, hidden]  table_dtype: rows vocab_start .. vocab_start + V - 1
  float* out = nullptr;          // [T, hidden]
  int64_t T = 0, V = 0, hidden = 0, vocab_start = 0;
  DType table_dtype = DType::Float32;  // Float32 or BFloat16 (cpu, cuda)
};

// ids [T] i64; table [V, hidden] f32|bf16; out [T, hidden] f32; vocab_start >= 0.
EmbeddingParams check_embedding_args(const TensorView& ids, const TensorView& table, int64_t vocab_start,
                                     const TensorView& out, Device device);

void embedding_cpu(const EmbeddingParams& p);
namespace cuda {
void launch_embedding(const EmbeddingParams& p, StreamHandle stream);
}  // namespace cuda

}  // namespace helix
