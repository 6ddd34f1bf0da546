// DeepSeek-V3 "noaux_tc" MoE routing, one warp per token (E <= 1024 experts, n_group <= 32 groups).
//   s = sigmoid(logits) (fp32); b = s + e_score_correction_bias (selection only; NaN counts as -inf)
//   group score = sum of the two largest b in each group (the largest when a group has one expert; NaN
//   counts as -inf); keep the topk_group best groups (ties: lower index)
//   top_k experts by b among the kept groups (ties: lower index), in descending order; -inf experts are
//   chosen too when nothing better is left, exactly like moe_route_cpu
//   weight = s / (sum of the chosen s + 1e-20) when norm_topk_prob, times routed_scaling_factor
#include <limits>

#include "common.cuh"
#include "helix/ops/moe_route.hpp"

namespace helix::cuda {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// (v, i) beats (v2, i2) if larger, ties broken towards the lower index.
__device__ __forceinline__ bool better(float v, int i, float v2, int i2) { return v > v2 || (v == v2 && i < i2); }

__device__ __forceinline__ void warp_argmax(float& v, int& i) {
  for (int o = 16; o > 0; o >>= 1) {
    const float v2 = __shfl_xor_sync(0xffffffffu, v, o);
    const int i2 = __shfl_xor_sync(0xffffffffu, i, o);
    if (better(v2, i2, v, i)) {
      v = v2;
      i = i2;
    }
  }
}

__global__ void __launch_bounds__(32) moe_route_kernel(MoeRouteParams p) {
  extern __shared__ float smem[];
  const int E = static_cast<int>(p.E), G = static_cast<int>(p.E / p.n_group);
  float* s_s = smem;      // [E] sigmoid scores
  float* b_s = smem + E;  // [E] biased scores; chosen experts become NaN (never "better" than anything)
  float* g_s = b_s + E;   // [n_group] group scores
  const int lane = threadIdx.x;
  const int64_t t = blockIdx.x;
  for (int e = lane; e < E; e += 32) {
    const float s = 1.f / (1.f + expf(-p.logits[t * E + e]));
    s_s[e] = s;
    const float b = s + p.bias[e];
    b_s[e] = isnan(b) ? kNegInf : b;
  }
  __syncwarp();
  if (lane < p.n_group) {
    float t1 = kNegInf, t2 = kNegInf;
    for (int e = lane * G; e < (lane + 1) * G; ++e) {
      const float v = b_s[e];
      if (v > t1) {
        t2 = t1;
        t1 = v;
      } else if (v > t2) {
        t2 = v;
      }
    }
    const float score = G >= 2 ? t1 + t2 : t1;
    g_s[lane] = isnan(score) ? kNegInf : score;  // +inf + -inf
  }
  __syncwarp();
  // Groups kept: topk_group rounds of a warp argmax over the group scores (lane = group).
  // A kept group (and a lane past n_group) competes as (-inf, 1 << 30): it loses every tie against a group
  // not kept yet, and one always remains (topk_group <= n_group), so i is a valid group each round.
  unsigned kept = 0;
  bool open = lane < p.n_group;
  for (int k = 0; k < p.topk_group; ++k) {
    float v = open ? g_s[lane] : kNegInf;
    int i = open ? lane : 1 << 30;
    warp_argmax(v, i);
    kept |= 1u << i;
    if (lane == i) open = false;
  }
  float chosen_sum = 0.f;
  for (int k = 0; k < p.top_k; ++k) {
    float v = kNegInf;
    int i = 1 << 30;
    for (int e = lane; e < E; e += 32) {
      if (((kept >> (e / G)) & 1u) && better(b_s[e], e, v, i)) {
        v = b_s[e];
        i = e;
      }
    }
    warp_argmax(v, i);
    // i is valid: an unchosen expert of a kept group beats (-inf, 1 << 30) (top_k <= topk_group * G).
    if (lane == 0) {
      p.topk_idx[t * p.top_k + k] = i;
      p.topk_weight[t * p.top_k + k] = s_s[i];
      b_s[i] = std::numeric_limits<float>::quiet_NaN();
    }
    chosen_sum += s_s[i];
    __syncwarp();
  }
  if (lane == 0) {
    const float scale = p.norm_topk_prob ? p.routed_scaling_factor / (chosen_sum + 1e-20f) : p.routed_scaling_factor;
    for (int k = 0; k < p.top_k; ++k) p.topk_weight[t * p.top_k + k] *= scale;
  }
}

}  // namespace

void launch_moe_route(const MoeRouteParams& p, StreamHandle stream) {
  if (p.T == 0) return;
  HELIX_CHECK(p.E >= 1 && p.E <= kMoeRouteMaxExperts && p.n_group >= 1 && p.n_group <= kMoeRouteMaxGroups &&
                  p.E % p.n_group == 0 && p.topk_group >= 1 && p.topk_group <= p.n_group && p.top_k >= 1 &&
                  p.top_k <= p.topk_group * (p.E / p.n_group),
              "moe_route: unsupported routing shape E=", p.E, " n_group=", p.n_group, " topk_group=", p.topk_group,
              " top_k=", p.top_k);
  const size_t smem = (2 * p.E + p.n_group) * sizeof(float);
  moe_route_kernel<<<static_cast<unsigned>(p.T), 32, smem, stream>>>(p);
  HELIX_CUDA_CHECK_LAUNCH("moe_route_kernel");
}

}  // namespace helix::cuda
