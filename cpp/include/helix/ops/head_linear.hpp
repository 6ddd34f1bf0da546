// Per-head linear maps of absorbed MLA (FACTS.md §3), one linear_cpu per head:
//   absorb:  q_abs[t,h,:R] = W_UK[h] q_nope[t,h]   with W_UK^T stored as [H, R, Dn]
//   project: v[t,h,:]      = W_UV[h] o[t,h,:]      with W_UV   stored as [H, Dv, R]
#pragma once

#include <cstdint>

#include "helix/dtype.hpp"

namespace helix {

struct HeadLinearParams {
  const float* x = nullptr;  // [T, ldx]: head h's input is the K values at x + t*ldx + h*x_head_stride
  const void* w = nullptr;   // [H, N, K]  w_dtype
  float* y = nullptr;        // [T, ldy]: head h's output is the N values at y + t*ldy + h*y_head_stride
  int64_t T = 0, H = 0, N = 0, K = 0;
  int64_t ldx = 0, x_head_stride = 0, ldy = 0, y_head_stride = 0;
  DType w_dtype = DType::Float32;
};

void head_linear_cpu(const HeadLinearParams& p);

}  // namespace helix
