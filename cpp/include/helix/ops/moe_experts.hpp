// The routed experts held by this rank, applied to the tokens routed to them:
//   out[t] += sum over k with local_first <= topk_idx[t,k] < local_first + n_local of
//             topk_weight[t,k] * down_e(silu(gate_e(h[t])) * up_e(h[t])),   e = topk_idx[t,k] - local_first
// Experts of other ranks contribute nothing here: an all-reduce sums the ranks. With tensor-parallel
// experts, pass each expert's F-slice (F = this rank's share of moe_intermediate).
//   cpu:  tokens grouped by expert, so each expert's weights are read once per call (linear_cpu per expert
//         on its gathered tokens); any T.
//   cuda: a decode step's experts with no host round trip: each expert that got tokens reads its weights
//         once (a GEMV over its <= kMoeExpertsMaxTokens rows); with bf16 weights h and the activation are
//         rounded to bf16 first, like the inputs of cuBLAS; all sums fp32. Shapes: moe_experts_supported.
#pragma once

#include <cstddef>
#include <cstdint>

#include "helix/device.hpp"
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
  DType gate_up_dtype = DType::Float32, down_dtype = DType::Float32;  // cuda: one dtype for both
  void* workspace = nullptr;  // cuda: [cuda::moe_experts_workspace_bytes(p)] bytes, 16-byte aligned; cpu: unused
};

// The most tokens the CUDA launch takes (its plan is one block of 1024 threads; rows load 8 at a time).
inline constexpr int64_t kMoeExpertsMaxTokens = 16;
inline bool moe_experts_supported(int64_t T, int64_t top_k, int64_t n_local, int64_t hidden, int64_t F) {
  return T >= 1 && T <= kMoeExpertsMaxTokens && top_k >= 1 && T * top_k <= 1024 && n_local >= 1 && n_local <= 1024 &&
         hidden >= 8 && hidden % 8 == 0 && F >= 8 && F % 8 == 0;
}

// h [T, hidden] f32; topk_idx [T, top_k] i32; topk_weight [T, top_k] f32; gate_up [n_local, 2F, hidden] and
// down [n_local, hidden, F] f32|bf16 (cuda: one dtype, shapes moe_experts_supported); local_first >= 0;
// out [T, hidden] f32 (added to). The workspace is the caller's (cuda).
MoeExpertsParams check_moe_experts_args(const TensorView& h, const TensorView& topk_idx, const TensorView& topk_weight,
                                        const TensorView& gate_up, const TensorView& down, int64_t local_first,
                                        const TensorView& out, Device device);

void moe_experts_cpu(const MoeExpertsParams& p);
namespace cuda {
size_t moe_experts_workspace_bytes(const MoeExpertsParams& p);
void launch_moe_experts(const MoeExpertsParams& p, StreamHandle stream);
}  // namespace cuda

}  // namespace helix
