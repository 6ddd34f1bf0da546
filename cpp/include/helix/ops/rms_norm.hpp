// RMSNorm as DeepSeek-V3 / Hugging Face compute it in float32:
//   y[t, :D] = x[t, :D] * rsqrt(mean(x[t, :D]^2) + eps) * w
// CPU: float32; the sum of squares is accumulated in double (cheap, closer to the float64 reference).
// CUDA: float32 or bfloat16 storage, float32 math.
#pragma once

#include <cstdint>

#include "helix/device.hpp"
#include "helix/dtype.hpp"
#include "helix/tensor.hpp"

namespace helix {

struct RmsNormParams {
  const void* x = nullptr;  // [T, ldx]  dtype: the first D columns of each row are normalized
  const void* w = nullptr;  // [D]       dtype
  void* y = nullptr;        // [T, ldy]  dtype; may equal x (in place, same stride)
  int64_t T = 0, D = 0;
  int64_t ldx = 0, ldy = 0;  // row strides in elements (>= D)
  float eps = 1e-6f;
  DType dtype = DType::Float32;  // of x, w and y: Float32 (cpu, cuda) or BFloat16 (cuda)
};

// x [T, D]; weight [D]; y [T, D] (x itself or not overlapping it), all of one dtype the device runs;
// eps > 0 and finite. Returns the dense Params (ArgumentError naming the bad argument otherwise).
RmsNormParams check_rms_norm_args(const TensorView& x, const TensorView& weight, float eps, const TensorView& y,
                                  Device device);

void rms_norm_cpu(const RmsNormParams& p);
namespace cuda {
void launch_rms_norm(const RmsNormParams& p, StreamHandle stream);
}  // namespace cuda

}  // namespace helix
