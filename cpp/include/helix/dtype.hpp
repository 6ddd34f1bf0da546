// Element types the runtime stores, and bfloat16 <-> float32 conversion.
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

namespace helix {

enum class DType : uint8_t { Float32, BFloat16, Float16, Int64, Int32, UInt8 };

constexpr int64_t dtype_size(DType t) {
  switch (t) {
    case DType::Float32:
      return 4;
    case DType::BFloat16:
      return 2;
    case DType::Float16:
      return 2;
    case DType::Int64:
      return 8;
    case DType::Int32:
      return 4;
    case DType::UInt8:
      return 1;
  }
  return 0;
}

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::Float32:
      return "float32";
    case DType::BFloat16:
      return "bfloat16";
    case DType::Float16:
      return "float16";
    case DType::Int64:
      return "int64";
    case DType::Int32:
      return "int32";
    case DType::UInt8:
      return "uint8";
  }
  return "?";
}

// bfloat16 storage: the upper 16 bits of an IEEE float32.
using bf16_t = uint16_t;

inline float bf16_to_float(bf16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even, as ml_dtypes and PyTorch do; NaN stays NaN.
inline bf16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<bf16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<bf16_t>(bits >> 16);
}

}  // namespace helix
