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

MoeExpertsShape check_moe_experts_args(const TensorView& h, const TensorView& topk_idx, const TensorView& topk_weight,
                                       const TensorView& gate_up, const TensorView& down, DType idx_dtype) {
  check_tensor(h, "h", 2, {DType::Float32});
  check_tensor(topk_idx, "topk_idx", 2, {idx_dtype});
  check_tensor(topk_weight, "topk_weight", 2, {DType::Float32});
  check_tensor(gate_up, "gate_up", 3, {DType::Float32, DType::BFloat16});
  check_tensor(down, "down", 3, {DType::Float32, DType::BFloat16});
  const int64_t T = h.dim(0), hidden = h.dim(1), top_k = topk_idx.dim(1), n_local = gate_up.dim(0);
  check_dim(topk_idx, "topk_idx", 0, T, "h.shape[0] (T)");
  check_dim(topk_weight, "topk_weight", 0, T, "h.shape[0] (T)");
  check_dim(topk_weight, "topk_weight", 1, top_k, "topk_idx.shape[1] (top_k)");
  HELIX_CHECK_ARG(gate_up.dim(1) % 2 == 0, "argument 'gate_up' must have shape [n_local, 2F, hidden], got ",
                  shape_str(gate_up.shape));
  const int64_t F = gate_up.dim(1) / 2;
  check_dim(gate_up, "gate_up", 2, hidden, "h.shape[1] (hidden)");
  check_dim(down, "down", 0, n_local, "gate_up.shape[0] (n_local)");
  check_dim(down, "down", 1, hidden, "h.shape[1] (hidden)");
  check_dim(down, "down", 2, F, "gate_up.shape[1] / 2 (F)");
  return {T, top_k, hidden, F, n_local};
}

void moe_experts(const TensorView& h, const TensorView& topk_idx, const TensorView& topk_weight,
                 const TensorView& gate_up, const TensorView& down, int64_t local_first, const TensorView& out) {
  const auto [T, top_k, hidden, F, n_local] =
      check_moe_experts_args(h, topk_idx, topk_weight, gate_up, down, DType::Int32);
  check_tensor(out, "out", 2, {DType::Float32});
  check_dim(out, "out", 0, T, "h.shape[0] (T)");
  check_dim(out, "out", 1, hidden, "h.shape[1] (hidden)");
  HELIX_CHECK_ARG(local_first >= 0, "argument 'local_first' must be >= 0, got ", local_first);
  const auto* a = static_cast<const char*>(h.data);
  const auto* b = static_cast<const char*>(out.data);
  HELIX_CHECK_ARG(out.nbytes() == 0 || a + h.nbytes() <= b || b + out.nbytes() <= a,
                  "argument 'out' must not overlap 'h'");
  MoeExpertsParams p;
  p.h = h.ptr<const float>();
  p.topk_idx = topk_idx.ptr<const int32_t>();
  p.topk_weight = topk_weight.ptr<const float>();
  p.gate_up = gate_up.data;
  p.down = down.data;
  p.out = out.ptr<float>();
  p.T = T;
  p.top_k = top_k;
  p.hidden = hidden;
  p.F = F;
  p.local_first = local_first;
  p.n_local = n_local;
  p.gate_up_dtype = gate_up.dtype;
  p.down_dtype = down.dtype;
  moe_experts_cpu(p);
}

}  // namespace helix
