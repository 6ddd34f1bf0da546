// The CUDA benchmarks' entry points (cuda/bench.cu): device-resident data, timed with CUDA events. Internal:
// not part of the runtime's C++ API (helix/cuda.hpp); only the benchmark binding (python/src/
// bind_cuda_bench.cpp, helix._core.cuda_bench) and the stubs of a CPU-only build (cuda/no_cuda.cpp) include it.
#pragma once

#include <cstddef>
#include <cstdint>

#include "helix/ops/attention.hpp"

namespace helix::cuda {

struct BenchResult {
  double ms = 0;     // mean time per call
  double bytes = 0;  // bytes that must move per call
  double flops = 0;  // floating-point operations per call
};
// Device-to-device copy of `bytes` (read + write counted) with a vectorized copy kernel.
BenchResult bench_copy(size_t bytes, int iters);
// Square-ish bf16 GEMM (fp32 accumulate) through cuBLAS: [m, k] x [k, n].
BenchResult bench_gemm_bf16(int64_t m, int64_t n, int64_t k, int iters);
// Decode partial attention: `batch` sequences of `context` keys, one query token each, block 64;
// num_splits 0 = the launch's own plan. Inputs rotate among copies spanning 256 MiB (never L2-resident).
BenchResult bench_paged_mla_attention(int64_t batch, int64_t context, int64_t heads, int64_t D, int64_t R,
                                      AttentionKernel kernel, int iters, int num_splits = 0);
BenchResult bench_merge_states(int64_t N, int64_t M, int64_t D, int iters);
// launch_moe_experts on bf16 weights: token t takes local experts (t * top_k + k) % n_local, so
// min(T * top_k, n_local) experts are read per call (bytes: their weights; FLOPs: 6 hidden F per pair).
BenchResult bench_moe_experts(int64_t T, int64_t top_k, int64_t n_local, int64_t hidden, int64_t F, int iters);

}  // namespace helix::cuda
