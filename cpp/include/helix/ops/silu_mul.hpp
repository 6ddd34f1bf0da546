// SiLU-gated product of a fused gate/up projection (the gate rows come first in the fused weight, as in
// Hugging Face's gate_up_proj):  out[t, f] = silu(gate_up[t, f]) * gate_up[t, F + f],  silu(g) = g / (1 + e^-g).
#pragma once

#include <cstdint>

#include "helix/tensor.hpp"

namespace helix {

struct SiluMulParams {
  const float* gate_up = nullptr;  // [T, 2F]
  float* out = nullptr;            // [T, F]
  int64_t T = 0, F = 0;
};

void silu_mul_cpu(const SiluMulParams& p);

// Validated op: gate_up [T, 2F] f32; out [T, F] f32.
void silu_mul(const TensorView& gate_up, const TensorView& out);

}  // namespace helix
