// Per-head linear maps of absorbed MLA (FACTS.md §3):
//   absorb:  q_abs[t,h,:R] = W_UK[h] q_nope[t,h]   with W_UK^T stored as [H, R, Dn]
//   project: v[t,h,:]      = W_UV[h] o[t,h,:]      with W_UV   stored as [H, Dv, R]
// i.e. y[t, h*y_head_stride + n] = sum_k w[h, n, k] * x[t, h*x_head_stride + k] for h < H.
//   cpu:  one linear_cpu per head (x float32, w float32 or bfloat16).
//   cuda: one strided batched cuBLAS GEMM (x and w of one dtype, float32 or bfloat16; fp32 compute).
#pragma once

#include <cstdint>

#include "helix/device.hpp"
#include "helix/dtype.hpp"
#include "helix/tensor.hpp"

namespace helix {

struct HeadLinearParams {
  const void* x = nullptr;  // [T, ldx] x_dtype: head h's input is the K values at x + t*ldx + h*x_head_stride
  const void* w = nullptr;  // [H, N, K] w_dtype
  float* y = nullptr;       // [T, ldy]: head h's output is the N values at y + t*ldy + h*y_head_stride
  int64_t T = 0, H = 0, N = 0, K = 0;
  int64_t ldx = 0, x_head_stride = 0, ldy = 0, y_head_stride = 0;
  DType w_dtype = DType::Float32;
  DType x_dtype = DType::Float32;
};

// x [T, H, K]; w [H, N, K]; out [T, H, N] f32, not overlapping x or w; dtypes as the device runs them.
HeadLinearParams check_head_linear_args(const TensorView& x, const TensorView& w, const TensorView& out, Device device);

void head_linear_cpu(const HeadLinearParams& p);
namespace cuda {
void launch_head_linear(const HeadLinearParams& p, StreamHandle stream);
}  // namespace cuda

}  // namespace helix
