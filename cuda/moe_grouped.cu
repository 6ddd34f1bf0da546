#include <cuda_runtime.h>

#include <algorithm>

#include "common.cuh"
#include "engine_kernels.cuh"
#include "moe_grouped.cuh"

namespace helix::cuda {

void MoeGrouped::route_to_host(const MoeExpertsParams& p, StreamHandle stream) {
  ids_.resize(static_cast<size_t>(p.T * p.top_k));
  weights_.resize(ids_.size());
  HELIX_CUDA_CHECK(cudaMemcpyAsync(ids_.data(), p.topk_idx, ids_.size() * 4, cudaMemcpyDeviceToHost, stream));
  HELIX_CUDA_CHECK(
      cudaMemcpyAsync(weights_.data(), p.topk_weight, weights_.size() * 4, cudaMemcpyDeviceToHost, stream));
  HELIX_CUDA_CHECK(cudaStreamSynchronize(stream));
}

void MoeGrouped::run(const MoeExpertsParams& p, Backend& b, StreamHandle stream) {
  // Bucket (token, weight) by local expert, in token order.
  std::vector<std::vector<int32_t>> tok(static_cast<size_t>(p.n_local));
  std::vector<std::vector<float>> wt(static_cast<size_t>(p.n_local));
  for (int64_t t = 0; t < p.T; ++t) {
    for (int64_t k = 0; k < p.top_k; ++k) {
      const int64_t e = ids_[static_cast<size_t>(t * p.top_k + k)] - p.local_first;
      if (e < 0 || e >= p.n_local) continue;
      tok[e].push_back(static_cast<int32_t>(t));
      wt[e].push_back(weights_[static_cast<size_t>(t * p.top_k + k)]);
    }
  }
  upload_.clear();
  std::vector<size_t> tok_off(static_cast<size_t>(p.n_local)), w_off(static_cast<size_t>(p.n_local));
  int64_t most = 0;
  for (int64_t e = 0; e < p.n_local; ++e) {
    tok_off[e] = upload_.add(tok[e].data(), static_cast<int64_t>(tok[e].size()));
    w_off[e] = upload_.add(wt[e].data(), static_cast<int64_t>(wt[e].size()));
    most = std::max<int64_t>(most, static_cast<int64_t>(tok[e].size()));
  }
  unsigned char* base = upload_.send(lists_, stream);
  float* x = x_.as<float>(most * p.hidden);        // [n, hidden] the expert's tokens
  float* gu = gate_up_.as<float>(most * 2 * p.F);  // [n, 2F]
  float* act = act_.as<float>(most * p.F);         // [n, F]
  float* y = y_.as<float>(most * p.hidden);        // [n, hidden]
  const int64_t gu_bytes = 2 * p.F * p.hidden * dtype_size(p.gate_up_dtype);
  const int64_t down_bytes = p.hidden * p.F * dtype_size(p.down_dtype);
  for (int64_t e = 0; e < p.n_local; ++e) {
    const auto n = static_cast<int64_t>(tok[e].size());
    if (n == 0) continue;
    const auto* d_tok = reinterpret_cast<const int32_t*>(base + tok_off[e]);
    const auto* d_w = reinterpret_cast<const float*>(base + w_off[e]);
    launch_gather_rows(p.h, d_tok, x, n, p.hidden, p.hidden, stream);
    b.linear(LinearParams{x, static_cast<const unsigned char*>(p.gate_up) + e * gu_bytes, gu, n, 2 * p.F, p.hidden,
                          p.hidden, 2 * p.F, p.gate_up_dtype, false, DType::Float32, DType::Float32});
    b.silu_mul(SiluMulParams{gu, act, n, p.F, DType::Float32});
    b.linear(LinearParams{act, static_cast<const unsigned char*>(p.down) + e * down_bytes, y, n, p.hidden, p.F, p.F,
                          p.hidden, p.down_dtype, false, DType::Float32, DType::Float32});
    launch_scatter_add_weighted(p.out, y, d_tok, d_w, n, p.hidden, stream);
  }
}

int64_t MoeGrouped::bytes() const {
  return static_cast<int64_t>(lists_.bytes() + x_.bytes() + gate_up_.bytes() + act_.bytes() + y_.bytes());
}

}  // namespace helix::cuda
