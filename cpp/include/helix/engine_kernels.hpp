// The kernels the decoder engine calls, in the raw-pointer form it uses (all activations float32,
// row-major). Linear weights may be float32 or bfloat16.
#pragma once

#include <cstdint>

#include "helix/dtype.hpp"

namespace helix {

struct WeightRef {
  const void* data;  // row-major weight of the stated shape
  DType dtype;       // Float32 or BFloat16
};

// y[T, N] (+)= x[T, K] @ w[N, K]^T
void linear(const float* x, int64_t T, int64_t K, WeightRef w, int64_t N, float* y, bool accumulate);
// y[T, D] = x * rsqrt(mean(x^2) + eps) * weight[D]; y may alias x.
void rms_norm(const float* x, const float* weight, float* y, int64_t T, int64_t D, float eps);
// In place on x[T, H, stride] channels [offset, offset + P): interleaved pairs (2i, 2i+1) rotated by
// pos[t] * inv_freq[i], cos and sin scaled by attention_factor.
void rope_interleaved(float* x, int64_t T, int64_t H, int64_t stride, int64_t offset, int64_t P, const int64_t* pos,
                      const float* inv_freq, float attention_factor);
// q[T, H, Dn + P] -> q_abs[T, H, R + P] = [q_nope @ w_uk[h] (w_uk: [H, Dn, R]) | q_pe].
void absorb_queries(const float* q, WeightRef w_uk, int64_t T, int64_t H, int64_t Dn, int64_t P, int64_t R,
                    float* q_abs);
// v[T, H, Dv] = w_uv[h] @ o[T, H, R] per head (w_uv: [H, Dv, R]).
void project_heads(const float* o, WeightRef w_uv, int64_t T, int64_t H, int64_t R, int64_t Dv, float* v);
// out[T, F] = silu(gate_up[T, :F]) * gate_up[T, F:2F].
void silu_mul(const float* gate_up, int64_t T, int64_t F, float* out);
// DeepSeek-V3 noaux_tc routing of router logits [T, E] with correction bias [E] -> idx [T, K], weight [T, K].
void moe_route(const float* logits, const float* bias, int64_t T, int64_t E, int64_t K, int64_t n_group,
               int64_t topk_group, bool norm_topk_prob, float scaling, int64_t* idx, float* weight);
// out[T, hidden] += sum over k with idx[t,k] in [first, first + n_local) of
//   weight[t,k] * down[e] @ silu_mul(gate_up[e] @ x[t]);  gate_up: [n_local, 2F, hidden], down: [n_local, hidden, F].
void moe_experts(const float* x, int64_t T, int64_t hidden, const int64_t* idx, const float* weight, int64_t K,
                 int64_t first, int64_t n_local, int64_t F, WeightRef gate_up, WeightRef down, float* out);
// out[T, hidden] = table[id - vocab_start] for ids in [vocab_start, vocab_start + shard), else unchanged.
void embedding_lookup(const int64_t* ids, int64_t T, WeightRef table, int64_t vocab_start, int64_t shard,
                      int64_t hidden, float* out);

}  // namespace helix
