// Interleaved-pair rotary embedding (DeepSeek-V3 layout: pairs (x0,x1), (x2,x3), ...) in place, at each
// token's global position. The angle pos * inv_freq is formed and reduced in float64: at positions of
// 10^5 and more an fp32 angle loses several bits.
#include <algorithm>

#include "common.cuh"
#include "helix/ops/rope.hpp"

namespace helix::cuda {

namespace {

template <class T>
__global__ void rope_kernel(RopeParams p) {
  const int64_t pairs = p.P / 2;
  const int64_t total = p.T * p.H * pairs;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx % pairs;
    const int64_t th = idx / pairs;  // t * H + head
    const int64_t t = th / p.H;
    double s, c;
    sincos(static_cast<double>(p.pos[t]) * static_cast<double>(p.inv_freq[i]), &s, &c);
    const float cf = static_cast<float>(c) * p.attention_factor;
    const float sf = static_cast<float>(s) * p.attention_factor;
    T* x = static_cast<T*>(p.x) + th * p.stride + p.offset + 2 * i;
    const float x0 = detail::load_as_float(x, 0), x1 = detail::load_as_float(x, 1);
    detail::store_float(x, 0, x0 * cf - x1 * sf);
    detail::store_float(x, 1, x0 * sf + x1 * cf);
  }
}

}  // namespace

void launch_rope(const RopeParams& p, StreamHandle stream) {
  const int64_t total = p.T * p.H * (p.P / 2);
  if (total == 0) return;
  HELIX_CHECK(p.dtype == DType::Float32 || p.dtype == DType::BFloat16, "rope: dtype must be float32 or bfloat16");
  const unsigned grid = std::min<unsigned>(detail::grid_dim(total, 256), 65535u);
  if (p.dtype == DType::Float32) {
    rope_kernel<float><<<grid, 256, 0, stream>>>(p);
  } else {
    rope_kernel<uint16_t><<<grid, 256, 0, stream>>>(p);
  }
  HELIX_CUDA_CHECK_LAUNCH("rope_kernel");
}

}  // namespace helix::cuda
