// Internal: the AVX512_BF16 paths of linear_cpu for bf16 weights at T > 1 (linear_bf16.cpp).
//
// y[T, N] (=|+=) x[T, K] @ W[N, K]^T with VDPBF16PS products accumulated in float32, x entering as
//   XBf16::Split   ("avx512_bf16_split"): bf16 hi + lo (x - hi - lo ~ 2^-17 |x|, the split of the AMX path),
//                  two products per multiply-add: float32-grade, not bit-identical to the widened-FMA paths;
//                  at most the float32 FMA rate (on Zen 4 VDPBF16PS issues at the FMA rate);
//   XBf16::Rounded ("avx512_bf16"): x rounded once to bf16 (round to nearest even), one product: twice the
//                  rate, bf16-grade (~2^-9 relative per x element), what oneDNN / PyTorch bf16 matmuls do.
// Both beat the widened-FMA tiles because x is packed once per call into token pairs, the bf16 weights are
// used as they are stored (a 32-bit broadcast per pair of weights, no widening), and the register tile is
// 8 weight rows x 32 tokens.
#pragma once

#include "helix/ops/linear.hpp"

namespace helix::detail {

// How x enters bf16 tile products (here and on AMX, linear.cpp): the number of bf16 parts per element.
enum class XBf16 : int { Rounded = 1, Split = 2 };

// A tile of y^T [rows][st_ld] (tokens in a row) into y [T, ldy] at tokens [t0, t0 + M), rows [n0, n0 + rows):
// written, or added when p.accumulate. Shared by the bf16 tile paths (here and AMX).
inline void store_tile_transposed(const LinearParams& p, const float* st, int64_t st_ld, int64_t t0, int64_t M,
                                  int64_t n0, int64_t rows) {
  for (int64_t m = 0; m < M; ++m) {
    float* y = static_cast<float*>(p.y) + (t0 + m) * p.ldy + n0;
    if (p.accumulate) {
      for (int64_t r = 0; r < rows; ++r) y[r] += st[r * st_ld + m];
    } else {
      for (int64_t r = 0; r < rows; ++r) y[r] = st[r * st_ld + m];
    }
  }
}

// True when this CPU has AVX-512F + AVX512_BF16 (and the library was built for x86-64).
bool linear_bf16_usable();

// Kernel for bf16 weights only (p.w_dtype == BFloat16); same contract as linear_cpu. Falls back to
// `fallback` (a whole-call path that needs no workspace) when out of memory for the packed tokens.
void linear_bf16(const LinearParams& p, XBf16 x_parts, void (*fallback)(const LinearParams&));

}  // namespace helix::detail
