// Linear layer for decode: y[T, N] (=|+=) x[T, K] @ W[N, K]^T.
//
// Dtypes (x_dtype, w_dtype, y_dtype) each device runs:
//   cpu:  x float32, W float32 or bfloat16 (bf16 is widened to f32 in registers, never rounded x), y float32.
//   cuda: cuBLAS (cublasGemmEx, fp32 compute): x and W of one dtype, BFloat16 (y float32 or bfloat16) or
//         Float32 (y float32; strict fp32, no TF32).
// The CPU kernels:
// Written for small T: every weight element is read from memory once per call while all T <= ~tens of
// tokens stay in cache; larger T is processed in token blocks (the weight is re-read once per block).
// Threads (OpenMP) split the output rows N. The SIMD path (AVX-512F, AVX2+FMA or portable C++) is picked at
// run time from the CPU, so the library runs on any x86-64 CPU.
//
// AMX path (bf16 weights, T >= kLinearAmxMinTokens, chosen at run time where the CPU has AMX-BF16 and the OS
// grants the tile-data permission): x is split into bf16 hi + lo parts (x ~= hi + lo to ~2^-17 relative) and
// both are multiplied with the bf16 weights on AMX tiles with float32 accumulation, so the result is of the
// same accuracy class as the widened-f32 FMA paths (not bit-identical to them). Float32 weights never use it.
//
// Precision (process-wide, set_linear_precision): Float32 (the default) keeps every path float32-grade as
// above. Bf16 rounds x once to bf16 (nearest even) in calls with bf16 weights and T >= kLinearBf16MinTokens
// and does one bf16 product per multiply-add ("amx_bf16" / "avx512_bf16", twice the rate of the split paths,
// ~2^-9 relative error per x element, what PyTorch / oneDNN bf16 matmuls do); decode-sized calls keep the
// float32-grade paths in both precisions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "helix/device.hpp"
#include "helix/dtype.hpp"
#include "helix/tensor.hpp"

namespace helix {

struct LinearParams {
  const void* x = nullptr;  // [T, ldx]   x_dtype: the first K columns of each row are read
  const void* w = nullptr;  // [N, K]     w_dtype, dense
  void* y = nullptr;        // [T, ldy]   y_dtype: columns [0, N) written (or added to)
  int64_t T = 0, N = 0, K = 0;
  int64_t ldx = 0, ldy = 0;  // row strides in elements (>= K, >= N)
  DType w_dtype = DType::Float32;
  bool accumulate = false;  // y += x @ W^T (residual add) instead of y = x @ W^T
  DType x_dtype = DType::Float32, y_dtype = DType::Float32;
};

// Tokens from which linear_cpu runs bf16 weights on AMX tiles. Measured on Emerald Rapids (1 thread,
// DeepSeek-V3 shapes, weights streamed from DRAM): T = 4 on AMX is 0.75-0.95x the AVX-512 path (both bound
// by the weight stream, which the AMX tile loads pull at ~12 GB/s against ~17 GB/s), T = 8 is 1.4-1.8x,
// T >= 16 2.6-3.9x (docs/performance.md §3).
inline constexpr int64_t kLinearAmxMinTokens = 8;

// Tokens from which linear_cpu runs bf16 weights on the AVX512_BF16 split path (CPUs with AVX512_BF16 and no
// usable AMX; linear_bf16.hpp). Measured on Zen 4 (1 thread, DeepSeek shapes): T = 8 fills half of
// its 16-token vectors and runs at 0.6x the AVX-512 path; T = 16 at 1.05-1.25x, T = 512 at 1.1-1.7x (90-105
// GFLOP/s, near the core's float32 FMA rate, where the AVX-512 tiles fall to 58-90); docs/performance.md §8.2.
inline constexpr int64_t kLinearBf16SplitMinTokens = 16;

// Tokens from which Bf16 precision rounds x to bf16 (both CPU families; T < 16 is decode, speculative
// verification and small batches, which stay float32-grade).
inline constexpr int64_t kLinearBf16MinTokens = 16;

// The compute precision of linear_cpu's bf16-weight paths, for the whole process (see above).
enum class LinearPrecision : uint8_t { Float32, Bf16 };
void set_linear_precision(LinearPrecision precision);
LinearPrecision linear_precision();

// Kernel (no validation). Must not be called with y overlapping x or w. bf16 weights with T >=
// kLinearAmxMinTokens run on AMX where usable, else with T >= kLinearBf16SplitMinTokens on AVX512_BF16 where
// the CPU has it (x split, or rounded at Bf16 precision from kLinearBf16MinTokens); everything else on the
// SIMD path linear_isa().
void linear_cpu(const LinearParams& p);

// The SIMD path linear_cpu uses on this CPU: "avx512", "avx2" or "portable" (AMX aside, see above).
const char* linear_isa();

// Every path linear_cpu_isa accepts on this CPU (and OS), fastest first: "amx_bf16", "amx" (when usable),
// "avx512_bf16", "avx512_bf16_split" (when the CPU has AVX512_BF16), then the SIMD ones.
std::vector<std::string> linear_isas();

// linear_cpu on a named path (for tests and benchmarks), whatever the precision: "avx512", "avx2", "portable",
// "amx" / "amx_bf16" (AMX tiles for bf16 weights at any T, x split / rounded) or "avx512_bf16_split" /
// "avx512_bf16" (AVX512_BF16, bf16 weights at any T, x split / rounded); float32 weights run the avx512 path
// on the last four. Throws ArgumentError for an unknown name or a path this CPU (or OS) cannot run.
void linear_cpu_isa(const LinearParams& p, std::string_view isa);

// x [T, K]; w [N, K]; out [T, N] not overlapping x or w (written, or added to when accumulate); dtypes as the
// device runs them (above). Returns the dense Params.
LinearParams check_linear_args(const TensorView& x, const TensorView& w, const TensorView& out, bool accumulate,
                               Device device);

namespace cuda {
bool built_with_cublas();
void launch_linear(const LinearParams& p, StreamHandle stream);
}  // namespace cuda

}  // namespace helix
