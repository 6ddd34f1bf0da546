#include "helix/ops/silu_mul.hpp"

#include <cmath>

namespace helix {

void silu_mul_cpu(const SiluMulParams& p) {
#pragma omp parallel for schedule(static) if (p.T * p.F >= (1 << 16))
  for (int64_t t = 0; t < p.T; ++t) {
    const float* gate = p.gate_up + t * 2 * p.F;
    const float* up = gate + p.F;
    float* out = p.out + t * p.F;
    // g / (1 + e^-g): e^-g overflows to inf for very negative g and the quotient is then -0, never NaN.
    for (int64_t f = 0; f < p.F; ++f) out[f] = gate[f] / (1.f + std::exp(-gate[f])) * up[f];
  }
}

void silu_mul(const TensorView& gate_up, const TensorView& out) {
  check_tensor(gate_up, "gate_up", 2, {DType::Float32});
  check_tensor(out, "out", 2, {DType::Float32});
  const int64_t T = gate_up.dim(0), F2 = gate_up.dim(1);
  HELIX_CHECK_ARG(F2 % 2 == 0, "argument 'gate_up' must have an even last dimension (2F), got ",
                  shape_str(gate_up.shape));
  check_dim(out, "out", 0, T, "gate_up.shape[0] (T)");
  check_dim(out, "out", 1, F2 / 2, "gate_up.shape[1] / 2 (F)");
  const auto* a = static_cast<const char*>(gate_up.data);
  const auto* b = static_cast<const char*>(out.data);
  HELIX_CHECK_ARG(out.nbytes() == 0 || a + gate_up.nbytes() <= b || b + out.nbytes() <= a,
                  "argument 'out' must not overlap 'gate_up'");
  SiluMulParams p;
  p.gate_up = gate_up.ptr<const float>();
  p.out = out.ptr<float>();
  p.T = T;
  p.F = F2 / 2;
  silu_mul_cpu(p);
}

}  // namespace helix
