// Writes new rows into the paged KV pool at given pool rows; rows < 0 are skipped (contract:
// cpp/include/helix/ops/kv_append.hpp).
#include "common.cuh"
#include "helix/ops/kv_append.hpp"

namespace helix::cuda {

namespace {

// One block per row; 16-byte copies when the row size and both addresses allow it, else 4 or 1 byte.
template <class Word>
__global__ void kv_append_kernel(KvAppendParams p) {
  const int64_t i = blockIdx.x;
  if (p.dst_rows[i] < 0) return;  // a token another CP rank owns
  const int64_t words = p.row_bytes / static_cast<int64_t>(sizeof(Word));
  const Word* src = reinterpret_cast<const Word*>(static_cast<const unsigned char*>(p.rows) + i * p.row_bytes);
  Word* dst = reinterpret_cast<Word*>(static_cast<unsigned char*>(p.pool) + p.dst_rows[i] * p.row_bytes);
  for (int64_t w = threadIdx.x; w < words; w += blockDim.x) dst[w] = src[w];
}

}  // namespace

void launch_kv_append(const KvAppendParams& p, StreamHandle stream) {
  if (p.n == 0 || p.row_bytes == 0) return;
  const auto aligned = [&](uintptr_t a) {
    return p.row_bytes % a == 0 && reinterpret_cast<uintptr_t>(p.pool) % a == 0 &&
           reinterpret_cast<uintptr_t>(p.rows) % a == 0;
  };
  const unsigned grid = static_cast<unsigned>(p.n);
  if (aligned(16)) {
    kv_append_kernel<uint4><<<grid, 128, 0, stream>>>(p);
  } else if (aligned(4)) {
    kv_append_kernel<uint32_t><<<grid, 128, 0, stream>>>(p);
  } else {
    kv_append_kernel<unsigned char><<<grid, 128, 0, stream>>>(p);
  }
  HELIX_CUDA_CHECK_LAUNCH("kv_append_kernel");
}

}  // namespace helix::cuda
