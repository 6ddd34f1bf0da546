// Internal helpers shared by the kernels in cuda/ (never included from cpp/ or the bindings).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "helix/cuda.hpp"
#include "helix/error.hpp"

namespace helix::cuda::detail {

__device__ __forceinline__ float bf16_bits_to_float(uint16_t v) { return __uint_as_float(uint32_t(v) << 16); }
__device__ __forceinline__ uint16_t float_to_bf16_bits(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }

// Load / store one element of a Float32 or BFloat16 array as float.
template <class T>
__device__ __forceinline__ float load_as_float(const T* p, int64_t i);
template <>
__device__ __forceinline__ float load_as_float<float>(const float* p, int64_t i) {
  return p[i];
}
template <>
__device__ __forceinline__ float load_as_float<uint16_t>(const uint16_t* p, int64_t i) {
  return bf16_bits_to_float(p[i]);
}
template <class T>
__device__ __forceinline__ void store_float(T* p, int64_t i, float v);
template <>
__device__ __forceinline__ void store_float<float>(float* p, int64_t i, float v) {
  p[i] = v;
}
template <>
__device__ __forceinline__ void store_float<uint16_t>(uint16_t* p, int64_t i, float v) {
  p[i] = float_to_bf16_bits(v);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Checks the launch itself (bad configuration); asynchronous faults surface at the next checked call.
inline void check_launch(const char* kernel, const char* file, int line) {
  check_cuda(static_cast<int>(cudaGetLastError()), kernel, file, line);
}

inline unsigned grid_dim(int64_t n, int64_t per_block) {
  return static_cast<unsigned>((n + per_block - 1) / per_block);
}

// y[n] = bf16(x[n]) (round to nearest even) on `stream` (cuda/convert.cu).
void launch_to_bf16(const float* x, uint16_t* y, int64_t n, StreamHandle stream);

}  // namespace helix::cuda::detail

#define HELIX_CUDA_CHECK_LAUNCH(name) ::helix::cuda::detail::check_launch(name, __FILE__, __LINE__)
