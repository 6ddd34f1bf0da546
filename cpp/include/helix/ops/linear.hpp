// Linear layer for decode: y[T, N] (=|+=) x[T, K] @ W[N, K]^T.
//
// x and y are float32; W is float32 or bfloat16 (bf16 is widened to f32 in registers, never rounded x).
// Written for small T: every weight element is read from memory once per call while all T <= ~tens of
// tokens stay in cache; larger T is processed in token blocks (the weight is re-read once per block).
// Threads (OpenMP) split the output rows N. The SIMD path (AVX-512F, AVX2+FMA or portable C++) is picked at
// run time from the CPU, so the library runs on any x86-64 CPU.
#pragma once

#include <cstdint>
#include <string_view>

#include "helix/dtype.hpp"
#include "helix/tensor.hpp"

namespace helix {

struct LinearParams {
  const float* x = nullptr;  // [T, ldx]   the first K columns of each row are read
  const void* w = nullptr;   // [N, K]     w_dtype, dense
  float* y = nullptr;        // [T, ldy]   columns [0, N) written (or added to)
  int64_t T = 0, N = 0, K = 0;
  int64_t ldx = 0, ldy = 0;  // row strides in elements (>= K, >= N)
  DType w_dtype = DType::Float32;
  bool accumulate = false;   // y += x @ W^T (residual add) instead of y = x @ W^T
};

// Kernel (no validation). Must not be called with y overlapping x or w.
void linear_cpu(const LinearParams& p);

// The SIMD path linear_cpu uses on this CPU: "avx512", "avx2" or "portable".
const char* linear_isa();

// linear_cpu on a named SIMD path (for tests and benchmarks). Throws ArgumentError for an unknown name or
// a path this CPU cannot run.
void linear_cpu_isa(const LinearParams& p, std::string_view isa);

// Validated op: x [T, K] f32; w [N, K] f32|bf16; y [T, N] f32 (written, or added to when accumulate).
// isa: "" picks the best path for this CPU, else as linear_cpu_isa.
void linear(const TensorView& x, const TensorView& w, const TensorView& y, bool accumulate,
            std::string_view isa = "");

}  // namespace helix
