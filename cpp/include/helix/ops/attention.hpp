// Partial MLA attention over a set of latent keys (one CP rank's shard), absorbed form.
//
//   score[t,h,s] = scale * dot(q[t,h,:], kv[s,:])          over D = kv_lora_rank + rope_dim
//   visible iff kv_pos[s] <= q_pos[t]
//   o[t,h,:]     = sum_s softmax_s(score) * kv[s, :kv_lora_rank]    (the latent is also the value)
//   lse[t,h]     = log(sum_s exp(score))                     natural log; -inf and o = 0 when nothing is visible
//
// Accumulation is float32; q and kv may be float32 or bfloat16.
#pragma once

#include <cstdint>
#include <vector>

#include "helix/dtype.hpp"
#include "helix/kv_cache.hpp"
#include "helix/tensor.hpp"

namespace helix {

// Keys of one query group: a contiguous [S, D] array, or a paged sequence.
struct MlaAttentionParams {
  const void* q;          // [T, H, D]  q_dtype
  const int64_t* q_pos;   // [T]
  float* o;               // [T, H, R]  output, normalized
  float* lse;             // [T, H]     output
  int64_t T = 0, H = 0, D = 0, R = 0;
  float scale = 1.f;
  DType q_dtype = DType::Float32;
};

// Kernel entry points (no validation; shapes as documented).
// kv: [S, D] kv_dtype, kv_pos: [S].
void mla_attention_cpu(const MlaAttentionParams& p, const void* kv, const int64_t* kv_pos, int64_t S, DType kv_dtype);
// Keys of sequence `seq` read from `cache` through its block table.
void paged_mla_attention_cpu(const MlaAttentionParams& p, const PagedKVCache& cache, const SequenceView& seq);

// Validated ops (the boundary): throw ArgumentError naming the bad argument.
// q [T,H,D] f32|bf16; kv [S,D] f32|bf16; q_pos [T] i64; kv_pos [S] i64; o [T,H,R] f32; lse [T,H] f32.
void mla_attention(const TensorView& q, const TensorView& kv, const TensorView& q_pos, const TensorView& kv_pos,
                   float scale, int64_t kv_lora_rank, const TensorView& o, const TensorView& lse);

// q [T,H,D]; q_pos [T]; seq_ids [B] i64; q_seq_index [T] i64 in [0,B): the sequence each query token reads.
void paged_mla_attention(const TensorView& q, const TensorView& q_pos, const PagedKVCache& cache,
                         const TensorView& seq_ids, const TensorView& q_seq_index, float scale,
                         int64_t kv_lora_rank, const TensorView& o, const TensorView& lse);

}  // namespace helix
