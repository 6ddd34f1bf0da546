// The routed experts held by this rank, applied to the tokens routed to them:
//   out[t] += sum over k with local_first <= topk_idx[t,k] < local_first + n_local of
//             topk_weight[t,k] * down_e(silu(gate_e(h[t])) * up_e(h[t])),   e = topk_idx[t,k] - local_first
// Tokens are grouped by expert, so each expert's weights are read once per call (linear_cpu per expert on
// its gathered tokens). Experts of other ranks contribute nothing here: an all-reduce sums the ranks.
// With tensor-parallel experts, pass each expert's F-slice (F = this rank's share of moe_intermediate).
#pragma once

#include <cstdint>

#include "helix/dtype.hpp"
#include "helix/tensor.hpp"

namespace helix {

struct MoeExpertsParams {
  const float* h = nullptr;            // [T, hidden]
  const int32_t* topk_idx = nullptr;   // [T, top_k]  global expert ids (any value; non-local ones are skipped)
  const float* topk_weight = nullptr;  // [T, top_k]
  const void* gate_up = nullptr;       // [n_local, 2F, hidden]  gate_up_dtype; gate rows first, then up rows
  const void* down = nullptr;          // [n_local, hidden, F]   down_dtype
  float* out = nullptr;                // [T, hidden]  accumulated into
  int64_t T = 0, top_k = 0, hidden = 0, F = 0, local_first = 0, n_local = 0;
  DType gate_up_dtype = DType::Float32, down_dtype = DType::Float32;
};

void moe_experts_cpu(const MoeExpertsParams& p);

struct MoeExpertsShape {
  int64_t T = 0, top_k = 0, hidden = 0, F = 0, n_local = 0;
};
// The argument checks of moe_experts, shared with the CUDA twin's binding (whose topk_idx is Int64, as
// its router writes it): throws ArgumentError naming the bad argument.
MoeExpertsShape check_moe_experts_args(const TensorView& h, const TensorView& topk_idx, const TensorView& topk_weight,
                                       const TensorView& gate_up, const TensorView& down, DType idx_dtype);

// Validated op: h [T, hidden] f32; topk_idx [T, top_k] i32; topk_weight [T, top_k] f32;
// gate_up [n_local, 2F, hidden] f32|bf16; down [n_local, hidden, F] f32|bf16; out [T, hidden] f32 (+=).
void moe_experts(const TensorView& h, const TensorView& topk_idx, const TensorView& topk_weight,
                 const TensorView& gate_up, const TensorView& down, int64_t local_first, const TensorView& out);

}  // namespace helix
