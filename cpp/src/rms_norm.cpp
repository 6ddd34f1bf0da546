#include "helix/ops/rms_norm.hpp"

#include <cmath>

namespace helix {

void rms_norm_cpu(const RmsNormParams& p) {
#pragma omp parallel for schedule(static) if (p.T * p.D >= (1 << 16))
  for (int64_t t = 0; t < p.T; ++t) {
    const float* x = static_cast<const float*>(p.x) + t * p.ldx;  // [D]
    const float* w = static_cast<const float*>(p.w);              // [D]
    float* y = static_cast<float*>(p.y) + t * p.ldy;              // [D]
    double ss = 0.0;
    for (int64_t d = 0; d < p.D; ++d) ss += static_cast<double>(x[d]) * x[d];
    const float r = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(p.D) + p.eps));
    for (int64_t d = 0; d < p.D; ++d) y[d] = x[d] * r * w[d];
  }
}

}  // namespace helix
