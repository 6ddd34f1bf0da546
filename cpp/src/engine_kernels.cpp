#include "helix/engine_kernels.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

namespace helix {

namespace {

inline float load(const void* p, DType t, int64_t i) {
  return t == DType::Float32 ? static_cast<const float*>(p)[i] : bf16_to_float(static_cast<const bf16_t*>(p)[i]);
}

template <class Wt>
float dot(const Wt* w, const float* x, int64_t K) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t k = 0; k < K; ++k) {
    if constexpr (std::is_same_v<Wt, float>) {
      acc += w[k] * x[k];
    } else {
      acc += bf16_to_float(w[k]) * x[k];
    }
  }
  return acc;
}

template <class Wt>
void linear_impl(const float* x, int64_t T, int64_t K, const Wt* w, int64_t N, float* y, bool accumulate) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const Wt* row = w + n * K;
    for (int64_t t = 0; t < T; ++t) {
      const float v = dot(row, x + t * K, K);
      y[t * N + n] = accumulate ? y[t * N + n] + v : v;
    }
  }
}

}  // namespace

void linear(const float* x, int64_t T, int64_t K, WeightRef w, int64_t N, float* y, bool accumulate) {
  if (w.dtype == DType::Float32) {
    linear_impl(x, T, K, static_cast<const float*>(w.data), N, y, accumulate);
  } else {
    linear_impl(x, T, K, static_cast<const bf16_t*>(w.data), N, y, accumulate);
  }
}

void rms_norm(const float* x, const float* weight, float* y, int64_t T, int64_t D, float eps) {
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * D;
    float ss = 0.f;
    for (int64_t i = 0; i < D; ++i) ss += xr[i] * xr[i];
    const float inv = 1.f / std::sqrt(ss / static_cast<float>(D) + eps);
    for (int64_t i = 0; i < D; ++i) y[t * D + i] = weight[i] * (xr[i] * inv);
  }
}

void rope_interleaved(float* x, int64_t T, int64_t H, int64_t stride, int64_t offset, int64_t P, const int64_t* pos,
                      const float* inv_freq, float attention_factor) {
  std::vector<float> cs(static_cast<size_t>(P));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < P / 2; ++i) {
      const float ang = static_cast<float>(pos[t]) * inv_freq[i];
      cs[2 * i] = std::cos(ang) * attention_factor;
      cs[2 * i + 1] = std::sin(ang) * attention_factor;
    }
    for (int64_t h = 0; h < H; ++h) {
      float* v = x + (t * H + h) * stride + offset;
      for (int64_t i = 0; i < P / 2; ++i) {
        const float a = v[2 * i], b = v[2 * i + 1], c = cs[2 * i], s = cs[2 * i + 1];
        v[2 * i] = a * c - b * s;
        v[2 * i + 1] = b * c + a * s;
      }
    }
  }
}

void absorb_queries(const float* q, WeightRef w_uk, int64_t T, int64_t H, int64_t Dn, int64_t P, int64_t R,
                    float* q_abs) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t h = 0; h < H; ++h) {
      const float* qn = q + (t * H + h) * (Dn + P);
      float* out = q_abs + (t * H + h) * (R + P);
      std::fill(out, out + R, 0.f);
      for (int64_t n = 0; n < Dn; ++n) {
        const float a = qn[n];
        const int64_t base = (h * Dn + n) * R;
        if (w_uk.dtype == DType::Float32) {
          const float* w = static_cast<const float*>(w_uk.data) + base;
#pragma omp simd
          for (int64_t r = 0; r < R; ++r) out[r] += a * w[r];
        } else {
          const bf16_t* w = static_cast<const bf16_t*>(w_uk.data) + base;
#pragma omp simd
          for (int64_t r = 0; r < R; ++r) out[r] += a * bf16_to_float(w[r]);
        }
      }
      std::memcpy(out + R, qn + Dn, static_cast<size_t>(P) * 4);
    }
  }
}

void project_heads(const float* o, WeightRef w_uv, int64_t T, int64_t H, int64_t R, int64_t Dv, float* v) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t h = 0; h < H; ++h) {
      const float* x = o + (t * H + h) * R;
      for (int64_t j = 0; j < Dv; ++j) {
        const int64_t base = (h * Dv + j) * R;
        v[(t * H + h) * Dv + j] = w_uv.dtype == DType::Float32
                                      ? dot(static_cast<const float*>(w_uv.data) + base, x, R)
                                      : dot(static_cast<const bf16_t*>(w_uv.data) + base, x, R);
      }
    }
  }
}

void silu_mul(const float* gate_up, int64_t T, int64_t F, float* out) {
  for (int64_t t = 0; t < T; ++t) {
    const float* g = gate_up + t * 2 * F;
    for (int64_t i = 0; i < F; ++i) out[t * F + i] = g[i] / (1.f + std::exp(-g[i])) * g[F + i];
  }
}

void moe_route(const float* logits, const float* bias, int64_t T, int64_t E, int64_t K, int64_t n_group,
               int64_t topk_group, bool norm_topk_prob, float scaling, int64_t* idx, float* weight) {
  const int64_t per_group = E / n_group;
  std::vector<float> s(static_cast<size_t>(E)), choice(static_cast<size_t>(E)), group(static_cast<size_t>(n_group));
  std::vector<int64_t> order(static_cast<size_t>(std::max(E, n_group)));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t e = 0; e < E; ++e) {
      s[e] = 1.f / (1.f + std::exp(-logits[t * E + e]));
      choice[e] = s[e] + bias[e];
    }
    for (int64_t g = 0; g < n_group; ++g) {
      float a = -INFINITY, b = -INFINITY;  // top two of the group
      for (int64_t e = g * per_group; e < (g + 1) * per_group; ++e) {
        if (choice[e] > a) {
          b = a;
          a = choice[e];
        } else if (choice[e] > b) {
          b = choice[e];
        }
      }
      group[g] = per_group > 1 ? a + b : a;
    }
    std::iota(order.begin(), order.begin() + n_group, 0);
    std::partial_sort(order.begin(), order.begin() + topk_group, order.begin() + n_group,
                      [&](int64_t a, int64_t b) { return group[a] > group[b]; });
    std::vector<bool> keep(static_cast<size_t>(n_group), false);
    for (int64_t i = 0; i < topk_group; ++i) keep[order[i]] = true;
    // Experts of dropped groups score 0 (as DeepSeek's reference masks them), not -inf.
    for (int64_t e = 0; e < E; ++e) {
      if (!keep[e / per_group]) choice[e] = 0.f;
    }
    std::iota(order.begin(), order.begin() + E, 0);
    std::partial_sort(order.begin(), order.begin() + K, order.begin() + E,
                      [&](int64_t a, int64_t b) { return choice[a] > choice[b]; });
    float sum = 0.f;
    for (int64_t k = 0; k < K; ++k) sum += s[order[k]];
    for (int64_t k = 0; k < K; ++k) {
      idx[t * K + k] = order[k];
      const float w = norm_topk_prob ? s[order[k]] / (sum + 1e-20f) : s[order[k]];
      weight[t * K + k] = w * scaling;
    }
  }
}

void moe_experts(const float* x, int64_t T, int64_t hidden, const int64_t* idx, const float* weight, int64_t K,
                 int64_t first, int64_t n_local, int64_t F, WeightRef gate_up, WeightRef down, float* out) {
  const int64_t es = dtype_size(gate_up.dtype);
  std::vector<float> xs, gu, act, y;
  for (int64_t e = 0; e < n_local; ++e) {
    std::vector<int64_t> rows;
    std::vector<float> ws;
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t k = 0; k < K; ++k) {
        if (idx[t * K + k] == first + e) {
          rows.push_back(t);
          ws.push_back(weight[t * K + k]);
        }
      }
    }
    if (rows.empty()) continue;
    const int64_t n = static_cast<int64_t>(rows.size());
    xs.resize(static_cast<size_t>(n * hidden));
    for (int64_t i = 0; i < n; ++i) std::memcpy(&xs[i * hidden], x + rows[i] * hidden, static_cast<size_t>(hidden) * 4);
    gu.resize(static_cast<size_t>(n * 2 * F));
    act.resize(static_cast<size_t>(n * F));
    y.resize(static_cast<size_t>(n * hidden));
    const auto* gup = static_cast<const unsigned char*>(gate_up.data) + e * 2 * F * hidden * es;
    const auto* dp = static_cast<const unsigned char*>(down.data) + e * hidden * F * dtype_size(down.dtype);
    linear(xs.data(), n, hidden, {gup, gate_up.dtype}, 2 * F, gu.data(), false);
    silu_mul(gu.data(), n, F, act.data());
    linear(act.data(), n, F, {dp, down.dtype}, hidden, y.data(), false);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < hidden; ++j) out[rows[i] * hidden + j] += ws[i] * y[i * hidden + j];
    }
  }
}

void embedding_lookup(const int64_t* ids, int64_t T, WeightRef table, int64_t vocab_start, int64_t shard,
                      int64_t hidden, float* out) {
  for (int64_t t = 0; t < T; ++t) {
    const int64_t r = ids[t] - vocab_start;
    if (r < 0 || r >= shard) continue;
    for (int64_t j = 0; j < hidden; ++j) out[t * hidden + j] = load(table.data, table.dtype, r * hidden + j);
  }
}

}  // namespace helix
