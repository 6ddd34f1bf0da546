// SwiGLU activation of the MLP / experts on a fused [T, 2F] gate|up row, fp32 math (contract:
// cpp/include/helix/ops/silu_mul.hpp).
#include <algorithm>

#include "common.cuh"
#include "helix/ops/silu_mul.hpp"

namespace helix::cuda {

namespace {

template <class T>
__global__ void silu_mul_kernel(SiluMulParams p) {
  const int64_t total = p.T * p.F;
  const T* gate_up = static_cast<const T*>(p.gate_up);  // [T, 2F]: gate columns, then up columns
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = idx / p.F, i = idx % p.F;
    const float g = detail::load_as_float(gate_up, t * 2 * p.F + i);
    const float u = detail::load_as_float(gate_up, t * 2 * p.F + p.F + i);
    detail::store_float(static_cast<T*>(p.out), idx, g / (1.f + expf(-g)) * u);
  }
}

}  // namespace

void launch_silu_mul(const SiluMulParams& p, StreamHandle stream) {
  const int64_t total = p.T * p.F;
  if (total == 0) return;
  HELIX_CHECK(p.dtype == DType::Float32 || p.dtype == DType::BFloat16, "silu_mul: dtype must be float32 or bfloat16");
  const unsigned grid = std::min<unsigned>(detail::grid_dim(total, 256), 65535u);
  if (p.dtype == DType::Float32) {
    silu_mul_kernel<float><<<grid, 256, 0, stream>>>(p);
  } else {
    silu_mul_kernel<uint16_t><<<grid, 256, 0, stream>>>(p);
  }
  HELIX_CUDA_CHECK_LAUNCH("silu_mul_kernel");
}

}  // namespace helix::cuda
