// The Helix attention step of one layer on one rank (DESIGN.md §3 steps 5-8), one contract for both devices:
//   1. write the new tokens' latent rows [c_kv | k_pe] into this rank's pool, only where it owns the position
//      (kv_append: new_rows[t] < 0 for the tokens other CP ranks own);
//   2. paged partial attention over the local shard for all H heads of this TP rank and all T query tokens
//      (paged_mla_attention);
//   3. optionally project each head's partial output with W_UV (head_linear; exact: the merge is linear), so
//      that Dv instead of R values per head cross the wire;
//   (2-3 on the CPU, where the call brings q_expanded and w_uk and the cost model says it is cheaper: the
//   expanded form, helix_attention_expanded.hpp, with the same outputs and the same exact LSE;)
//   4. pack (o, lse) per destination and exchange them with ONE all-to-all over the CP group
//      (head chunk c, of H_c = H / cp heads, goes to CP rank c);
//   5. merge the cp partial states of this rank's head chunk by their log-sum-exp (merge_states).
//   cpu:  helix_attention_cpu, host memory, a host communicator (MPI or self).
//   cuda: cuda::launch_helix_attention, device memory, a communicator of device buffers (NCCL or host-staged)
//         whose collectives are ordered on `stream`; q and the pool of one dtype; a bfloat16 W_UV reads
//         the partial outputs rounded to bfloat16 (cuBLAS takes one input dtype), fp32 accumulation.
//         Always the absorbed form (q_expanded and w_uk are not read).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

#include "helix/block_table.hpp"
#include "helix/comm.hpp"
#include "helix/device.hpp"
#include "helix/dtype.hpp"
#include "helix/kv_cache.hpp"
#include "helix/ops/attention.hpp"
#include "helix/ops/head_linear.hpp"
#include "helix/tensor.hpp"

namespace helix {

struct HelixAttentionParams {
  const void* q = nullptr;            // [T, H, D] q_dtype: absorbed queries, H = H_tp heads, D = R + rope dim;
                                      // nullptr allowed when the call runs the expanded form (never read there)
  const void* new_kv = nullptr;       // [T, D] kv_dtype: latent rows of the T new tokens (the same on every CP rank)
  const int64_t* new_rows = nullptr;  // [T] pool row of each token this rank owns, -1 for the others
  const int64_t* q_pos = nullptr;     // [T] global positions
  const int64_t* q_seq = nullptr;     // [T] in [0, B): the sequence of each token
  // This layer's pool and the batch's sequences on this rank, after the step (PagedMlaAttentionParams):
  void* pool = nullptr;                   // [num_blocks * tokens_per_block, D] kv_dtype
  const int32_t* block_tables = nullptr;  // [B, max_blocks]
  const int64_t* kv_pos = nullptr;        // [num_blocks * tokens_per_block] position of each pool row
  const int64_t* num_slots = nullptr;     // [B]
  const void* w_uv = nullptr;             // [H, W, R] w_uv_dtype, or nullptr: exchange the R-wide latent (W = R)
  float* out = nullptr;                   // [T, H / cp, W]
  // The expanded form's inputs (CPU; both nullptr: absorbed form only). q_expanded is q before the absorb,
  // q = [W_UK q_nope | q_pe], and w_uk is the absorb's weight, so the two forms give the same scores.
  const float* q_expanded = nullptr;  // [T, H, Dn + P] float32: q_nope | q_pe (P = D - R)
  const void* w_uk = nullptr;         // [H, R, Dn] w_uk_dtype: W_UK^T per head, as the absorb reads it
  void* workspace = nullptr;          // [helix_attention_workspace_bytes(p, cp)] bytes, or nullptr on the CPU
  int64_t T = 0, H = 0, D = 0, R = 0, W = 0, Dn = 0;  // Dn: qk_nope_head_dim (expanded form only)
  int64_t B = 0, max_blocks = 0, tokens_per_block = 0, max_num_slots = 0;
  float scale = 1.f;
  DType q_dtype = DType::Float32, kv_dtype = DType::Float32, w_uv_dtype = DType::Float32;
  DType w_uk_dtype = DType::Float32;
};

// The stages of one call, reported as each ends (the engines charge the time since the previous mark:
// host clock on the CPU, CUDA events on the stream). May be empty.
enum class HelixStage : uint8_t { Append, Attention, Project, Exchange, Merge };
using HelixStageMark = std::function<void(HelixStage)>;

// Runs the step; every pointer is host memory. cp_comm: the CP group (size cp). p.workspace: the partial
// outputs and exchange buffers, kept by the caller between calls (a prefill chunk's o_part alone is
// [T, H, R] floats, 134 MB at T = 512, H = 128, R = 512: allocated per call, its pages faulted in every
// layer); nullptr: allocated for this call.
size_t helix_attention_workspace_bytes_cpu(const HelixAttentionParams& p, int64_t cp);
void helix_attention_cpu(const HelixAttentionParams& p, Communicator& cp_comm, const HelixStageMark& mark = {});

namespace cuda {
size_t helix_attention_workspace_bytes(const HelixAttentionParams& p, int64_t cp);
// Every pointer is device memory; the exchange runs on cp_comm (device buffers, ordered on `stream`).
void launch_helix_attention(const HelixAttentionParams& p, Communicator& cp_comm, StreamHandle stream,
                            const HelixStageMark& mark = {});
}  // namespace cuda

// The pieces both devices build the same way: the partial attention of step 2 (o_part [T, H, R], lse_part
// [T, H]) and the W_UV projection of step 3 (o_part of o_dtype -> values [T, H, W]).
PagedMlaAttentionParams local_attention_params(const HelixAttentionParams& p, float* o_part, float* lse_part);
HeadLinearParams wuv_params(const HelixAttentionParams& p, const void* o_part, DType o_dtype, float* values);

// One step of a layer held in a PagedKVCache (Python, tests, benchmarks), on either device: validates every
// argument (the device's dtypes), commits the step to cache.table() (all or nothing: the same error on every
// CP rank whose cache saw the same calls), then calls run(p) with host pointers (p.pool is the cache's pool)
// and takes the step back if run throws. run is helix_attention_cpu, or a copy to the device around
// cuda::launch_helix_attention.
// cp_comm: size cp, rank = the cache's CP rank; q [T, H, D] (H % cp == 0, D = the cache's row width);
// new_kv [T, D] of the cache's dtype; positions [T] i64; seq_ids [B] i64 (each added to the cache);
// q_seq_index [T] i64 in [0, B); w_uv [H, Dv, R] or an empty view; out [T, H / cp, W] f32 (W = Dv or R);
// the expanded form's q_expanded [T, H, Dn + P] f32 and w_uk [H, R, Dn], both given or both empty views.
void helix_attention_on_cache(Communicator& cp_comm, PagedKVCache& cache, const TensorView& q, const TensorView& new_kv,
                              const TensorView& positions, const TensorView& seq_ids, const TensorView& q_seq_index,
                              float scale, int64_t kv_lora_rank, const TensorView& w_uv, const TensorView& out,
                              const TensorView& q_expanded, const TensorView& w_uk, Device device,
                              const std::function<void(const HelixAttentionParams&)>& run);

// Bytes one rank sends per call (to the other cp-1 ranks): (cp-1)/cp * T * H_tp * (W + 1) * 4.
int64_t helix_exchange_bytes(int64_t cp, int64_t T, int64_t H_tp, int64_t width);

}  // namespace helix
