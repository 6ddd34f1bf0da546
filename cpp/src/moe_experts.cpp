#include "helix/ops/moe_experts.hpp"

#include <algorithm>
#include <vector>

#include "helix/ops/linear.hpp"
#include "helix/ops/silu_mul.hpp"

namespace helix {

void moe_experts_cpu(const MoeExpertsParams& p) {
  // Bucket the (token, weight) pairs by local expert, in token order.
  std::vector<std::vector<std::pair<int64_t, float>>> routed(static_cast<size_t>(p.n_local));
  size_t most = 0;
  for (int64_t t = 0; t < p.T; ++t) {
    for (int64_t k = 0; k < p.top_k; ++k) {
      const int64_t e = static_cast<int64_t>(p.topk_idx[t * p.top_k + k]) - p.local_first;
      if (e < 0 || e >= p.n_local) continue;
      routed[e].emplace_back(t, p.topk_weight[t * p.top_k + k]);
      most = std::max(most, routed[e].size());
    }
  }
  if (most == 0) return;
  // Workspaces sized for the busiest expert: x [n, hidden], gate_up [n, 2F], act [n, F], y [n, hidden].
  std::vector<float> x(most * p.hidden), gu(most * 2 * p.F), act(most * p.F), y(most * p.hidden);
  const int64_t gu_bytes = 2 * p.F * p.hidden * dtype_size(p.gate_up_dtype);
  const int64_t down_bytes = p.hidden * p.F * dtype_size(p.down_dtype);
  for (int64_t e = 0; e < p.n_local; ++e) {
    const auto& tokens = routed[e];
    const int64_t n = static_cast<int64_t>(tokens.size());
    if (n == 0) continue;
    for (int64_t i = 0; i < n; ++i) {
      std::copy_n(p.h + tokens[i].first * p.hidden, p.hidden, x.data() + i * p.hidden);
    }
    LinearParams up;
    up.x = x.data();
    up.w = static_cast<const char*>(p.gate_up) + e * gu_bytes;
    up.y = gu.data();
    up.T = n;
    up.N = 2 * p.F;
    up.K = p.hidden;
    up.ldx = p.hidden;
    up.ldy = 2 * p.F;
    up.w_dtype = p.gate_up_dtype;
    linear_cpu(up);
    silu_mul_cpu(SiluMulParams{gu.data(), act.data(), n, p.F});
    LinearParams down;
    down.x = act.data();
    down.w = static_cast<const char*>(p.down) + e * down_bytes;
    down.y = y.data();
    down.T = n;
    down.N = p.hidden;
    down.K = p.F;
    down.ldx = p.F;
    down.ldy = p.hidden;
    down.w_dtype = p.down_dtype;
    linear_cpu(down);
    for (int64_t i = 0; i < n; ++i) {
      float* out = p.out + tokens[i].first * p.hidden;
      const float* src = y.data() + i * p.hidden;
      const float w = tokens[i].second;
      for (int64_t d = 0; d < p.hidden; ++d) out[d] += w * src[d];
    }
  }
}

}  // namespace helix
