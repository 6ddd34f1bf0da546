// SiLU-gated product of a fused gate/up projection (the gate columns come first, as in Hugging Face's
// gate_up_proj):  out[t, f] = silu(gate_up[t, f]) * gate_up[t, F + f],  silu(g) = g / (1 + e^-g); fp32 math.
#pragma once

#include <cstdint>

#include "helix/device.hpp"
#include "helix/dtype.hpp"
#include "helix/tensor.hpp"

namespace helix {

struct SiluMulParams {
  const void* gate_up = nullptr;  // [T, 2F]  dtype
  void* out = nullptr;            // [T, F]   dtype
  int64_t T = 0, F = 0;
  DType dtype = DType::Float32;  // of gate_up and out: Float32 (cpu, cuda) or BFloat16 (cuda)
};

// gate_up [T, 2F]; out [T, F] of gate_up's dtype, not overlapping it.
SiluMulParams check_silu_mul_args(const TensorView& gate_up, const TensorView& out, Device device);

void silu_mul_cpu(const SiluMulParams& p);
namespace cuda {
void launch_silu_mul(const SiluMulParams& p, StreamHandle stream);
}  // namespace cuda

}  // namespace helix
