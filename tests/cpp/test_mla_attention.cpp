// The MLA attention kernel against a naive double loop, path agreement, empty shards, validation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "helix/ops/attention.hpp"

using namespace helix;

namespace {

struct Case {
  int64_t T, H, D, R, S;
};

// Naive float64 reference: o [T,H,R], lse [T,H].
void naive(const std::vector<float>& q, const std::vector<float>& kv, const std::vector<int64_t>& q_pos,
           const std::vector<int64_t>& kv_pos, const Case& c, double scale, std::vector<double>& o,
           std::vector<double>& lse) {
  o.assign(c.T * c.H * c.R, 0.0);
  lse.assign(c.T * c.H, -std::numeric_limits<double>::infinity());
  for (int64_t t = 0; t < c.T; ++t) {
    for (int64_t h = 0; h < c.H; ++h) {
      std::vector<double> s(c.S, -std::numeric_limits<double>::infinity());
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t k = 0; k < c.S; ++k) {
        if (kv_pos[k] > q_pos[t]) continue;
        double dot = 0;
        for (int64_t d = 0; d < c.D; ++d) dot += double(q[(t * c.H + h) * c.D + d]) * kv[k * c.D + d];
        s[k] = scale * dot;
        mx = std::max(mx, s[k]);
      }
      if (std::isinf(mx)) continue;
      double sum = 0;
      for (int64_t k = 0; k < c.S; ++k) {
        if (std::isinf(s[k])) continue;
        const double w = std::exp(s[k] - mx);
        sum += w;
        for (int64_t r = 0; r < c.R; ++r) o[(t * c.H + h) * c.R + r] += w * kv[k * c.D + r];
      }
      for (int64_t r = 0; r < c.R; ++r) o[(t * c.H + h) * c.R + r] /= sum;
      lse[t * c.H + h] = mx + std::log(sum);
    }
  }
}

struct KernelOutput {
  std::vector<float> o, lse;
};

KernelOutput run_kernel(const std::vector<float>& q, const void* kv, DType kv_dtype, const std::vector<int64_t>& q_pos,
                        const std::vector<int64_t>& kv_pos, const Case& c, float scale) {
  KernelOutput out{std::vector<float>(c.T * c.H * c.R, 7.f), std::vector<float>(c.T * c.H, 7.f)};
  MlaAttentionParams p;
  p.q = q.data();
  p.q_pos = q_pos.data();
  p.o = out.o.data();
  p.lse = out.lse.data();
  p.T = c.T;
  p.H = c.H;
  p.D = c.D;
  p.R = c.R;
  p.scale = scale;
  mla_attention_cpu(p, kv, kv_pos.data(), c.S, kv_dtype);
  return out;
}

struct Inputs {
  std::vector<float> q, kv;
  std::vector<bf16_t> kv_bf16;
  std::vector<int64_t> q_pos, kv_pos;
};

Inputs make_inputs(const Case& c, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal;
  Inputs in;
  for (int64_t i = 0; i < c.T * c.H * c.D; ++i) in.q.push_back(normal(gen));
  for (int64_t i = 0; i < c.S * c.D; ++i) {
    in.kv_bf16.push_back(float_to_bf16(normal(gen)));
    in.kv.push_back(bf16_to_float(in.kv_bf16.back()));  // the same values in both dtypes
  }
  for (int64_t s = 0; s < c.S; ++s) in.kv_pos.push_back((s * 7919) % std::max<int64_t>(c.S, 1));  // shuffled
  for (int64_t t = 0; t < c.T; ++t) in.q_pos.push_back(c.S - c.T + t);                            // causal chunk
  return in;
}

class MlaAttention : public ::testing::TestWithParam<Case> {
 protected:
  void TearDown() override { set_mla_kernel_path(MlaKernelPath::Auto); }
};

// Every path this CPU (and OS) runs, Auto included.
std::vector<MlaKernelPath> available_paths() {
  std::vector<MlaKernelPath> paths;
  for (MlaKernelPath p : kMlaKernelPaths) {
    if (mla_kernel_path_unavailable(p).empty()) paths.push_back(p);
  }
  return paths;
}

}  // namespace

TEST_P(MlaAttention, EveryPathMatchesNaiveLoop) {
  const Case c = GetParam();
  const Inputs in = make_inputs(c, 17);
  const float scale = 1.f / std::sqrt(float(c.D));
  std::vector<double> o_ref, lse_ref;
  naive(in.q, in.kv, in.q_pos, in.kv_pos, c, scale, o_ref, lse_ref);
  for (MlaKernelPath path : available_paths()) {
    set_mla_kernel_path(path);
    for (DType kv_dtype : {DType::Float32, DType::BFloat16}) {
      const void* kv = kv_dtype == DType::Float32 ? static_cast<const void*>(in.kv.data()) : in.kv_bf16.data();
      const KernelOutput r = run_kernel(in.q, kv, kv_dtype, in.q_pos, in.kv_pos, c, scale);
      // The bf16-rounded paths round q and the weights to bf16 (the split paths keep hi + lo parts).
      const bool bf16_products = path == MlaKernelPath::Avx512Bf16 || path == MlaKernelPath::Amx;
      const double tol = bf16_products && kv_dtype == DType::BFloat16 ? 2e-2 : 5e-5;
      SCOPED_TRACE(std::string(mla_kernel_path_name(path)) + " " + std::string(dtype_name(kv_dtype)));
      for (size_t i = 0; i < o_ref.size(); ++i) ASSERT_NEAR(r.o[i], o_ref[i], tol * (1 + std::abs(o_ref[i])));
      for (size_t i = 0; i < lse_ref.size(); ++i) {
        if (std::isinf(lse_ref[i])) {
          ASSERT_TRUE(std::isinf(r.lse[i]) && r.lse[i] < 0);
        } else {
          ASSERT_NEAR(r.lse[i], lse_ref[i], tol * (1 + std::abs(lse_ref[i])));
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, MlaAttention,
                         ::testing::Values(Case{1, 128, 576, 512, 150}, Case{1, 5, 37, 21, 130},
                                           Case{3, 17, 33, 33, 65}, Case{4, 3, 8, 1, 64}, Case{2, 130, 20, 7, 9},
                                           Case{2, 1, 1, 1, 3}));

TEST(MlaAttentionPaths, FastPathAgreesWithPortable) {
  const Case c{2, 40, 96, 80, 500};
  const Inputs in = make_inputs(c, 5);
  set_mla_kernel_path(MlaKernelPath::Portable);
  const KernelOutput ref = run_kernel(in.q, in.kv.data(), DType::Float32, in.q_pos, in.kv_pos, c, 0.1f);
  set_mla_kernel_path(MlaKernelPath::Auto);
  const KernelOutput fast = run_kernel(in.q, in.kv.data(), DType::Float32, in.q_pos, in.kv_pos, c, 0.1f);
  for (size_t i = 0; i < ref.o.size(); ++i) ASSERT_NEAR(fast.o[i], ref.o[i], 5e-5);
  for (size_t i = 0; i < ref.lse.size(); ++i) ASSERT_NEAR(fast.lse[i], ref.lse[i], 5e-5);
  EXPECT_NE(mla_kernel_path(), MlaKernelPath::Auto);
}

// Values at a column offset (the expanded form's rows [keys | values]) give the same bits as the same values
// as the first R columns of rows [D]: rows [kv | kv[:, :R]] with value_col = D, float32 keys on every float32
// path, bfloat16 keys on every path (the widened-f32 ones too, which widen the value columns with the keys).
TEST(MlaAttentionPaths, ValuesAtAColumnOffsetEqualTheLeadingColumns) {
  const Case c{3, 2, 40, 24, 150};
  const Inputs in = make_inputs(c, 11);
  const int64_t ld = c.D + c.R;
  std::vector<float> rows(static_cast<size_t>(c.S * ld));
  std::vector<bf16_t> rows_bf16(rows.size());
  for (int64_t s = 0; s < c.S; ++s) {
    std::copy_n(&in.kv[s * c.D], c.D, &rows[s * ld]);
    std::copy_n(&in.kv[s * c.D], c.R, &rows[s * ld + c.D]);
    std::copy_n(&in.kv_bf16[s * c.D], c.D, &rows_bf16[s * ld]);
    std::copy_n(&in.kv_bf16[s * c.D], c.R, &rows_bf16[s * ld + c.D]);
  }
  for (const MlaKernelPath path : available_paths()) {
    set_mla_kernel_path(path);
    for (const DType kv_dtype : {DType::Float32, DType::BFloat16}) {
      const bool f32 = kv_dtype == DType::Float32;
      const void* kv = f32 ? static_cast<const void*>(in.kv.data()) : in.kv_bf16.data();
      const void* wide_rows = f32 ? static_cast<const void*>(rows.data()) : rows_bf16.data();
      const KernelOutput want = run_kernel(in.q, kv, kv_dtype, in.q_pos, in.kv_pos, c, 0.2f);
      KernelOutput got{std::vector<float>(want.o.size(), 7.f), std::vector<float>(want.lse.size(), 7.f)};
      const MlaAttentionParams p{in.q.data(), in.q_pos.data(), got.o.data(), got.lse.data(), c.T, c.H, c.D, c.R,
                                 0.2f,        DType::Float32};
      mla_attention_cpu(p, wide_rows, ld, c.D, in.kv_pos.data(), c.S, kv_dtype);
      SCOPED_TRACE(std::string(mla_kernel_path_name(path)) + " " + std::string(dtype_name(kv_dtype)));
      EXPECT_EQ(got.o, want.o);
      EXPECT_EQ(got.lse, want.lse);
      EXPECT_THROW(mla_attention_cpu(p, wide_rows, ld - 1, c.D, in.kv_pos.data(), c.S, kv_dtype), Error);
    }
  }
  set_mla_kernel_path(MlaKernelPath::Auto);
}

// Auto: AmxSplit where AMX is available, else Avx512, else Portable; never a bf16-rounded path.
TEST(MlaAttentionPaths, AutoIsFloat32Grade) {
  MlaKernelPath expected = MlaKernelPath::Portable;
  for (MlaKernelPath p : {MlaKernelPath::Avx512, MlaKernelPath::AmxSplit}) {
    if (mla_kernel_path_unavailable(p).empty()) expected = p;
  }
  EXPECT_EQ(mla_kernel_path(), expected);
}

TEST(MlaAttentionPaths, ForcingAMissingPathNamesWhatIsMissing) {
  for (MlaKernelPath path : kMlaKernelPaths) {
    const std::string why(mla_kernel_path_unavailable(path));
    if (why.empty()) continue;
    try {
      set_mla_kernel_path(path);
      ADD_FAILURE() << "forcing " << mla_kernel_path_name(path) << " did not throw";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
    }
  }
  set_mla_kernel_path(MlaKernelPath::Auto);
}

TEST(MlaAttentionPaths, AmxAgreesWithAvx512OnBf16Keys) {
  const std::string_view why = mla_kernel_path_unavailable(MlaKernelPath::Amx);
  if (!why.empty()) GTEST_SKIP() << why;
  for (const Case& c : {Case{1, 128, 576, 512, 700}, Case{3, 20, 100, 90, 333}, Case{1, 7, 32, 16, 16}}) {
    const Inputs in = make_inputs(c, 9);
    const float scale = 1.f / std::sqrt(float(c.D));
    auto run = [&](MlaKernelPath path, const void* kv, DType dtype) {
      set_mla_kernel_path(path);
      KernelOutput r = run_kernel(in.q, kv, dtype, in.q_pos, in.kv_pos, c, scale);
      set_mla_kernel_path(MlaKernelPath::Auto);
      return r;
    };
    const KernelOutput ref = run(MlaKernelPath::Avx512, in.kv_bf16.data(), DType::BFloat16);
    const KernelOutput amx = run(MlaKernelPath::Amx, in.kv_bf16.data(), DType::BFloat16);
    const KernelOutput split = run(MlaKernelPath::AmxSplit, in.kv_bf16.data(), DType::BFloat16);
    // float32 keys on the AMX paths run the exact float32 kernels.
    const KernelOutput f32 = run(MlaKernelPath::Amx, in.kv.data(), DType::Float32);
    for (size_t i = 0; i < ref.o.size(); ++i) {
      ASSERT_NEAR(amx.o[i], ref.o[i], 1e-2 * (1 + std::abs(ref.o[i])));
      ASSERT_NEAR(split.o[i], ref.o[i], 5e-5 * (1 + std::abs(ref.o[i])));
      ASSERT_NEAR(f32.o[i], ref.o[i], 5e-5 * (1 + std::abs(ref.o[i])));
    }
    for (size_t i = 0; i < ref.lse.size(); ++i) {
      ASSERT_NEAR(amx.lse[i], ref.lse[i], 1e-2 * (1 + std::abs(ref.lse[i])));
      ASSERT_NEAR(split.lse[i], ref.lse[i], 5e-5 * (1 + std::abs(ref.lse[i])));
    }
  }
}

TEST(MlaAttentionPaths, EmptyShardGivesZeroAndMinusInfinity) {
  const Case c{2, 3, 16, 8, 0};
  const Inputs in = make_inputs(c, 1);
  for (MlaKernelPath path : available_paths()) {
    set_mla_kernel_path(path);
    const KernelOutput r = run_kernel(in.q, nullptr, DType::Float32, in.q_pos, in.kv_pos, c, 0.5f);
    for (float v : r.o) EXPECT_EQ(v, 0.f);
    for (float v : r.lse) EXPECT_TRUE(std::isinf(v) && v < 0);
  }
  set_mla_kernel_path(MlaKernelPath::Auto);
}

TEST(MlaAttentionOp, ValidatesArguments) {
  std::vector<float> q(2 * 3 * 8), kv(5 * 8);
  std::vector<int64_t> q_pos{4, 5}, kv_pos{0, 1, 2, 3, 4};
  TensorView tq{q.data(), DType::Float32, {2, 3, 8}}, tkv{kv.data(), DType::Float32, {5, 8}};
  TensorView tqp{q_pos.data(), DType::Int64, {2}}, tkp{kv_pos.data(), DType::Int64, {5}};
  const auto check = [](const TensorView& q, const TensorView& kv, const TensorView& qp, const TensorView& kp,
                        float scale, int64_t R,
                        Device d = Device::Cpu) { return check_mla_attention_args(q, kv, qp, kp, scale, R, d); };
  EXPECT_EQ(check(tq, tkv, tqp, tkp, 0.5f, 6).S, 5);
  auto expect_names = [](auto&& fn, const char* name) {
    try {
      fn();
      ADD_FAILURE() << "no error for " << name;
    } catch (const ArgumentError& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("'") + name + "'"), std::string::npos) << e.what();
    }
  };
  TensorView bad_kv{kv.data(), DType::Float32, {4, 10}};
  expect_names([&] { check(tq, bad_kv, tqp, tkp, 0.5f, 6); }, "kv");
  TensorView bad_qp{q_pos.data(), DType::Int32, {2}};
  expect_names([&] { check(tq, tkv, bad_qp, tkp, 0.5f, 6); }, "q_pos");
  expect_names([&] { check(tq, tkv, tqp, tkp, 0.f, 6); }, "scale");
  expect_names([&] { check(tq, tkv, tqp, tkp, 0.5f, 9); }, "kv_lora_rank");
  // bf16 keys with f32 queries: the CPU runs the pair, the CUDA kernels read one dtype.
  std::vector<bf16_t> kvb(5 * 8);
  TensorView tkvb{kvb.data(), DType::BFloat16, {5, 8}};
  EXPECT_NO_THROW(check(tq, tkvb, tqp, tkp, 0.5f, 6));
  expect_names([&] { check(tq, tkvb, tqp, tkp, 0.5f, 6, Device::Cuda); }, "kv");
}
