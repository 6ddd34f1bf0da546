// Exact log-sum-exp merge of N partial attention states (see helix/ops/merge_states.hpp).
#include "helix/ops/merge_states.hpp"

#include <cmath>
#include <limits>
#include <utility>

#include "helix/error.hpp"

namespace helix {

namespace {

// Below this many multiply-adds the OpenMP fork/join costs more than the work.
constexpr int64_t kParallelMinWork = 1 << 15;

}  // namespace

void merge_states_cpu(const MergeStatesParams& p) {
  const int64_t N = p.N, M = p.M, D = p.D;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
#pragma omp parallel for schedule(static) if (N * M * D >= kParallelMinWork)
  for (int64_t m = 0; m < M; ++m) {
    float* o = p.o + m * D;  // [D]
    float mx = kNegInf;
    bool nan = false;
    for (int64_t i = 0; i < N; ++i) {
      const float v = p.lse_parts[i * M + m];
      nan = nan || std::isnan(v);
      mx = v > mx ? v : mx;
    }
    // NaN in means NaN out (a comparison-based max would silently drop it).
    const float fill = nan ? std::numeric_limits<float>::quiet_NaN() : 0.0f;
    for (int64_t d = 0; d < D; ++d) o[d] = fill;
    if (nan) {
      p.lse[m] = fill;
      continue;
    }
    if (mx == kNegInf) {  // nothing visible in any part (or N = 0): the empty state
      p.lse[m] = kNegInf;
      continue;
    }
    // w_i = exp(lse_i - max) is in (0, 1] for the max part, 0 for -inf parts: sum >= 1, no 0/0.
    float sum = 0.0f;
    for (int64_t i = 0; i < N; ++i) sum += std::exp(p.lse_parts[i * M + m] - mx);
    const float inv = 1.0f / sum;
    for (int64_t i = 0; i < N; ++i) {
      const float w = std::exp(p.lse_parts[i * M + m] - mx) * inv;
      // A part with weight 0 (lse = -inf, or underflow) is skipped, so its o (possibly garbage for an
      // empty shard) is never read and cannot turn 0 * inf into NaN.
      if (w == 0.0f) continue;
      const float* oi = p.o_parts + (i * M + m) * D;  // [D]
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) o[d] += w * oi[d];
    }
    p.lse[m] = mx + std::log(sum);
  }
}

}  // namespace helix
