// Internal: the AVX512_BF16 path of linear_cpu for bf16 weights at T > 1 (linear_bf16_split.cpp).
//
// y[T, N] (=|+=) x[T, K] @ W[N, K]^T with x entering as bf16 hi + lo (x - hi - lo ~ 2^-17 |x|, the split of
// the AMX path) and VDPBF16PS products accumulated in float32: float32-grade, not bit-identical to the
// widened-FMA paths. Two products per multiply-add, so it runs at most at the FMA rate of float32 (on Zen 4
// VDPBF16PS issues at the FMA rate); it beats the widened-FMA tiles because x is packed once per call into
// token pairs, the bf16 weights are used as they are stored (a 32-bit broadcast per pair of weights, no
// widening), and the register tile is 8 weight rows x 32 tokens.
#pragma once

#include "helix/ops/linear.hpp"

namespace helix::detail {

// True when this CPU has AVX-512F + AVX512_BF16 (and the library was built for x86-64).
bool linear_bf16_split_usable();

// Kernel for bf16 weights only (p.w_dtype == BFloat16); same contract as linear_cpu. Falls back to
// `fallback` (a whole-call path that needs no workspace) when out of memory for the packed tokens.
void linear_bf16_split(const LinearParams& p, void (*fallback)(const LinearParams&));

}  // namespace helix::detail
