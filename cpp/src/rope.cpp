#include "helix/ops/rope.hpp"

#include <cmath>
#include <vector>

namespace helix {

void rope_cpu(const RopeParams& p) {
  const int64_t half = p.P / 2;
#pragma omp parallel if (p.T * p.H * p.P >= (1 << 16))
  {
    std::vector<float> cs(static_cast<size_t>(2 * half));  // [cos | sin] of this token's angles, times m
#pragma omp for schedule(static)
    for (int64_t t = 0; t < p.T; ++t) {
      const double pos = static_cast<double>(p.pos[t]);
      for (int64_t i = 0; i < half; ++i) {
        const double a = pos * static_cast<double>(p.inv_freq[i]);
        cs[i] = static_cast<float>(std::cos(a)) * p.attention_factor;
        cs[half + i] = static_cast<float>(std::sin(a)) * p.attention_factor;
      }
      for (int64_t h = 0; h < p.H; ++h) {
        float* v = p.x + (t * p.H + h) * p.stride + p.offset;
        for (int64_t i = 0; i < half; ++i) {
          const float x0 = v[2 * i], x1 = v[2 * i + 1], c = cs[i], s = cs[half + i];
          v[2 * i] = x0 * c - x1 * s;
          v[2 * i + 1] = x1 * c + x0 * s;
        }
      }
    }
  }
}

void rope(const TensorView& x, const TensorView& pos, const TensorView& inv_freq, int64_t offset,
          float attention_factor) {
  HELIX_CHECK_ARG(x.ndim() == 2 || x.ndim() == 3, "argument 'x' must have shape [T, S] or [T, H, S], got ",
                  shape_str(x.shape));
  check_tensor(x, "x", x.ndim(), {DType::Float32});
  check_tensor(pos, "pos", 1, {DType::Int64});
  check_tensor(inv_freq, "inv_freq", 1, {DType::Float32});
  const int64_t T = x.dim(0), H = x.ndim() == 3 ? x.dim(1) : 1, S = x.dim(-1);
  const int64_t P = 2 * inv_freq.dim(0);
  check_dim(pos, "pos", 0, T, "x.shape[0] (T)");
  HELIX_CHECK_ARG(offset >= 0 && offset + P <= S, "argument 'offset' (", offset, ") must satisfy 0 <= offset and ",
                  "offset + rope_dim (", P, ") <= x.shape[-1] (", S, ")");
  HELIX_CHECK_ARG(std::isfinite(attention_factor), "argument 'attention_factor' must be finite");
  RopeParams p;
  p.x = x.ptr<float>();
  p.pos = pos.ptr<const int64_t>();
  p.inv_freq = inv_freq.ptr<const float>();
  p.T = T;
  p.H = H;
  p.stride = S;
  p.offset = offset;
  p.P = P;
  p.attention_factor = attention_factor;
  rope_cpu(p);
}

}  // namespace helix
