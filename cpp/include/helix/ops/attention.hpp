// Partial MLA attention over a set of latent keys (one CP rank's shard), absorbed form.
//
//   score[t,h,s] = scale * dot(q[t,h,:], kv[s,:])          over D = kv_lora_rank + rope_dim
//   visible iff kv_pos[s] <= q_pos[t]
//   o[t,h,:]     = sum_s softmax_s(score) * kv[s, :kv_lora_rank]    (the latent is also the value)
//   lse[t,h]     = log(sum_s exp(score))                     natural log; -inf and o = 0 when nothing is visible
//
// Accumulation is float32; q and kv may be float32 or bfloat16. With bfloat16 keys on the BF16 product
// paths (see MlaKernelPath) q and the softmax weights enter the two products as bf16 hi + lo pairs
// (Avx512Bf16Split, AmxSplit) or, forced only, rounded to bf16 (Avx512Bf16, Amx); the running max, sum and
// output stay float32.
#pragma once

#include <cstdint>
#include <string_view>

#include "helix/block_table.hpp"
#include "helix/dtype.hpp"
#include "helix/kv_pool.hpp"
#include "helix/tensor.hpp"

namespace helix {

// The queries of one call and where the results go. All rows t*H + h share the same keys.
struct MlaAttentionParams {
  const void* q = nullptr;             // [T, H, D]  q_dtype
  const int64_t* q_pos = nullptr;      // [T]        global position of each query token
  float* o = nullptr;                  // [T, H, R]  output, normalized
  float* lse = nullptr;                // [T, H]     output, natural log
  int64_t T = 0, H = 0, D = 0, R = 0;  // R = kv_lora_rank <= D
  float scale = 1.f;                   // finite, > 0
  DType q_dtype = DType::Float32;      // Float32 or BFloat16
  // Optional subset of query tokens to compute (the outputs of the others are left untouched):
  const int64_t* tokens = nullptr;  // [num_tokens] indices in [0, T); nullptr: all T tokens
  int64_t num_tokens = 0;
};

// Kernel entry points (no validation; shapes as documented). OpenMP-parallel over keys and rows.
// kv: [S, D] kv_dtype (Float32 or BFloat16), kv_pos: [S].
void mla_attention_cpu(const MlaAttentionParams& p, const void* kv, const int64_t* kv_pos, int64_t S, DType kv_dtype);
// Keys of sequence `seq` read from `pool` through its block table (unused slots are never read).
// pool: rows [num_blocks * seq.tokens_per_block, D] of pool.dtype(); seq: from the BlockTable.
void paged_mla_attention_cpu(const MlaAttentionParams& p, const KVPool& pool, const SequenceView& seq);

// Which micro-kernels run. float32 keys always run Portable or the exact Avx512 kernels (the BF16 product
// paths are for bfloat16 keys only). Errors: docs/performance.md; bounds: tests/tolerances.py.
//   Portable:        plain C++ (compiler-vectorized for the baseline ISA); runs anywhere.
//   Avx512:          AVX-512F float32 FMA micro-kernels; bfloat16 keys are widened to float32 per tile.
//   Avx512Bf16Split: AVX-512 BF16 dot products (VDPBF16PS) on the bf16 keys as they are stored, with q and the
//                    softmax weights P as bf16 hi + lo pairs (hi = bf16(x), lo = bf16(x - hi); two products
//                    each, 2^-17 relative instead of 2^-9): float32-grade.
//   AmxSplit:        AMX-BF16 tile products, q and P as bf16 hi + lo pairs like Avx512Bf16Split: float32-grade.
//   Avx512Bf16, Amx: as the split paths with q and P rounded once to bf16 (one product each): faster, but
//                    ~1e-3 relative errors at O(1) scores and up to ~0.5 at large score spreads. Forced only.
// Auto (float32-grade on every CPU): AmxSplit where the CPU has AMX-BF16 and the OS grants the tile-data
// permission (Sapphire/Emerald Rapids and later; ~4x the widened Avx512 kernels on bf16 keys there), else
// Avx512 on every other AVX-512 CPU, else Portable. Avx512Bf16Split is not faster than Avx512 where it was
// measured (AMD Zen 4, docs/performance.md 1b: 0.88-1.05x its speed, T = 1 and 16, 1 and 2 threads):
// VDPBF16PS issues at the FMA rate there, so two per pair of products tie with one FMA per product, and
// Avx512's fp32 products are the more accurate at large score spreads; on Intel Xeons VDPBF16PS runs at
// about 0.6x the FMA rate. Tests force each path to compare them; forcing one the CPU (or OS) lacks throws
// Error naming what is missing.
enum class MlaKernelPath : uint8_t { Auto, Portable, Avx512, Avx512Bf16, Avx512Bf16Split, Amx, AmxSplit };
inline constexpr MlaKernelPath kMlaKernelPaths[] = {
    MlaKernelPath::Auto,       MlaKernelPath::Portable,        MlaKernelPath::Avx512,
    MlaKernelPath::Avx512Bf16, MlaKernelPath::Avx512Bf16Split, MlaKernelPath::Amx,
    MlaKernelPath::AmxSplit};
void set_mla_kernel_path(MlaKernelPath path);
// The path Auto resolves to on this CPU, or the forced one.
MlaKernelPath mla_kernel_path();
std::string_view mla_kernel_path_name(MlaKernelPath path);
// Why `path` cannot run here (the missing CPU feature or OS permission); empty when it can.
std::string_view mla_kernel_path_unavailable(MlaKernelPath path);

// Threads the CPU kernels use when called from this thread (OpenMP); n >= 1.
void set_cpu_threads(int n);
int cpu_threads();

// Shapes of a validated mla_attention call.
struct MlaShape {
  int64_t T = 0, H = 0, D = 0, R = 0, S = 0;
};

// Validates the inputs of mla_attention (everything but the outputs) and returns the shapes.
// q [T,H,D] f32|bf16; kv [S,D] f32|bf16; q_pos [T] i64; kv_pos [S] i64; 0 < kv_lora_rank <= D; scale finite > 0.
MlaShape check_mla_attention_args(const TensorView& q, const TensorView& kv, const TensorView& q_pos,
                                  const TensorView& kv_pos, float scale, int64_t kv_lora_rank);

// Validated op (the boundary): throws ArgumentError naming the bad argument. o [T,H,R] f32; lse [T,H] f32.
void mla_attention(const TensorView& q, const TensorView& kv, const TensorView& q_pos, const TensorView& kv_pos,
                   float scale, int64_t kv_lora_rank, const TensorView& o, const TensorView& lse);

// Validates the inputs of paged_mla_attention and returns the shapes (S = 0: per sequence).
// q [T,H,D] f32|bf16 with D == pool.head_dim(); pool rows == table.num_blocks() * table.tokens_per_block();
// q_pos [T] i64; seq_ids [B] i64, each known to the table; q_seq_index [T] i64 in [0, B).
MlaShape check_paged_mla_attention_args(const TensorView& q, const TensorView& q_pos, const KVPool& pool,
                                        const BlockTable& table, const TensorView& seq_ids,
                                        const TensorView& q_seq_index, float scale, int64_t kv_lora_rank);

// q [T,H,D]; q_pos [T]; the keys: `pool` through `table`; seq_ids [B] i64; q_seq_index [T] i64 in [0,B): the
// sequence each query token reads. o [T,H,R] f32; lse [T,H] f32.
void paged_mla_attention(const TensorView& q, const TensorView& q_pos, const KVPool& pool, const BlockTable& table,
                         const TensorView& seq_ids, const TensorView& q_seq_index, float scale, int64_t kv_lora_rank,
                         const TensorView& o, const TensorView& lse);

}  // namespace helix
