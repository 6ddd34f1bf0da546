// Exact merge of N partial attention states by their log-sum-exp (FACTS.md §1):
//   mx = max_i lse_i;  w_i = exp(lse_i - mx);  o = sum_i w_i o_i / sum_i w_i;  lse = mx + log(sum_i w_i)
// All -inf gives (o = 0, lse = -inf). Finite or -inf inputs never give NaN. A part whose weight is 0
// (lse = -inf, or exp underflow) is skipped: its o is never read. N = 1 is the identity (up to o = 0 for
// an lse = -inf row); N = 0 gives the empty state (cpu). NaN in an lse gives a NaN row; +inf is outside the
// contract (an lse is a log of a finite sum).
//   cpu:  OpenMP over the M rows, a vectorized loop over D.
//   cuda: one block per row, N <= kMergeStatesMaxParts; rows with D % 4 == 0 use 16-byte loads.
#pragma once

#include <cstdint>

#include "helix/device.hpp"
#include "helix/tensor.hpp"

namespace helix {

struct MergeStatesParams {
  const float* o_parts = nullptr;    // [N, M, D]   M rows (e.g. T*H)
  const float* lse_parts = nullptr;  // [N, M]
  float* o = nullptr;                // [M, D]
  float* lse = nullptr;              // [M]
  int64_t N = 0, M = 0, D = 0;
};

inline constexpr int64_t kMergeStatesMaxParts = 256;

// o_parts [N, ..., D] f32; lse_parts [N, ...] f32 (o_parts' shape without D); o [..., D] f32; lse [...] f32,
// the outputs not overlapping the inputs; cuda: 1 <= N <= kMergeStatesMaxParts.
MergeStatesParams check_merge_states_args(const TensorView& o_parts, const TensorView& lse_parts, const TensorView& o,
                                          const TensorView& lse, Device device);

void merge_states_cpu(const MergeStatesParams& p);
namespace cuda {
void launch_merge_states(const MergeStatesParams& p, StreamHandle stream);
}  // namespace cuda

}  // namespace helix
