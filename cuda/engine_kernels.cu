// Small kernels of the CUDA backend's decoder step (declarations: cuda/engine_kernels.cuh).
#include <algorithm>

#include "common.cuh"
#include "engine_kernels.cuh"

namespace helix::cuda {

namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) {
  return std::min<unsigned>(detail::grid_dim(std::max<int64_t>(n, 1), kThreads), 65535u);
}

#define HELIX_GRID_STRIDE(i, n)                                                          \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

__global__ void add_residual_kernel(float* h, const float* y, int64_t n, int* flag) {
  bool bad = false;
  HELIX_GRID_STRIDE(i, n) {
    const float v = h[i] + y[i];
    h[i] = v;
    bad |= !isfinite(v);
  }
  if (bad) *flag = 1;
}

__global__ void sanitize_kernel(float* x, int64_t n, int* flag) {
  bool bad = false;
  HELIX_GRID_STRIDE(i, n) {
    if (!isfinite(x[i])) {
      x[i] = 0.f;
      bad = true;
    }
  }
  if (bad) *flag = 1;
}

template <class Index>
__global__ void gather_rows_kernel(const float* src, const Index* rows, float* dst, int64_t n, int64_t width,
                                   int64_t ld) {
  HELIX_GRID_STRIDE(i, n * width) {
    const int64_t r = i / width, d = i % width;
    dst[i] = src[static_cast<int64_t>(rows[r]) * ld + d];
  }
}

__global__ void set_positions_kernel(int64_t* pool_pos, const int64_t* rows, const int64_t* positions, int64_t n) {
  HELIX_GRID_STRIDE(i, n) {
    if (rows[i] >= 0) pool_pos[rows[i]] = positions[i];
  }
}

__global__ void scatter_add_weighted_kernel(float* y, const float* src, const int32_t* tok, const float* w, int64_t n,
                                            int64_t width) {
  HELIX_GRID_STRIDE(i, n * width) {
    const int64_t r = i / width, d = i % width;
    y[static_cast<int64_t>(tok[r]) * width + d] += w[r] * src[i];
  }
}

template <class T>
__global__ void fill_random_kernel(T* pool, const int64_t* rows, int64_t n, int64_t D, uint64_t seed, float scale) {
  HELIX_GRID_STRIDE(i, n * D) {
    const int64_t r = rows[i / D], d = i % D;
    uint64_t x = seed ^ (static_cast<uint64_t>(r) * 0x9E3779B97F4A7C15ull) ^ (static_cast<uint64_t>(d) << 32);
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    const float u = static_cast<float>(x >> 40) * (1.f / 16777216.f);  // [0, 1)
    detail::store_float(pool, r * D + d, (2.f * u - 1.f) * scale);
  }
}

#undef HELIX_GRID_STRIDE

}  // namespace

void launch_add_residual(float* h, const float* y, int64_t n, int* flag, StreamHandle stream) {
  add_residual_kernel<<<blocks_for(n), kThreads, 0, stream>>>(h, y, n, flag);
  HELIX_CUDA_CHECK_LAUNCH("add_residual_kernel");
}

void launch_sanitize(float* x, int64_t n, int* flag, StreamHandle stream) {
  sanitize_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, n, flag);
  HELIX_CUDA_CHECK_LAUNCH("sanitize_kernel");
}

void launch_gather_rows(const float* src, const int64_t* rows, float* dst, int64_t n, int64_t width, int64_t ld,
                        StreamHandle stream) {
  gather_rows_kernel<int64_t><<<blocks_for(n * width), kThreads, 0, stream>>>(src, rows, dst, n, width, ld);
  HELIX_CUDA_CHECK_LAUNCH("gather_rows_kernel");
}

void launch_gather_rows(const float* src, const int32_t* rows, float* dst, int64_t n, int64_t width, int64_t ld,
                        StreamHandle stream) {
  gather_rows_kernel<int32_t><<<blocks_for(n * width), kThreads, 0, stream>>>(src, rows, dst, n, width, ld);
  HELIX_CUDA_CHECK_LAUNCH("gather_rows_kernel");
}

void launch_set_positions(int64_t* pool_pos, const int64_t* rows, const int64_t* positions, int64_t n,
                          StreamHandle stream) {
  if (n == 0) return;
  set_positions_kernel<<<blocks_for(n), kThreads, 0, stream>>>(pool_pos, rows, positions, n);
  HELIX_CUDA_CHECK_LAUNCH("set_positions_kernel");
}

void launch_scatter_add_weighted(float* y, const float* src, const int32_t* tok, const float* w, int64_t n,
                                 int64_t width, StreamHandle stream) {
  scatter_add_weighted_kernel<<<blocks_for(n * width), kThreads, 0, stream>>>(y, src, tok, w, n, width);
  HELIX_CUDA_CHECK_LAUNCH("scatter_add_weighted_kernel");
}

void launch_fill_random(void* pool, DType dtype, const int64_t* rows, int64_t n, int64_t D, uint64_t seed, float scale,
                        StreamHandle stream) {
  if (n == 0) return;
  if (dtype == DType::Float32) {
    fill_random_kernel<float>
        <<<blocks_for(n * D), kThreads, 0, stream>>>(static_cast<float*>(pool), rows, n, D, seed, scale);
  } else {
    fill_random_kernel<uint16_t>
        <<<blocks_for(n * D), kThreads, 0, stream>>>(static_cast<uint16_t*>(pool), rows, n, D, seed, scale);
  }
  HELIX_CUDA_CHECK_LAUNCH("fill_random_kernel");
}

}  // namespace helix::cuda
