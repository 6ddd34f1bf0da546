// Exact merge of N partial attention states by their log-sum-exp (FACTS.md §1):
//   M = max_i lse_i;  w_i = exp(lse_i - M);  o = sum_i w_i o_i / sum_i w_i;  lse = M + log(sum_i w_i)
// All -inf gives (o = 0, lse = -inf). Finite or -inf inputs never give NaN.
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

void merge_states_cpu(const MergeStatesParams& p);

// o_parts [N,T,H,D] f32; lse_parts [N,T,H] f32; o [T,H,D] f32; lse [T,H] f32.
void merge_states(const TensorView& o_parts, const TensorView& lse_parts, const TensorView& o,
                  const TensorView& lse);

}  // namespace helix
