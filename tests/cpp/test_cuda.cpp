// The CUDA backend's host API from C++: RAII buffers and a kernel round trip where a GPU exists; without
// one (or without CUDA) every device call throws helix::Error and nothing crashes.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "helix/cuda.hpp"
#include "helix/error.hpp"
#include "helix/ops/merge_states.hpp"

namespace {

using helix::cuda::DeviceBuffer;

TEST(CudaBackend, FlagsAreConsistent) {
  EXPECT_GE(helix::cuda::device_count(), 0);
  if (!helix::cuda::built_with_cuda()) {
    EXPECT_FALSE(helix::cuda::built_with_nccl());
    EXPECT_EQ(helix::cuda::device_count(), 0);
  }
}

TEST(CudaBackend, DeviceCallsThrowWithoutGpu) {
  if (helix::cuda::device_count() > 0) GTEST_SKIP() << "a GPU is visible";
  EXPECT_THROW(DeviceBuffer(64), helix::Error);
  EXPECT_THROW(helix::cuda::Stream(), helix::Error);
  EXPECT_THROW(helix::cuda::require_device(), helix::Error);
  DeviceBuffer empty;  // size 0 owns nothing and needs no device
  EXPECT_EQ(empty.bytes(), 0u);
}

TEST(CudaBackend, MergeStatesRoundTrip) {
  if (helix::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA GPU";
  // Two parts, two rows of D = 4: row 0 mixes both parts; row 1 has part 0 empty (lse = -inf).
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> o_parts = {1, 2, 3, 4, 0, 0, 0, 0, /* part 1 */ 5, 6, 7, 8, 9, 10, 11, 12};
  std::vector<float> lse_parts = {0.f, -inf, std::log(3.f), 1.f};
  DeviceBuffer d_o_parts(o_parts.size() * 4), d_lse_parts(lse_parts.size() * 4), d_o(8 * 4), d_lse(2 * 4);
  d_o_parts.copy_from_host(o_parts.data(), o_parts.size() * 4);
  d_lse_parts.copy_from_host(lse_parts.data(), lse_parts.size() * 4);
  helix::MergeStatesParams p;
  p.o_parts = d_o_parts.as<float>();
  p.lse_parts = d_lse_parts.as<float>();
  p.o = d_o.as<float>();
  p.lse = d_lse.as<float>();
  p.N = 2;
  p.M = 2;
  p.D = 4;
  helix::cuda::Stream stream;
  helix::cuda::launch_merge_states(p, stream.handle());
  stream.synchronize();
  std::vector<float> o(8), lse(2);
  d_o.copy_to_host(o.data(), 32);
  d_lse.copy_to_host(lse.data(), 8);
  // Row 0: weights 1 and 3 -> o = (o0 + 3 o1) / 4, lse = log 4.
  for (int d = 0; d < 4; ++d) EXPECT_NEAR(o[d], (o_parts[d] + 3 * o_parts[8 + d]) / 4, 1e-5);
  EXPECT_NEAR(lse[0], std::log(4.f), 1e-5);
  for (int d = 0; d < 4; ++d) EXPECT_NEAR(o[4 + d], o_parts[12 + d], 1e-5);
  EXPECT_NEAR(lse[1], 1.f, 1e-6);
}

}  // namespace
