#include "helix/ops/silu_mul.hpp"

#include <cmath>

namespace helix {

void silu_mul_cpu(const SiluMulParams& p) {
#pragma omp parallel for schedule(static) if (p.T * p.F >= (1 << 16))
  for (int64_t t = 0; t < p.T; ++t) {
    const float* gate = static_cast<const float*>(p.gate_up) + t * 2 * p.F;  // [F]
    const float* up = gate + p.F;                                            // [F]
    float* out = static_cast<float*>(p.out) + t * p.F;                       // [F]
    // g / (1 + e^-g): e^-g overflows to inf for very negative g and the quotient is then -0, never NaN.
    for (int64_t f = 0; f < p.F; ++f) out[f] = gate[f] / (1.f + std::exp(-gate[f])) * up[f];
  }
}

}  // namespace helix
