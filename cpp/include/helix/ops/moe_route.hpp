// DeepSeek-V3 "noaux_tc" routing of T tokens over E experts in n_group groups:
//   s       = sigmoid(logits)                      float32
//   b       = s + bias                              (bias: e_score_correction_bias, selection only; NaN -> -inf)
//   group g score = sum of the top-2 b in the group (the top one when a group has one expert); the topk_group
//                   best groups stay eligible (ties: lower index)
//   topk_idx      = the top_k largest b among eligible experts, in descending b (ties: lower index)
//   topk_weight   = s[topk_idx] / (sum s[topk_idx] + 1e-20) if norm_topk_prob, times routed_scaling_factor
// Expert ids are int32 on both devices.
#pragma once

#include <cstdint>

#include "helix/device.hpp"
#include "helix/tensor.hpp"

namespace helix {

struct MoeRouteParams {
  const float* logits = nullptr;  // [T, E]  router logits (h @ gate^T)
  const float* bias = nullptr;    // [E]     e_score_correction_bias
  int32_t* topk_idx = nullptr;    // [T, top_k]  output, global expert ids
  float* topk_weight = nullptr;   // [T, top_k]  output
  int64_t T = 0, E = 0, top_k = 0, n_group = 1, topk_group = 1;
  bool norm_topk_prob = true;
  float routed_scaling_factor = 1.f;
};

// logits [T, E] f32; bias [E] f32; topk_idx [T, top_k] i32; topk_weight [T, top_k] f32;
// E % n_group == 0, 1 <= topk_group <= n_group, 1 <= top_k <= topk_group * E / n_group;
// cuda: E <= kMoeRouteMaxExperts and n_group <= kMoeRouteMaxGroups (one warp per token).
MoeRouteParams check_moe_route_args(const TensorView& logits, const TensorView& bias, int64_t top_k, int64_t n_group,
                                    int64_t topk_group, bool norm_topk_prob, float routed_scaling_factor,
                                    const TensorView& topk_idx, const TensorView& topk_weight, Device device);

inline constexpr int64_t kMoeRouteMaxExperts = 1024, kMoeRouteMaxGroups = 32;

void moe_route_cpu(const MoeRouteParams& p);
namespace cuda {
void launch_moe_route(const MoeRouteParams& p, StreamHandle stream);
}  // namespace cuda

}  // namespace helix
