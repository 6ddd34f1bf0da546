// GoogleTests of the decoder-layer CPU ops against naive double-precision loops.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "helix/ops/embedding.hpp"
#include "helix/ops/linear.hpp"
#include "helix/ops/moe_experts.hpp"
#include "helix/ops/moe_route.hpp"
#include "helix/ops/rms_norm.hpp"
#include "helix/ops/rope.hpp"
#include "helix/ops/silu_mul.hpp"

using namespace helix;

namespace {

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

std::vector<bf16_t> to_bf16(const std::vector<float>& v) {
  std::vector<bf16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = float_to_bf16(v[i]);
  return out;
}

// y[t, n] = sum_k x[t, k] w[n, k] in double.
std::vector<double> naive_linear(const std::vector<float>& x, const std::vector<float>& w, int64_t T, int64_t N,
                                 int64_t K) {
  std::vector<double> y(T * N, 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) y[t * N + n] += double(x[t * K + k]) * w[n * K + k];
  return y;
}

void expect_throws_naming(const std::function<void()>& f, const std::string& name) {
  try {
    f();
    ADD_FAILURE() << "no ArgumentError for " << name;
  } catch (const ArgumentError& e) {
    EXPECT_NE(std::string(e.what()).find("'" + name + "'"), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(Linear, EverySimdPathAndDtypeMatchesNaive) {
  const char* isas[] = {"amx_bf16", "amx", "avx512_bf16", "avx512_bf16_split", "avx512", "avx2", "portable"};
  // Ragged in every tile dimension; T = 40 with K = 8192 spans two token blocks (and two 32-token panels).
  const int64_t shapes[][3] = {{1, 37, 100}, {3, 21, 17}, {6, 16, 64}, {9, 5, 3}, {40, 6, 8192}, {70, 19, 1}};
  for (const char* isa : isas) {
    for (const auto& s : shapes) {
      const int64_t T = s[0], N = s[1], K = s[2];
      auto x = randn(T * K, 1);
      auto wf = randn(N * K, 2, 1.f / std::sqrt(float(K)));
      auto wb = to_bf16(wf);
      std::vector<float> wb_f(wb.size());
      for (size_t i = 0; i < wb.size(); ++i) wb_f[i] = bf16_to_float(wb[i]);
      // The one-product paths round x to bf16 (nearest even) for bf16 weights: then only fp32 accumulation differs.
      const bool rounded = std::string(isa) == "amx_bf16" || std::string(isa) == "avx512_bf16";
      std::vector<float> x_rounded(x.size());
      for (size_t i = 0; i < x.size(); ++i) x_rounded[i] = bf16_to_float(float_to_bf16(x[i]));
      for (DType dt : {DType::Float32, DType::BFloat16}) {
        const bool bf16 = dt == DType::BFloat16;
        const auto expected = naive_linear(rounded && bf16 ? x_rounded : x, bf16 ? wb_f : wf, T, N, K);
        std::vector<float> y(T * N, 1.f);
        LinearParams p{x.data(), dt == DType::Float32 ? static_cast<const void*>(wf.data()) : wb.data(),
                       y.data(), T,
                       N,        K,
                       K,        N,
                       dt,       /*accumulate=*/true};
        try {
          linear_cpu_isa(p, isa);
        } catch (const ArgumentError&) {
          continue;  // this CPU lacks the path
        }
        // AMX and AVX512_BF16 (bf16 weights): x as bf16 hi + lo, see tests/tolerances.py "linear.split".
        const bool split = std::string(isa) == "amx" || std::string(isa) == "avx512_bf16_split";
        const double atol = split && dt == DType::BFloat16 ? 4e-5 : 2e-5;
        for (int64_t i = 0; i < T * N; ++i) {
          ASSERT_NEAR(y[i], 1.0 + expected[i], atol + 1e-5 * std::abs(expected[i])) << isa << " i=" << i;
        }
      }
    }
  }
}

TEST(Linear, AmxMatchesAvx512AndAutoFollowsTheThreshold) {
  const auto paths = linear_isas();
  if (std::find(paths.begin(), paths.end(), "amx") == paths.end()) GTEST_SKIP() << "no usable AMX-BF16";
  const int64_t N = 45, K = 100;  // N % 16 != 0, K % 32 != 0
  for (int64_t T : {2, 5, 8, 33, 512}) {
    auto x = randn(T * K, 10);
    auto w = to_bf16(randn(N * K, 11, 1.f / std::sqrt(float(K))));
    std::vector<float> amx(T * N, 0.f), avx(T * N, 0.f), autop(T * N, 0.f);
    LinearParams p{x.data(), w.data(), amx.data(), T, N, K, K, N, DType::BFloat16, false};
    linear_cpu_isa(p, "amx");
    p.y = avx.data();
    linear_cpu_isa(p, "avx512");
    p.y = autop.data();
    linear_cpu(p);
    for (int64_t i = 0; i < T * N; ++i) ASSERT_NEAR(amx[i], avx[i], 4e-5 + 1e-5 * std::abs(avx[i])) << T;
    EXPECT_EQ(autop, T >= kLinearAmxMinTokens ? amx : avx) << "T=" << T;
  }
}

TEST(Linear, Bf16SplitMatchesAvx512AndAutoFollowsTheThreshold) {
  const auto paths = linear_isas();
  if (std::find(paths.begin(), paths.end(), "avx512_bf16_split") == paths.end()) {
    GTEST_SKIP() << "no AVX512_BF16 on this CPU";
  }
  const bool amx = std::find(paths.begin(), paths.end(), "amx") != paths.end();
  const int64_t N = 45, K = 101, ldx = 110, ldy = 50;  // N % 8 != 0, K odd, strided rows
  for (int64_t T : {2, 15, 16, 33, 100}) {
    auto x = randn(T * ldx, 12);
    auto w = to_bf16(randn(N * K, 13, 1.f / std::sqrt(float(K))));
    std::vector<float> split(T * ldy, 0.5f), avx(T * ldy, 0.5f), autop(T * ldy, 0.5f);
    LinearParams p{x.data(), w.data(), split.data(), T, N, K, ldx, ldy, DType::BFloat16, true};
    linear_cpu_isa(p, "avx512_bf16_split");
    p.y = avx.data();
    linear_cpu_isa(p, "avx512");
    p.y = autop.data();
    linear_cpu(p);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t n = 0; n < ldy; ++n) {
        const size_t i = static_cast<size_t>(t * ldy + n);
        if (n >= N) {
          ASSERT_EQ(split[i], 0.5f) << "column " << n << " outside [0, N) was written";
          continue;
        }
        ASSERT_NEAR(split[i], avx[i], 4e-5 + 1e-5 * std::abs(avx[i])) << T;
      }
    }
    if (!amx) EXPECT_EQ(autop, T >= kLinearBf16SplitMinTokens ? split : avx) << "T=" << T;
  }
}

TEST(Linear, StridedRowsAndValidation) {
  const int64_t T = 2, N = 3, K = 5, ldx = 8, ldy = 7;
  auto x = randn(T * ldx, 3);
  auto w = randn(N * K, 4);
  std::vector<float> y(T * ldy, -7.f);
  linear_cpu(LinearParams{x.data(), w.data(), y.data(), T, N, K, ldx, ldy, DType::Float32, false});
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) s += double(x[t * ldx + k]) * w[n * K + k];
      EXPECT_NEAR(y[t * ldy + n], s, 1e-5);
    }
    for (int64_t n = N; n < ldy; ++n) EXPECT_EQ(y[t * ldy + n], -7.f);  // outside the written columns
  }
  std::vector<float> xs(T * K), ws(N * K), ys(T * N);
  TensorView xv{xs.data(), DType::Float32, {T, K}}, wv{ws.data(), DType::Float32, {N, K}};
  TensorView yv{ys.data(), DType::Float32, {T, N}};
  const auto check = [](const TensorView& x, const TensorView& w, const TensorView& y, Device d = Device::Cpu) {
    return check_linear_args(x, w, y, false, d);
  };
  expect_throws_naming([&] { check(xv, TensorView{ws.data(), DType::Float32, {N, K - 1}}, yv); }, "w");
  expect_throws_naming([&] { check(xv, wv, TensorView{ys.data(), DType::Float32, {T, N - 1}}); }, "out");
  expect_throws_naming([&] { check(TensorView{xs.data(), DType::Int64, {T, K}}, wv, yv); }, "x");
  expect_throws_naming([&] { linear_cpu_isa(check(xv, wv, yv), "mmx"); }, "isa");
  // Each device names the dtypes it runs: bf16 x is a CUDA-only input, bf16 w with f32 x a CPU-only pair.
  std::vector<bf16_t> xb(T * K);
  TensorView xbv{xb.data(), DType::BFloat16, {T, K}};
  expect_throws_naming([&] { check(xbv, wv, yv); }, "x");
  expect_throws_naming([&] { check(xbv, wv, yv, Device::Cuda); }, "w");
  EXPECT_EQ(check(xv, wv, yv, Device::Cuda).x_dtype, DType::Float32);
}

TEST(RmsNorm, MatchesNaiveInPlace) {
  const int64_t T = 3, D = 700;
  auto x = randn(T * D, 5, 2.f);
  auto w = randn(D, 6);
  const auto x0 = x;
  rms_norm_cpu(check_rms_norm_args(TensorView{x.data(), DType::Float32, {T, D}},
                                   TensorView{w.data(), DType::Float32, {D}}, 1e-6f,
                                   TensorView{x.data(), DType::Float32, {T, D}}, Device::Cpu));
  for (int64_t t = 0; t < T; ++t) {
    double ss = 0;
    for (int64_t d = 0; d < D; ++d) ss += double(x0[t * D + d]) * x0[t * D + d];
    const double r = 1.0 / std::sqrt(ss / D + 1e-6);
    for (int64_t d = 0; d < D; ++d) EXPECT_NEAR(x[t * D + d], x0[t * D + d] * r * w[d], 1e-5);
  }
  expect_throws_naming(
      [&] {
        check_rms_norm_args(TensorView{x.data(), DType::Float32, {T, D}}, TensorView{w.data(), DType::Float32, {D - 1}},
                            1e-6f, TensorView{x.data(), DType::Float32, {T, D}}, Device::Cpu);
      },
      "weight");
}

TEST(Rope, RotatesInterleavedPairsAtGlobalPositions) {
  const int64_t T = 2, H = 2, S = 10, offset = 4, P = 6;
  auto x = randn(T * H * S, 7);
  const auto x0 = x;
  const std::vector<float> inv_freq = {1.f, 0.1f, 0.001f};
  const std::vector<int64_t> pos = {3, 1'000'000'007};
  rope_cpu(RopeParams{x.data(), pos.data(), inv_freq.data(), T, H, S, offset, P, 0.8f});
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t h = 0; h < H; ++h) {
      const float* a = x0.data() + (t * H + h) * S;
      const float* b = x.data() + (t * H + h) * S;
      for (int64_t c = 0; c < offset; ++c) EXPECT_EQ(b[c], a[c]);
      for (int64_t i = 0; i < P / 2; ++i) {
        const double ang = double(pos[t]) * inv_freq[i], c = std::cos(ang) * 0.8, s = std::sin(ang) * 0.8;
        const float* u = a + offset + 2 * i;
        EXPECT_NEAR(b[offset + 2 * i], u[0] * c - u[1] * s, 1e-5);
        EXPECT_NEAR(b[offset + 2 * i + 1], u[1] * c + u[0] * s, 1e-5);
      }
    }
  }
  std::vector<int64_t> p2(T);
  std::vector<float> f3(3);
  expect_throws_naming(
      [&] {
        check_rope_args(TensorView{x.data(), DType::Float32, {T, H, S}}, TensorView{p2.data(), DType::Int64, {T}},
                        TensorView{f3.data(), DType::Float32, {3}}, 5, 1.f, Device::Cpu);
      },
      "offset");
}

TEST(SiluMul, NoNanAtTheExtremes) {
  std::vector<float> gu = {-1e30f, -50.f, 0.f, 3.f, 2.f, 2.f, 2.f, 0.5f};
  std::vector<float> out(4);
  silu_mul_cpu(SiluMulParams{gu.data(), out.data(), 1, 4});
  EXPECT_EQ(out[0], 0.f);
  EXPECT_NEAR(out[1], -50.0 / (1 + std::exp(50.0)) * 2, 1e-25);
  EXPECT_EQ(out[2], 0.f);
  EXPECT_NEAR(out[3], 3.0 / (1 + std::exp(-3.0)) * 0.5, 1e-6);
}

TEST(MoeRoute, GroupLimitedTopKWithBiasForSelectionOnly) {
  // 2 groups of 4; group 0's top-2 sum beats group 1 although expert 7 is the best single one.
  const std::vector<float> logits = {0.f, 1.f, 0.9f, -5.f, -5.f, -5.f, -5.f, 3.f};
  const std::vector<float> bias = {0.5f, 0, 0, 0, 0, 0, 0, 0};
  std::vector<int32_t> idx(2);
  std::vector<float> weight(2);
  moe_route_cpu(MoeRouteParams{logits.data(), bias.data(), idx.data(), weight.data(), 1, 8, 2, 2, 1, true, 2.5f});
  EXPECT_EQ(idx[0], 0);
  EXPECT_EQ(idx[1], 1);
  const double s0 = 0.5, s1 = 1 / (1 + std::exp(-1.0));
  EXPECT_NEAR(weight[0], 2.5 * s0 / (s0 + s1), 1e-6);
  EXPECT_NEAR(weight[1], 2.5 * s1 / (s0 + s1), 1e-6);
  TensorView l{const_cast<float*>(logits.data()), DType::Float32, {1, 8}};
  TensorView b{const_cast<float*>(bias.data()), DType::Float32, {8}};
  TensorView iv{idx.data(), DType::Int32, {1, 2}}, wv{weight.data(), DType::Float32, {1, 2}};
  expect_throws_naming([&] { check_moe_route_args(l, b, 2, 3, 1, true, 1.f, iv, wv, Device::Cpu); }, "n_group");
  expect_throws_naming([&] { check_moe_route_args(l, b, 5, 2, 1, true, 1.f, iv, wv, Device::Cpu); }, "top_k");
}

TEST(MoeExperts, SumOfLocalExpertsMatchesNaive) {
  const int64_t T = 4, K = 2, hidden = 20, F = 6, n_local = 3, first = 2;
  auto h = randn(T * hidden, 8);
  auto gate_up = randn(n_local * 2 * F * hidden, 9, 0.3f);
  auto down = to_bf16(randn(n_local * hidden * F, 10, 0.3f));
  const std::vector<int32_t> idx = {2, 4, 0, 1, 3, 7, 4, 2};
  const std::vector<float> weight = {0.5f, 1.5f, 1.f, 1.f, 2.f, 1.f, 0.25f, 0.75f};
  std::vector<float> out(T * hidden, 1.f);
  moe_experts_cpu(MoeExpertsParams{h.data(), idx.data(), weight.data(), gate_up.data(), down.data(), out.data(), T, K,
                                   hidden, F, first, n_local, DType::Float32, DType::BFloat16});
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> expect(hidden, 1.0);
    for (int64_t k = 0; k < K; ++k) {
      const int64_t e = idx[t * K + k] - first;
      if (e < 0 || e >= n_local) continue;
      std::vector<double> act(F);
      for (int64_t f = 0; f < F; ++f) {
        double g = 0, u = 0;
        for (int64_t d = 0; d < hidden; ++d) {
          g += double(h[t * hidden + d]) * gate_up[(e * 2 * F + f) * hidden + d];
          u += double(h[t * hidden + d]) * gate_up[(e * 2 * F + F + f) * hidden + d];
        }
        act[f] = g / (1 + std::exp(-g)) * u;
      }
      for (int64_t d = 0; d < hidden; ++d) {
        double y = 0;
        for (int64_t f = 0; f < F; ++f) y += bf16_to_float(down[(e * hidden + d) * F + f]) * act[f];
        expect[d] += weight[t * K + k] * y;
      }
    }
    for (int64_t d = 0; d < hidden; ++d) EXPECT_NEAR(out[t * hidden + d], expect[d], 1e-5) << t << "," << d;
  }
}

TEST(Embedding, ShardRowsAndZerosElsewhere) {
  const int64_t V = 3, hidden = 4, start = 10;
  auto table = randn(V * hidden, 11);
  const std::vector<int64_t> ids = {9, 10, 12, 13, -1};
  std::vector<float> out(ids.size() * hidden, 5.f);
  embedding_cpu(
      EmbeddingParams{ids.data(), table.data(), out.data(), int64_t(ids.size()), V, hidden, start, DType::Float32});
  for (size_t t = 0; t < ids.size(); ++t) {
    const int64_t row = ids[t] - start;
    for (int64_t d = 0; d < hidden; ++d) {
      EXPECT_EQ(out[t * hidden + d], (row >= 0 && row < V) ? table[row * hidden + d] : 0.f);
    }
  }
  expect_throws_naming(
      [&] {
        check_embedding_args(TensorView{const_cast<int64_t*>(ids.data()), DType::Int64, {5}},
                             TensorView{table.data(), DType::Float32, {V, hidden}}, -1,
                             TensorView{out.data(), DType::Float32, {5, hidden}}, Device::Cpu);
      },
      "vocab_start");
}
