// Exact LSE merge of N partial attention states (contract: cpp/include/helix/ops/merge_states.hpp).
//
// Grid (M rows, column chunks); block of 128 threads. The block reads the row's N <= 256 LSEs once into
// shared memory, reduces max and sum of weights, then each thread streams one 16-byte column vector of
// every part (parts with zero weight are skipped: they hold no mass and may be any value).
#include <algorithm>
#include <cmath>
#include <limits>

#include "common.cuh"
#include "helix/ops/merge_states.hpp"

namespace helix::cuda {

namespace {

constexpr int kThreads = 128;
constexpr int kMaxParts = static_cast<int>(kMergeStatesMaxParts);

// The max that keeps NaN (fmaxf drops it): a NaN lse must give a NaN row, as in merge_states_cpu.
__device__ __forceinline__ float max_keep_nan(float a, float b) { return isnan(a) || isnan(b) ? a + b : fmaxf(a, b); }

template <bool kVec4>
__global__ void __launch_bounds__(kThreads) merge_states_kernel(MergeStatesParams p) {
  __shared__ float w_s[kMaxParts];
  __shared__ float red_s[kThreads / 32];
  __shared__ float max_s, sum_s;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t m = blockIdx.x;
  const int N = static_cast<int>(p.N);
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();

  float local_max = kNegInf;
  for (int i = tid; i < N; i += kThreads) {
    const float l = p.lse_parts[static_cast<int64_t>(i) * p.M + m];
    w_s[i] = l;
    local_max = max_keep_nan(local_max, l);
  }
  for (int o = 16; o > 0; o >>= 1) local_max = max_keep_nan(local_max, __shfl_xor_sync(0xffffffffu, local_max, o));
  if (lane == 0) red_s[warp] = local_max;
  __syncthreads();
  if (tid == 0) {
    float v = red_s[0];
    for (int w = 1; w < kThreads / 32; ++w) v = max_keep_nan(v, red_s[w]);
    max_s = v;
  }
  __syncthreads();
  const float M = max_s;
  float local_sum = 0.f;
  for (int i = tid; i < N; i += kThreads) {
    const float w = M == kNegInf ? 0.f : expf(w_s[i] - M);  // exp(-inf) = 0 for empty parts
    w_s[i] = w;
    local_sum += w;
  }
  local_sum = detail::warp_sum(local_sum);
  __syncthreads();  // red_s reuse
  if (lane == 0) red_s[warp] = local_sum;
  __syncthreads();
  if (tid == 0) {
    float v = 0.f;
    for (int w = 0; w < kThreads / 32; ++w) v += red_s[w];
    sum_s = v;
    // A NaN max makes every weight, v and the row NaN.
    if (blockIdx.y == 0) p.lse[m] = isnan(v) ? v : v > 0.f ? M + logf(v) : kNegInf;
  }
  __syncthreads();
  const float inv = sum_s > 0.f ? 1.f / sum_s : 0.f;

  if constexpr (kVec4) {
    const int64_t D4 = p.D / 4;
    const int64_t col = static_cast<int64_t>(blockIdx.y) * kThreads + tid;
    if (col >= D4) return;
    const float4* parts = reinterpret_cast<const float4*>(p.o_parts);
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 4
    for (int i = 0; i < N; ++i) {
      const float w = w_s[i];
      if (w == 0.f) continue;
      const float4 v = __ldg(parts + (static_cast<int64_t>(i) * p.M + m) * D4 + col);
      acc.x = fmaf(w, v.x, acc.x);
      acc.y = fmaf(w, v.y, acc.y);
      acc.z = fmaf(w, v.z, acc.z);
      acc.w = fmaf(w, v.w, acc.w);
    }
    reinterpret_cast<float4*>(p.o)[m * D4 + col] = make_float4(acc.x * inv, acc.y * inv, acc.z * inv, acc.w * inv);
  } else {
    const int64_t col = static_cast<int64_t>(blockIdx.y) * kThreads + tid;
    if (col >= p.D) return;
    float acc = 0.f;
    for (int i = 0; i < N; ++i) {
      const float w = w_s[i];
      if (w == 0.f) continue;
      acc = fmaf(w, p.o_parts[(static_cast<int64_t>(i) * p.M + m) * p.D + col], acc);
    }
    p.o[m * p.D + col] = acc * inv;
  }
}

}  // namespace

void launch_merge_states(const MergeStatesParams& p, StreamHandle stream) {
  HELIX_CHECK(p.N >= 1 && p.N <= kMaxParts, "merge_states: the number of parts must be in [1, 256], got ", p.N);
  if (p.M == 0) return;
  HELIX_CHECK(p.M <= 0x7fffffff, "merge_states: too many rows (", p.M, ")");
  const bool vec4 =
      p.D % 4 == 0 && reinterpret_cast<uintptr_t>(p.o_parts) % 16 == 0 && reinterpret_cast<uintptr_t>(p.o) % 16 == 0;
  const int64_t cols = vec4 ? p.D / 4 : p.D;
  const dim3 grid(static_cast<unsigned>(p.M), std::max(1u, detail::grid_dim(cols, kThreads)));
  if (vec4) {
    merge_states_kernel<true><<<grid, kThreads, 0, stream>>>(p);
  } else {
    merge_states_kernel<false><<<grid, kThreads, 0, stream>>>(p);
  }
  HELIX_CUDA_CHECK_LAUNCH("merge_states_kernel");
}

}  // namespace helix::cuda
