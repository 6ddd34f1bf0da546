// Exact merge of N partial attention states by their log-sum-exp (FACTS.md §1):
//   mx = max_i lse_i;  w_i = exp(lse_i - mx);  o = sum_i w_i o_i / sum_i w_i;  lse = mx + log(sum_i w_i)
// All -inf gives (o = 0, lse = -inf). Finite or -inf inputs never give NaN. A part whose weight is 0
// (lse = -inf, or exp underflow) is skipped: its o is never read. N = 1 is the identity (up to o = 0 for
// an lse = -inf row); N = 0 gives the empty state. NaN in an lse gives a NaN row; +inf is outside the
// contract (an lse is a log of a finite sum).
#pragma once

#include <cstdint>

#include "helix/tensor.hpp"

namespace helix {

struct MergeStatesParams {
  const float* o_parts;    // [N, M, D]   M = T*H rows (any row count)
  const float* lse_parts;  // [N, M]
  float* o;                // [M, D]
  float* lse;              // [M]
  int64_t N = 0, M = 0, D = 0;
};

// The kernel: OpenMP over the M rows, a vectorized loop over D. No validation.
void merge_states_cpu(const MergeStatesParams& p);

// The op: validates shapes and dtypes (ArgumentError naming the argument), then runs the kernel.
// o_parts [N,T,H,D] f32; lse_parts [N,T,H] f32; o [T,H,D] f32; lse [T,H] f32.
void merge_states(const TensorView& o_parts, const TensorView& lse_parts, const TensorView& o, const TensorView& lse);

}  // namespace helix
