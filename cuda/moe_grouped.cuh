// The routed experts of a chunk longer than launch_moe_experts takes (T > kMoeExpertsMaxTokens, prefill) in
// the CUDA backend: the routing comes to the host, the tokens are grouped by local expert (in token order,
// as moe_experts_cpu), and each expert that got tokens runs gate_up -> silu_mul -> down on its gathered
// rows through the backend's cuBLAS linear, its output added back with the routing weights. Internal to cuda/.
#pragma once

#include <cstdint>
#include <vector>

#include "helix/backend.hpp"
#include "step_resources.cuh"

namespace helix::cuda {

class MoeGrouped {
 public:
  // Copies p's routing (topk_idx, topk_weight) to the host and waits for `stream`.
  void route_to_host(const MoeExpertsParams& p, StreamHandle stream);
  // p.out += the local experts of p, with the routing route_to_host brought back; ops through `b`.
  void run(const MoeExpertsParams& p, Backend& b, StreamHandle stream);
  int64_t bytes() const;

 private:
  std::vector<int32_t> ids_;    // [T, top_k]
  std::vector<float> weights_;  // [T, top_k]
  Upload upload_;               // the token lists; read by the copy until the stream's next synchronize
  Scratch lists_, x_, gate_up_, act_, y_;
};

}  // namespace helix::cuda
