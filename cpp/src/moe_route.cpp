#include "helix/ops/moe_route.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace helix {

namespace {

// Descending by score, ties to the lower index: a strict weak order (NaN scores were mapped to -inf).
struct ByScoreDesc {
  const float* score;
  bool operator()(int32_t a, int32_t b) const { return score[a] > score[b] || (score[a] == score[b] && a < b); }
};

}  // namespace

void moe_route_cpu(const MoeRouteParams& p) {
  const int64_t E = p.E, G = p.E / p.n_group;  // G experts per group
  const int64_t per_group = std::min<int64_t>(2, G);
#pragma omp parallel if (p.T * p.E >= (1 << 16))
  {
    std::vector<float> s(E), b(E), group_score(p.n_group);
    std::vector<int32_t> groups(p.n_group), eligible;
    eligible.reserve(E);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < p.T; ++t) {
      const float* logit = p.logits + t * E;
      for (int64_t e = 0; e < E; ++e) {
        s[e] = 1.f / (1.f + std::exp(-logit[e]));
        const float v = s[e] + p.bias[e];
        b[e] = std::isnan(v) ? -std::numeric_limits<float>::infinity() : v;
      }
      // Group score: the sum of the group's top-2 biased scores.
      for (int64_t g = 0; g < p.n_group; ++g) {
        float top[2] = {-std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()};
        for (int64_t e = g * G; e < (g + 1) * G; ++e) {
          if (b[e] > top[0]) {
            top[1] = top[0];
            top[0] = b[e];
          } else if (b[e] > top[1]) {
            top[1] = b[e];
          }
        }
        group_score[g] = per_group == 2 ? top[0] + top[1] : top[0];
        if (std::isnan(group_score[g])) group_score[g] = -std::numeric_limits<float>::infinity();
      }
      std::iota(groups.begin(), groups.end(), 0);
      std::partial_sort(groups.begin(), groups.begin() + p.topk_group, groups.end(), ByScoreDesc{group_score.data()});
      eligible.clear();
      for (int64_t i = 0; i < p.topk_group; ++i) {
        for (int64_t e = groups[i] * G; e < (groups[i] + 1) * G; ++e) eligible.push_back(static_cast<int32_t>(e));
      }
      std::partial_sort(eligible.begin(), eligible.begin() + p.top_k, eligible.end(), ByScoreDesc{b.data()});
      int32_t* idx = p.topk_idx + t * p.top_k;
      float* weight = p.topk_weight + t * p.top_k;
      float total = 0.f;
      for (int64_t k = 0; k < p.top_k; ++k) {
        idx[k] = eligible[k];
        weight[k] = s[eligible[k]];
        total += weight[k];
      }
      const float scale = p.norm_topk_prob ? p.routed_scaling_factor / (total + 1e-20f) : p.routed_scaling_factor;
      for (int64_t k = 0; k < p.top_k; ++k) weight[k] *= scale;
    }
  }
}

void moe_route(const TensorView& logits, const TensorView& bias, int64_t top_k, int64_t n_group, int64_t topk_group,
               bool norm_topk_prob, float routed_scaling_factor, const TensorView& topk_idx,
               const TensorView& topk_weight) {
  check_tensor(logits, "logits", 2, {DType::Float32});
  check_tensor(bias, "bias", 1, {DType::Float32});
  check_tensor(topk_idx, "topk_idx", 2, {DType::Int32});
  check_tensor(topk_weight, "topk_weight", 2, {DType::Float32});
  const int64_t T = logits.dim(0), E = logits.dim(1);
  check_dim(bias, "bias", 0, E, "logits.shape[1] (number of experts)");
  HELIX_CHECK_ARG(n_group >= 1 && E % n_group == 0, "argument 'n_group' (", n_group,
                  ") must be >= 1 and divide the number of experts (", E, ")");
  HELIX_CHECK_ARG(topk_group >= 1 && topk_group <= n_group, "argument 'topk_group' (", topk_group,
                  ") must be in [1, n_group = ", n_group, "]");
  const int64_t eligible = topk_group * (E / n_group);
  HELIX_CHECK_ARG(top_k >= 1 && top_k <= eligible, "argument 'top_k' (", top_k,
                  ") must be in [1, topk_group * experts per group = ", eligible, "]");
  HELIX_CHECK_ARG(std::isfinite(routed_scaling_factor), "argument 'routed_scaling_factor' must be finite");
  check_dim(topk_idx, "topk_idx", 0, T, "logits.shape[0] (T)");
  check_dim(topk_idx, "topk_idx", 1, top_k, "top_k");
  check_dim(topk_weight, "topk_weight", 0, T, "logits.shape[0] (T)");
  check_dim(topk_weight, "topk_weight", 1, top_k, "top_k");
  MoeRouteParams p;
  p.logits = logits.ptr<const float>();
  p.bias = bias.ptr<const float>();
  p.topk_idx = topk_idx.ptr<int32_t>();
  p.topk_weight = topk_weight.ptr<float>();
  p.T = T;
  p.E = E;
  p.top_k = top_k;
  p.n_group = n_group;
  p.topk_group = topk_group;
  p.norm_topk_prob = norm_topk_prob;
  p.routed_scaling_factor = routed_scaling_factor;
  moe_route_cpu(p);
}

}  // namespace helix
