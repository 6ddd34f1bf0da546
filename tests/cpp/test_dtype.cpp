#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "helix/dtype.hpp"
#include "helix/tensor.hpp"

using namespace helix;

TEST(DType, BFloat16RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to the even mantissa (1.0).
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  // 1 + 3*2^-8 is halfway too; the even neighbour is 1 + 2^-6.
  EXPECT_EQ(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_EQ(bf16_to_float(float_to_bf16(-2.5f)), -2.5f);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isinf(bf16_to_float(float_to_bf16(-std::numeric_limits<float>::infinity()))));
}

TEST(TensorView, CheckTensorNamesTheArgument) {
  float x[6] = {};
  TensorView t{x, DType::Float32, {2, 3}};
  EXPECT_NO_THROW(check_tensor(t, "x", 2, {DType::Float32}));
  try {
    check_tensor(t, "weights", 3, {DType::Float32});
    FAIL();
  } catch (const ArgumentError& e) {
    EXPECT_NE(std::string(e.what()).find("'weights'"), std::string::npos);
  }
  EXPECT_THROW(check_tensor(t, "x", 2, {DType::BFloat16}), ArgumentError);
  EXPECT_THROW(check_dim(t, "x", 1, 4, "head_dim"), ArgumentError);
}
