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
        float* v = static_cast<float*>(p.x) + (t * p.H + h) * p.stride + p.offset;  // [P]
        for (int64_t i = 0; i < half; ++i) {
          const float x0 = v[2 * i], x1 = v[2 * i + 1], c = cs[i], s = cs[half + i];
          v[2 * i] = x0 * c - x1 * s;
          v[2 * i + 1] = x1 * c + x0 * s;
        }
      }
    }
  }
}

}  // namespace helix
