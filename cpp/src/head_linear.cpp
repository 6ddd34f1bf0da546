#include "helix/ops/head_linear.hpp"

#include "helix/ops/linear.hpp"

namespace helix {

void head_linear_cpu(const HeadLinearParams& p) {
  const int64_t w_head_bytes = p.N * p.K * dtype_size(p.w_dtype);
  for (int64_t h = 0; h < p.H; ++h) {
    LinearParams lp;
    lp.x = static_cast<const float*>(p.x) + h * p.x_head_stride;
    lp.w = static_cast<const unsigned char*>(p.w) + h * w_head_bytes;
    lp.y = p.y + h * p.y_head_stride;
    lp.T = p.T;
    lp.N = p.N;
    lp.K = p.K;
    lp.ldx = p.ldx;
    lp.ldy = p.ldy;
    lp.w_dtype = p.w_dtype;
    linear_cpu(lp);
  }
}

}  // namespace helix
