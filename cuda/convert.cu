// Float32 -> bfloat16 copies of activations, for cuBLAS products whose weights are bfloat16 (common.cuh).
#include <algorithm>

#include "common.cuh"

namespace helix::cuda::detail {

namespace {

// y[i] = bf16(x[i]), round to nearest even
__global__ void to_bf16_kernel(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    y[i] = float_to_bf16_bits(x[i]);
  }
}

}  // namespace

void launch_to_bf16(const float* x, uint16_t* y, int64_t n, StreamHandle stream) {
  if (n == 0) return;
  to_bf16_kernel<<<std::min<unsigned>(grid_dim(n, 256), 65535u), 256, 0, stream>>>(x, y, n);
  HELIX_CUDA_CHECK_LAUNCH("to_bf16_kernel");
}

}  // namespace helix::cuda::detail
