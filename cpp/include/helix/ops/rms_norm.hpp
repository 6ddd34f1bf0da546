// RMSNorm as DeepSeek-V3 / Hugging Face compute it in float32:
//   y[t, :] = x[t, :] * rsqrt(mean(x[t, :]^2) + eps) * w
// The sum of squares is accumulated in double (cheap, and closer to the float64 reference).
#pragma once

#include <cstdint>

#include "helix/tensor.hpp"

namespace helix {

struct RmsNormParams {
  const float* x = nullptr;  // [T, ldx]  the first D columns of each row are normalized
  const float* w = nullptr;  // [D]
  float* y = nullptr;        // [T, ldy]  may equal x (in place, same stride)
  int64_t T = 0, D = 0;
  int64_t ldx = 0, ldy = 0;  // row strides in elements (>= D)
  float eps = 1e-6f;
};

void rms_norm_cpu(const RmsNormParams& p);

// Validated op: x [T, D] f32; w [D] f32; y [T, D] f32 (may be x itself); eps > 0.
void rms_norm(const TensorView& x, const TensorView& w, float eps, const TensorView& y);

}  // namespace helix
