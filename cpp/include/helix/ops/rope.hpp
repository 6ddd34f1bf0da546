// Rotary position embedding on interleaved pairs (DeepSeek-V3 layout), in place:
//   for pair i in [0, P/2): a = pos[t] * inv_freq[i]
//     (x[2i], x[2i+1]) <- (x[2i] c - x[2i+1] s, x[2i+1] c + x[2i] s),  c = cos(a) m, s = sin(a) m
// on channels [offset, offset + P) of every head, with m = attention_factor (YaRN's cos/sin multiplier).
// Hugging Face de-interleaves the channels after rotating; rotating in place applies the same permutation
// to q and k, so every q.k dot product is unchanged. Positions are global (int64); the angle is formed
// in double so large positions keep their precision.
#pragma once

#include <cstdint>

#include "helix/device.hpp"
#include "helix/dtype.hpp"
#include "helix/tensor.hpp"

namespace helix {

struct RopeParams {
  void* x = nullptr;                // [T, H, stride]  dtype, rotated in place at channels [offset, offset + P)
  const int64_t* pos = nullptr;     // [T]             global positions
  const float* inv_freq = nullptr;  // [P / 2]
  int64_t T = 0, H = 0, stride = 0, offset = 0, P = 0;
  float attention_factor = 1.f;
  DType dtype = DType::Float32;  // of x: Float32 (cpu, cuda) or BFloat16 (cuda)
};

// x [T, S] or [T, H, S] of a dtype the device runs (rotated in place); positions [T] i64; inv_freq [P/2] f32;
// 0 <= offset, offset + P <= S; attention_factor finite.
RopeParams check_rope_args(const TensorView& x, const TensorView& positions, const TensorView& inv_freq, int64_t offset,
                           float attention_factor, Device device);

void rope_cpu(const RopeParams& p);
namespace cuda {
void launch_rope(const RopeParams& p, StreamHandle stream);
}  // namespace cuda

}  // namespace helix
