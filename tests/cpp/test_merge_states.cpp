#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "helix/ops/merge_states.hpp"

using namespace helix;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// The op as the bindings run it: validated, then the CPU kernel.
void merge_states(const TensorView& o_parts, const TensorView& lse_parts, const TensorView& o, const TensorView& lse) {
  merge_states_cpu(check_merge_states_args(o_parts, lse_parts, o, lse, Device::Cpu));
}

struct Merged {
  std::vector<float> o, lse;
};

// Runs the op (with validation) on o_parts [N, T, H, D], lse_parts [N, T, H].
Merged run(const std::vector<float>& o_parts, const std::vector<float>& lse_parts, int64_t N, int64_t T, int64_t H,
           int64_t D) {
  Merged m{std::vector<float>(static_cast<size_t>(T * H * D), 123.f), std::vector<float>(static_cast<size_t>(T * H))};
  merge_states(TensorView{const_cast<float*>(o_parts.data()), DType::Float32, {N, T, H, D}},
               TensorView{const_cast<float*>(lse_parts.data()), DType::Float32, {N, T, H}},
               TensorView{m.o.data(), DType::Float32, {T, H, D}}, TensorView{m.lse.data(), DType::Float32, {T, H}});
  return m;
}

// Naive double-precision merge of one row: the readable twin of the kernel.
void naive_row(const std::vector<float>& o_parts, const std::vector<float>& lse_parts, int64_t N, int64_t M, int64_t D,
               int64_t m, std::vector<double>& o, double& lse) {
  double mx = -INFINITY;
  for (int64_t i = 0; i < N; ++i) mx = std::max(mx, static_cast<double>(lse_parts[i * M + m]));
  o.assign(static_cast<size_t>(D), 0.0);
  if (mx == -INFINITY) {
    lse = -INFINITY;
    return;
  }
  double s = 0;
  for (int64_t i = 0; i < N; ++i) s += std::exp(lse_parts[i * M + m] - mx);
  for (int64_t i = 0; i < N; ++i) {
    const double w = std::exp(lse_parts[i * M + m] - mx) / s;
    if (w == 0) continue;
    for (int64_t d = 0; d < D; ++d) o[d] += w * o_parts[(i * M + m) * D + d];
  }
  lse = mx + std::log(s);
}

void expect_no_nan(const Merged& m) {
  for (float x : m.o) ASSERT_FALSE(std::isnan(x));
  for (float x : m.lse) ASSERT_FALSE(std::isnan(x));
}

}  // namespace

TEST(MergeStates, MatchesNaiveDoubleMerge) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (auto [N, T, H, D] : {std::array<int64_t, 4>{1, 1, 1, 1}, {2, 3, 5, 7}, {8, 2, 3, 33}, {5, 1, 128, 512}}) {
    const int64_t M = T * H;
    std::vector<float> o(static_cast<size_t>(N * M * D)), lse(static_cast<size_t>(N * M));
    for (float& x : o) x = normal(rng);
    for (float& x : lse) x = 4.f * normal(rng);
    Merged got = run(o, lse, N, T, H, D);
    for (int64_t m = 0; m < M; ++m) {
      std::vector<double> ro;
      double rl;
      naive_row(o, lse, N, M, D, m, ro, rl);
      EXPECT_NEAR(got.lse[m], rl, 1e-5 * (1 + std::abs(rl)));
      for (int64_t d = 0; d < D; ++d) EXPECT_NEAR(got.o[m * D + d], ro[d], 1e-5) << "N=" << N << " m=" << m;
    }
  }
}

TEST(MergeStates, AllNegInfGivesZeroAndNegInf) {
  const int64_t N = 3, T = 2, H = 2, D = 4;
  // o of empty parts may hold anything (even NaN): it must not be read.
  std::vector<float> o(N * T * H * D, std::numeric_limits<float>::quiet_NaN());
  std::vector<float> lse(N * T * H, -kInf);
  Merged m = run(o, lse, N, T, H, D);
  for (float x : m.o) EXPECT_EQ(x, 0.f);
  for (float x : m.lse) EXPECT_EQ(x, -kInf);
}

TEST(MergeStates, OnePartIsTheIdentity) {
  const int64_t T = 3, H = 5, D = 9;
  std::vector<float> o(T * H * D), lse(T * H);
  for (size_t i = 0; i < o.size(); ++i) o[i] = std::sin(static_cast<float>(i)) * 3.f;
  for (size_t i = 0; i < lse.size(); ++i) lse[i] = static_cast<float>(i) * 7.5f - 40.f;
  lse[4] = -kInf;  // an empty row stays (0, -inf)
  for (int64_t d = 0; d < D; ++d) o[4 * D + d] = 0.f;
  Merged m = run(o, lse, 1, T, H, D);
  EXPECT_EQ(m.o, o);  // bit-exact: weight 1, scale 1
  EXPECT_EQ(m.lse, lse);
}

TEST(MergeStates, ZeroPartsGiveTheEmptyState) {
  const int64_t T = 2, H = 3, D = 4;
  Merged m = run({}, {}, 0, T, H, D);
  for (float x : m.o) EXPECT_EQ(x, 0.f);
  for (float x : m.lse) EXPECT_EQ(x, -kInf);
}

TEST(MergeStates, MixtureOfEmptyAndFiniteParts) {
  // Row 0: parts 0 and 2 empty -> equals part 1. Row 1: part 1 empty -> merge of parts 0 and 2.
  const int64_t N = 3, T = 1, H = 2, D = 3;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> o = {nan,  nan, nan, 1,   2,   3,    // part 0
                          4,    5,   6,   nan, nan, nan,  // part 1
                          kInf, 0,   0,   7,   8,   9};   // part 2 (row 0 garbage)
  std::vector<float> lse = {-kInf, 0.5f, 2.f, -kInf, -kInf, 0.5f};
  Merged m = run(o, lse, N, T, H, D);
  expect_no_nan(m);
  EXPECT_EQ(m.lse[0], 2.f);
  EXPECT_EQ(m.o[0], 4.f);
  EXPECT_EQ(m.o[2], 6.f);
  EXPECT_NEAR(m.lse[1], std::log(2.0) + 0.5, 1e-6);
  EXPECT_NEAR(m.o[3], 4.f, 1e-6);
  EXPECT_NEAR(m.o[5], 6.f, 1e-6);
}

TEST(MergeStates, HugeLseDifferencesNeverOverflow) {
  const int64_t N = 4, T = 1, H = 3, D = 2;
  std::vector<float> o = {1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4};
  // Row 0: 1e30 dominates. Row 1: all about -1e30 (finite). Row 2: 88 vs -88 (exp(176) overflows fp32).
  std::vector<float> lse = {1e30f, -1e30f, 88.f, -1e30f, -1e30f, -88.f, 0.f, -1e30f, 88.f, -kInf, -1e30f, -88.f};
  Merged m = run(o, lse, N, T, H, D);
  expect_no_nan(m);
  EXPECT_EQ(m.lse[0], 1e30f);
  EXPECT_EQ(m.o[0], 1.f);
  EXPECT_NEAR(m.lse[1], -1e30f, 1e24f);
  EXPECT_NEAR(m.o[2], 2.5f, 1e-5f);  // all four parts at -1e30, equal weights: (1 + 2 + 3 + 4) / 4
  for (float x : m.o) EXPECT_TRUE(std::isfinite(x));
  for (float x : m.lse) EXPECT_TRUE(std::isfinite(x));
  EXPECT_NEAR(m.lse[2], 88.f + std::log(2.f), 1e-5);
  EXPECT_NEAR(m.o[4], 2.f, 1e-5);  // parts 0 and 2 equal at 88: (1 + 3) / 2
}

TEST(MergeStates, NanLsePropagates) {
  std::vector<float> o = {1, 2};
  std::vector<float> lse = {-kInf, std::numeric_limits<float>::quiet_NaN()};
  Merged m = run(o, lse, 2, 1, 1, 1);
  EXPECT_TRUE(std::isnan(m.lse[0]));
  EXPECT_TRUE(std::isnan(m.o[0]));
}

TEST(MergeStates, ValidatesArgumentsAndNamesThem) {
  std::vector<float> buf(64, 0.f), out(64, 0.f), out2(64, 0.f);
  auto v = [](std::vector<float>& b, std::vector<int64_t> shape, DType dt = DType::Float32) {
    return TensorView{b.data(), dt, std::move(shape)};
  };
  auto msg = [&](const TensorView& op, const TensorView& lp, const TensorView& o, const TensorView& l) {
    try {
      merge_states(op, lp, o, l);
    } catch (const ArgumentError& e) {
      return std::string(e.what());
    }
    return std::string("<no ArgumentError>");
  };
  std::vector<float> lbuf(16, 0.f);
  auto good_op = v(buf, {2, 2, 2, 4}), good_lp = v(lbuf, {2, 2, 2}), good_o = v(out, {2, 2, 4}),
       good_l = v(out2, {2, 2});
  EXPECT_NO_THROW(merge_states(good_op, good_lp, good_o, good_l));
  EXPECT_NE(msg(v(buf, {8}), good_lp, good_o, good_l).find("'o_parts'"), std::string::npos);
  EXPECT_NE(msg(v(buf, {2, 2, 2, 4}, DType::BFloat16), good_lp, good_o, good_l).find("'o_parts'"), std::string::npos);
  EXPECT_NE(msg(good_op, v(lbuf, {2, 2, 3}), good_o, good_l).find("'lse_parts'"), std::string::npos);
  EXPECT_NE(msg(good_op, v(lbuf, {1, 2, 2}), good_o, good_l).find("'lse_parts'"), std::string::npos);
  EXPECT_NE(msg(good_op, v(lbuf, {2, 4}), good_o, good_l).find("'lse_parts'"), std::string::npos);
  EXPECT_NE(msg(good_op, good_lp, v(out, {2, 2, 3}), good_l).find("'o'"), std::string::npos);
  EXPECT_NE(msg(good_op, good_lp, good_o, v(out2, {2, 3})).find("'lse'"), std::string::npos);
  EXPECT_NE(msg(good_op, good_lp, v(buf, {2, 2, 4}), good_l).find("overlap"), std::string::npos);
  EXPECT_NE(msg(good_op, good_lp, good_o, v(out, {2, 2})).find("overlap"), std::string::npos);
}
