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

}  // namespace helix
