// Embedding lookup on one vocabulary shard (contract: cpp/include/helix/ops/embedding.hpp).
#include <algorithm>

#include "common.cuh"
#include "helix/ops/embedding.hpp"

namespace helix::cuda {

namespace {

// out[t, :] = table[ids[t] - vocab_start, :] when the id is in this rank's shard [vocab_start, +V), else 0.
template <class T>
__global__ void embedding_kernel(EmbeddingParams p) {
  const int64_t total = p.T * p.hidden;
  const T* table = static_cast<const T*>(p.table);  // [V, hidden]
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / p.hidden, d = i % p.hidden;
    const int64_t row = p.ids[t] - p.vocab_start;
    p.out[i] = row >= 0 && row < p.V ? detail::load_as_float(table, row * p.hidden + d) : 0.f;
  }
}

}  // namespace

void launch_embedding(const EmbeddingParams& p, StreamHandle stream) {
  const int64_t total = p.T * p.hidden;
  if (total == 0) return;
  HELIX_CHECK(p.table_dtype == DType::Float32 || p.table_dtype == DType::BFloat16,
              "embedding: the table must be float32 or bfloat16");
  const unsigned grid = std::min<unsigned>(detail::grid_dim(total, 256), 65535u);
  if (p.table_dtype == DType::Float32) {
    embedding_kernel<float><<<grid, 256, 0, stream>>>(p);
  } else {
    embedding_kernel<uint16_t><<<grid, 256, 0, stream>>>(p);
  }
  HELIX_CUDA_CHECK_LAUNCH("embedding_kernel");
}

}  // namespace helix::cuda
