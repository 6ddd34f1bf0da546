// RMSNorm over the first D columns of each row, fp32 math (contract: cpp/include/helix/ops/rms_norm.hpp).
#include "common.cuh"
#include "helix/ops/rms_norm.hpp"

namespace helix::cuda {

namespace {

constexpr int kThreads = 256;

template <class T>
__global__ void __launch_bounds__(kThreads) rms_norm_kernel(RmsNormParams p) {
  __shared__ float red_s[kThreads / 32];
  const int64_t t = blockIdx.x;
  const T* x = static_cast<const T*>(p.x) + t * p.ldx;  // [D]
  const T* w = static_cast<const T*>(p.w);              // [D]
  T* out = static_cast<T*>(p.y) + t * p.ldy;            // [D]
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < p.D; i += kThreads) {
    const float v = detail::load_as_float(x, i);
    ss = fmaf(v, v, ss);
  }
  ss = detail::warp_sum(ss);
  if ((threadIdx.x & 31) == 0) red_s[threadIdx.x >> 5] = ss;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int i = 0; i < kThreads / 32; ++i) total += red_s[i];
  const float r = rsqrtf(total / static_cast<float>(p.D) + p.eps);
  for (int64_t i = threadIdx.x; i < p.D; i += kThreads) {
    detail::store_float(out, i, detail::load_as_float(x, i) * r * detail::load_as_float(w, i));
  }
}

}  // namespace

void launch_rms_norm(const RmsNormParams& p, StreamHandle stream) {
  if (p.T == 0 || p.D == 0) return;
  HELIX_CHECK(p.dtype == DType::Float32 || p.dtype == DType::BFloat16, "rms_norm: dtype must be float32 or bfloat16");
  const auto grid = static_cast<unsigned>(p.T);
  if (p.dtype == DType::Float32) {
    rms_norm_kernel<float><<<grid, kThreads, 0, stream>>>(p);
  } else {
    rms_norm_kernel<uint16_t><<<grid, kThreads, 0, stream>>>(p);
  }
  HELIX_CUDA_CHECK_LAUNCH("rms_norm_kernel");
}

}  // namespace helix::cuda
