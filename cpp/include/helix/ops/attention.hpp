// Partial MLA attention over a set of latent keys (one CP rank's shard), absorbed form.
//
//   score[t,h,s] = scale * dot(q[t,h,:], kv[s,:])          over D = kv_lora_rank + rope_dim
//   visible iff kv_pos[s] <= q_pos[t]
//   o[t,h,:]     = sum_s softmax_s(score) * kv[s, :kv_lora_rank]    (the latent is also the value)
//   lse[t,h]     = log(sum_s exp(score))                     natural log; -inf and o = 0 when nothing is visible
//
// Accumulation is float32.
//   cpu:  q and kv each float32 or bfloat16. With bfloat16 keys on the BF16 product paths (see MlaKernelPath)
//         q and the softmax weights enter the two products as bf16 hi + lo pairs (Avx512Bf16Split, AmxSplit)
//         or, forced only, rounded to bf16 (Avx512Bf16, Amx); the running max, sum and output stay float32.
//   cuda: q and kv of one dtype: bfloat16 (both kernels, AttentionKernel) or float32 (Simple only).
//
// The paged form (PagedMlaAttentionParams, both devices): the keys of query token t come from sequence
// b = q_seq[t]; slot k of b is pool row r = block_tables[b, k / tpb] * tpb + k % tpb (SequenceView::pool_row),
// whose global position is kv_pos[r] (positions live with the rows, as BlockTable::row_positions keeps them,
// so a decode step uploads no per-slot data); slots k < num_slots[b] are valid, no other row is ever read.
#pragma once

#include <cstdint>
#include <string_view>

#include "helix/device.hpp"
#include "helix/dtype.hpp"
#include "helix/tensor.hpp"

namespace helix {

struct PagedMlaAttentionParams {
  const void* q = nullptr;                // [T, H, D] q_dtype
  const int64_t* q_pos = nullptr;         // [T]  global position of each query token
  const int64_t* q_seq = nullptr;         // [T]  in [0, B): the sequence each query token reads
  const void* pool = nullptr;             // [num_blocks * tokens_per_block, D] kv_dtype
  const int32_t* block_tables = nullptr;  // [B, max_blocks]
  const int64_t* kv_pos = nullptr;        // [num_blocks * tokens_per_block] position of each pool row
  const int64_t* num_slots = nullptr;     // [B], each <= max_blocks * tokens_per_block
  float* o = nullptr;                     // [T, H, R]  output, normalized
  float* lse = nullptr;                   // [T, H]     output, natural log
  float* workspace = nullptr;  // cuda: [cuda::attention_workspace_floats(p)] split-KV partials (may be null when
                               // that is 0); cpu: unused
  int64_t T = 0, H = 0, D = 0, R = 0;  // R = kv_lora_rank <= D
  int64_t B = 0, max_blocks = 0, tokens_per_block = 0;
  int64_t max_num_slots = 0;  // max over b of num_slots[b] (host-known; sizes the CUDA split)
  float scale = 1.f;          // finite, > 0
  int num_splits = 0;         // cuda: 0 = chosen from the SM count, else 1..256; cpu: 0 (it plans its own)
  DType q_dtype = DType::BFloat16, kv_dtype = DType::BFloat16;
};

// q [T,H,D]; q_pos [T] i64; q_seq [T] i64 in [0,B); pool [num_blocks, tokens_per_block, D] (kv dtype);
// block_tables [B, max_blocks] i32 (the blocks of num_slots[b] slots in [0, num_blocks)); kv_pos
// [num_blocks, tokens_per_block] i64; num_slots [B] i64 <= max_blocks * tokens_per_block; 0 < kv_lora_rank <= D;
// scale finite > 0; o [T,H,R] f32; lse [T,H] f32; dtypes as the device runs them (above). num_splits: cuda
// 0..256, cpu 0.
PagedMlaAttentionParams check_paged_mla_attention_args(const TensorView& q, const TensorView& q_pos,
                                                       const TensorView& q_seq, const TensorView& pool,
                                                       const TensorView& block_tables, const TensorView& kv_pos,
                                                       const TensorView& num_slots, float scale, int64_t kv_lora_rank,
                                                       int num_splits, const TensorView& o, const TensorView& lse,
                                                       Device device);

// OpenMP-parallel over query rows and keys; tokens of one sequence share its keys.
void paged_mla_attention_cpu(const PagedMlaAttentionParams& p);

namespace cuda {
enum class AttentionKernel : int {
  Auto = 0,        // TensorCore when the shape and dtype (bf16) allow it, else Simple
  Simple = 1,      // one warp per (token, head, split), fp32 FMA; any D <= 1024, R <= D
  TensorCore = 2,  // mma.sync m16n8k16 bf16 -> fp32, 32 heads x 32 keys per tile; D % 16 == 0,
                   // R % 64 == 0, R <= 512, D <= 1024
};
// Splits that launch_paged_mla_attention uses for p (after resolving num_splits == 0).
int attention_num_splits(const PagedMlaAttentionParams& p);
// fp32 elements of workspace needed for p: num_splits * T * H * (R + 1), or 0 when num_splits == 1.
int64_t attention_workspace_floats(const PagedMlaAttentionParams& p);
bool tensor_core_attention_supported(int64_t D, int64_t R);
void launch_paged_mla_attention(const PagedMlaAttentionParams& p, AttentionKernel kernel, StreamHandle stream);
}  // namespace cuda

// The contiguous form (one sequence's keys in one array), the CPU kernel's own entry point; the bindings
// run it on CUDA as a paged call over blocks of the array. The queries of one call and where the results go.
// All rows t*H + h share the same keys.
struct MlaAttentionParams {
  const void* q = nullptr;             // [T, H, D]  q_dtype
  const int64_t* q_pos = nullptr;      // [T]        global position of each query token
  float* o = nullptr;                  // [T, H, R]  output, normalized
  float* lse = nullptr;                // [T, H]     output, natural log
  int64_t T = 0, H = 0, D = 0, R = 0;  // R = kv_lora_rank <= D
  float scale = 1.f;                   // finite, > 0
  DType q_dtype = DType::Float32;      // Float32 or BFloat16
};

// Kernel entry point (no validation; shapes as documented). OpenMP-parallel over keys and rows.
// kv: [S, D] kv_dtype (Float32 or BFloat16), kv_pos: [S].
void mla_attention_cpu(const MlaAttentionParams& p, const void* kv, const int64_t* kv_pos, int64_t S, DType kv_dtype);
// The same op on key rows kv [S, ldkv] kv_dtype whose scores read columns [0, p.D) and whose values are columns
// [value_col, value_col + p.R), not the first R (the expanded form's rows [k_nope | k_pe | v],
// helix_attention_expanded.cpp: no zero block of queries against the values). CPU only.
void mla_attention_cpu(const MlaAttentionParams& p, const void* kv, int64_t ldkv, int64_t value_col,
                       const int64_t* kv_pos, int64_t S, DType kv_dtype);

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
// q [T,H,D]; kv [S,D]; q_pos [T] i64; kv_pos [S] i64; 0 < kv_lora_rank <= D; scale finite > 0; the dtypes of
// q and kv as the device runs them (above; cuda: D <= 1024).
MlaShape check_mla_attention_args(const TensorView& q, const TensorView& kv, const TensorView& q_pos,
                                  const TensorView& kv_pos, float scale, int64_t kv_lora_rank, Device device);

}  // namespace helix
