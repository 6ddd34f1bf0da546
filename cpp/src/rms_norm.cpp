#include "helix/ops/rms_norm.hpp"

#include <cmath>

namespace helix {

void rms_norm_cpu(const RmsNormParams& p) {
#pragma omp parallel for schedule(static) if (p.T * p.D >= (1 << 16))
  for (int64_t t = 0; t < p.T; ++t) {
    const float* x = p.x + t * p.ldx;
    float* y = p.y + t * p.ldy;
    double ss = 0.0;
    for (int64_t d = 0; d < p.D; ++d) ss += static_cast<double>(x[d]) * x[d];
    const float r = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(p.D) + p.eps));
    for (int64_t d = 0; d < p.D; ++d) y[d] = x[d] * r * p.w[d];
  }
}

void rms_norm(const TensorView& x, const TensorView& w, float eps, const TensorView& y) {
  check_tensor(x, "x", 2, {DType::Float32});
  check_tensor(w, "w", 1, {DType::Float32});
  check_tensor(y, "y", 2, {DType::Float32});
  const int64_t T = x.dim(0), D = x.dim(1);
  check_dim(w, "w", 0, D, "x.shape[1] (D)");
  check_dim(y, "y", 0, T, "x.shape[0] (T)");
  check_dim(y, "y", 1, D, "x.shape[1] (D)");
  HELIX_CHECK_ARG(eps > 0.f && std::isfinite(eps), "argument 'eps' must be a positive finite number, got ", eps);
  const auto* x0 = static_cast<const char*>(x.data);
  const auto* y0 = static_cast<const char*>(y.data);
  HELIX_CHECK_ARG(x0 == y0 || x.nbytes() == 0 || x0 + x.nbytes() <= y0 || y0 + y.nbytes() <= x0,
                  "argument 'y' must be 'x' itself or not overlap it");
  RmsNormParams p;
  p.x = x.ptr<const float>();
  p.w = w.ptr<const float>();
  p.y = y.ptr<float>();
  p.T = T;
  p.D = D;
  p.ldx = D;
  p.ldy = D;
  p.eps = eps;
  rms_norm_cpu(p);
}

}  // namespace helix
