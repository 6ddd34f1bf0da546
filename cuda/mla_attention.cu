// Paged MLA partial attention (decode and query chunks), split-KV flash decoding.
//
// Grid (num_splits, T, head tiles): each CTA reads the keys of one slot range of one query token's
// sequence and produces a normalized partial (o, lse) for its heads; with more than one split the
// partials land in a workspace [splits, T, H, R] + [splits, T, H] and merge_states combines them
// exactly (the same LSE merge Helix uses across ranks). Two kernels:
//   - TensorCore: 32 heads x 32 keys per tile. All 128 heads of DeepSeek-V3 share one latent key, so
//     scores are a [32 heads x 576] x [576 x 32 keys] GEMM and the value product a [32 x 32] x [32 x 512]
//     GEMM, both on mma.sync m16n8k16 (bf16 in, fp32 accumulate). Online softmax in fp32.
//   - Simple: one warp per (token, head), fp32 FMA; the readable fallback for any shape.
#include <algorithm>
#include <cmath>
#include <limits>

#include "common.cuh"
#include "helix/ops/attention.hpp"
#include "helix/ops/merge_states.hpp"

namespace helix::cuda {

namespace {

using detail::float_to_bf16_bits;

constexpr int kMaxSplits = 256;
constexpr int kHeadsTile = 32;  // heads per CTA (both kernels size their splits with it)
constexpr int kKeysTile = 32;   // keys per tile; split ranges are multiples of it
constexpr int kTcWarps = 8;
constexpr int kSimpleWarps = 4;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Launch {
  int splits;
  int64_t chunk;  // slots per split (multiple of kKeysTile)
};

Launch plan(const PagedMlaAttentionParams& p) {
  const int64_t tiles = (p.max_num_slots + kKeysTile - 1) / kKeysTile;
  if (tiles == 0) return {1, kKeysTile};
  int64_t splits = p.num_splits;
  if (splits <= 0) {
    // Aim for two waves of CTAs over the SMs; never split below one tile per CTA.
    const int64_t base = p.T * ((p.H + kHeadsTile - 1) / kHeadsTile);
    splits = (2 * static_cast<int64_t>(multiprocessor_count()) + base - 1) / base;
  }
  splits = std::max<int64_t>(1, std::min<int64_t>({splits, kMaxSplits, tiles}));
  const int64_t chunk = ((tiles + splits - 1) / splits) * kKeysTile;
  return {static_cast<int>((p.max_num_slots + chunk - 1) / chunk), chunk};
}

// Where CTA (split, t) writes head h: the final output, or its slice of the split workspace.
struct Dest {
  float* o;    // [.., H, R] row of (t, h) is o + ((split * T + t) * H + h) * R
  float* lse;  // [.., H]
};

__device__ __forceinline__ Dest dest(const PagedMlaAttentionParams& p, int num_splits) {
  if (num_splits == 1) return {p.o, p.lse};
  return {p.workspace, p.workspace + static_cast<int64_t>(num_splits) * p.T * p.H * p.R};
}

// Pool row of slot `slot` of sequence b (its key is pool row * D, its position kv_pos[row]).
__device__ __forceinline__ int64_t pool_row(const PagedMlaAttentionParams& p, int64_t b, int64_t slot) {
  const int64_t blk = p.block_tables[b * p.max_blocks + slot / p.tokens_per_block];
  return blk * p.tokens_per_block + slot % p.tokens_per_block;
}

template <class T = uint16_t>
__device__ __forceinline__ const T* key_row(const PagedMlaAttentionParams& p, int64_t row) {
  return static_cast<const T*>(p.pool) + row * p.D;
}

// ---- Simple kernel: one warp per (split, token, head) ----------------------------------------------
// Lane l holds q[d] and acc[d] for d = l + 32 i (D, R <= 1024). Elem: uint16_t (bf16) or float.
template <class Elem>
__global__ void __launch_bounds__(kSimpleWarps * 32)
    attention_simple_kernel(PagedMlaAttentionParams p, int64_t chunk, int num_splits) {
  const int lane = threadIdx.x & 31;
  const int64_t h = static_cast<int64_t>(blockIdx.z) * kSimpleWarps + (threadIdx.x >> 5);
  const int64_t t = blockIdx.y;
  const int split = blockIdx.x;
  if (h >= p.H) return;  // whole warp leaves; no block barrier below
  const int64_t b = p.q_seq[t];
  const int64_t qp = p.q_pos[t];
  const int64_t begin = split * chunk;
  const int64_t end = min(p.num_slots[b], begin + chunk);

  float q[32], acc[32];
  const Elem* qrow = static_cast<const Elem*>(p.q) + (t * p.H + h) * p.D;
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    const int64_t d = lane + 32 * i;
    q[i] = d < p.D ? detail::load_as_float(qrow, d) : 0.f;
    acc[i] = 0.f;
  }
  float m = kNegInf, l = 0.f;
  for (int64_t s = begin; s < end; ++s) {
    const int64_t row = pool_row(p, b, s);
    if (p.kv_pos[row] > qp) continue;  // same for the whole warp
    const Elem* k = key_row<Elem>(p, row);
    float dot = 0.f;
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      const int64_t d = lane + 32 * i;
      if (d < p.D) dot = fmaf(q[i], detail::load_as_float(k, d), dot);
    }
    const float score = detail::warp_sum(dot) * p.scale;
    const float m_new = fmaxf(m, score);
    const float alpha = m == kNegInf ? 0.f : expf(m - m_new);
    const float e = expf(score - m_new);
    l = l * alpha + e;
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      const int64_t d = lane + 32 * i;
      if (d < p.R) acc[i] = fmaf(e, detail::load_as_float(k, d), acc[i] * alpha);
    }
    m = m_new;
  }
  const Dest out = dest(p, num_splits);
  const int64_t row = (static_cast<int64_t>(split) * p.T + t) * p.H + h;
  const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    const int64_t d = lane + 32 * i;
    if (d < p.R) out.o[row * p.R + d] = acc[i] * inv;
  }
  if (lane == 0) out.lse[row] = l > 0.f ? m + logf(l) : kNegInf;
}

// ---- TensorCore kernel ------------------------------------------------------------------------------

__device__ __forceinline__ uint32_t ld32(const uint16_t* p) { return *reinterpret_cast<const uint32_t*>(p); }
__device__ __forceinline__ uint32_t pack2(uint16_t lo, uint16_t hi) { return uint32_t(lo) | (uint32_t(hi) << 16); }

// D = A * B + D for one m16n8k16 tile (A row-major 16x16 bf16, B "col" 16x8 bf16, D 16x8 fp32).
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if HELIX_CUDA_EMULATOR
  // The SIMT emulator's warp collective, written from the PTX ISA's fragment layouts (not from this file).
  simt::mma_m16n8k16_bf16(d, a, b0, b1);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

struct TcSmem {
  int ld;  // row stride of q/k tiles in bf16 elements: D + 8 keeps fragment loads free of bank conflicts
  static constexpr int kLdP = kKeysTile + 8;
  static constexpr int kLdS = kKeysTile + 1;
  static size_t bytes(int64_t D) {
    const size_t ld = static_cast<size_t>(D) + 8;
    return 2 * kHeadsTile * ld * sizeof(uint16_t)  // q tile, k tile
           + kHeadsTile * kLdS * sizeof(float)     // scores
           + kHeadsTile * kLdP * sizeof(uint16_t)  // probabilities (bf16)
           + 3 * kHeadsTile * sizeof(float)        // running max, sum, rescale
           + kKeysTile * sizeof(int);              // key visible
  }
};

// Fragment coordinates: g = lane / 4 (row in the 8-row group), c = 2 * (lane % 4) (column pair).
__global__ void __launch_bounds__(kTcWarps * 32)
    attention_tc_kernel(PagedMlaAttentionParams p, int64_t chunk, int num_splits) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int ld = static_cast<int>(p.D) + 8;
  uint16_t* q_s = reinterpret_cast<uint16_t*>(smem_raw);                         // [32 heads][ld]
  uint16_t* k_s = q_s + kHeadsTile * ld;                                         // [32 keys][ld]
  float* s_s = reinterpret_cast<float*>(k_s + kKeysTile * ld);                   // [32 heads][kLdS]
  uint16_t* p_s = reinterpret_cast<uint16_t*>(s_s + kHeadsTile * TcSmem::kLdS);  // [32 heads][kLdP]
  float* m_s = reinterpret_cast<float*>(p_s + kHeadsTile * TcSmem::kLdP);        // [32]
  float* l_s = m_s + kHeadsTile;
  float* alpha_s = l_s + kHeadsTile;
  int* vis_s = reinterpret_cast<int*>(alpha_s + kHeadsTile);  // [32]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, c = 2 * (lane & 3);
  const int64_t t = blockIdx.y;
  const int64_t h0 = static_cast<int64_t>(blockIdx.z) * kHeadsTile;
  const int split = blockIdx.x;
  const int64_t b = p.q_seq[t];
  const int64_t qp = p.q_pos[t];
  const int64_t begin = split * chunk;
  const int64_t end = min(p.num_slots[b], begin + chunk);
  const int vec_per_row = static_cast<int>(p.D / 8);  // 16-byte vectors per row

  // Q tile (heads beyond H are zero).
  for (int i = tid; i < kHeadsTile * vec_per_row; i += blockDim.x) {
    const int r = i / vec_per_row, v = i % vec_per_row;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (h0 + r < p.H)
      val = reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(p.q) + (t * p.H + h0 + r) * p.D)[v];
    *reinterpret_cast<uint4*>(q_s + r * ld + 8 * v) = val;
  }
  if (tid < kHeadsTile) {
    m_s[tid] = kNegInf;
    l_s[tid] = 0.f;
  }

  // Value slice of this warp: latent dims [64 warp, 64 warp + 64), 2 m-tiles (heads) x 8 n-tiles.
  const int d0 = 64 * warp;
  const bool pv_active = d0 < p.R;
  float acc[2][8][4];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mi][nt][e] = 0.f;

  const int s_mi = warp & 1, s_ni = warp >> 1;  // score tile of this warp: heads 16 s_mi, keys 8 s_ni
  for (int64_t k0 = begin; k0 < end; k0 += kKeysTile) {
    // K tile; slots past the range are zero rows (never NaN, masked below).
    for (int i = tid; i < kKeysTile * vec_per_row; i += blockDim.x) {
      const int r = i / vec_per_row, v = i % vec_per_row;
      uint4 val = make_uint4(0, 0, 0, 0);
      if (k0 + r < end) val = reinterpret_cast<const uint4*>(key_row(p, pool_row(p, b, k0 + r)))[v];
      *reinterpret_cast<uint4*>(k_s + r * ld + 8 * v) = val;
    }
    if (tid < kKeysTile) {
      const int64_t s = k0 + tid;
      vis_s[tid] = s < end && p.kv_pos[pool_row(p, b, s)] <= qp;
    }
    __syncthreads();

    // Scores: [16 heads x 8 keys] per warp over all D.
    {
      float sc[4] = {0.f, 0.f, 0.f, 0.f};
      const uint16_t* qa = q_s + (16 * s_mi + g) * ld + c;
      const uint16_t* kb = k_s + (8 * s_ni + g) * ld + c;
      for (int kk = 0; kk < p.D; kk += 16) {
        const uint32_t a[4] = {ld32(qa + kk), ld32(qa + 8 * ld + kk), ld32(qa + kk + 8), ld32(qa + 8 * ld + kk + 8)};
        mma_bf16(sc, a, ld32(kb + kk), ld32(kb + kk + 8));
      }
      const int key = 8 * s_ni + c;
      const int hr = 16 * s_mi + g;
      s_s[hr * TcSmem::kLdS + key] = vis_s[key] ? sc[0] * p.scale : kNegInf;
      s_s[hr * TcSmem::kLdS + key + 1] = vis_s[key + 1] ? sc[1] * p.scale : kNegInf;
      s_s[(hr + 8) * TcSmem::kLdS + key] = vis_s[key] ? sc[2] * p.scale : kNegInf;
      s_s[(hr + 8) * TcSmem::kLdS + key + 1] = vis_s[key + 1] ? sc[3] * p.scale : kNegInf;
    }
    __syncthreads();

    // Online softmax: warp w owns heads 4w..4w+3, lane = key.
#pragma unroll
    for (int hh = 0; hh < 4; ++hh) {
      const int hr = 4 * warp + hh;
      const float s = s_s[hr * TcSmem::kLdS + lane];
      const float m_old = m_s[hr];
      const float m_new = fmaxf(m_old, detail::warp_max(s));
      const float e = m_new == kNegInf ? 0.f : expf(s - m_new);
      const float alpha = m_old == kNegInf ? 0.f : expf(m_old - m_new);
      const float sum = detail::warp_sum(e);
      p_s[hr * TcSmem::kLdP + lane] = float_to_bf16_bits(e);
      __syncwarp();
      if (lane == 0) {
        l_s[hr] = l_s[hr] * alpha + sum;
        m_s[hr] = m_new;
        alpha_s[hr] = alpha;
      }
    }
    __syncthreads();

    // o[32 heads, warp's 64 dims] = o * alpha + P[32 x 32] @ V[32 keys x 64 dims]; V = k_s[:, :R].
    if (pv_active) {
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        const float a_lo = alpha_s[16 * mi + g], a_hi = alpha_s[16 * mi + g + 8];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
          acc[mi][nt][0] *= a_lo;
          acc[mi][nt][1] *= a_lo;
          acc[mi][nt][2] *= a_hi;
          acc[mi][nt][3] *= a_hi;
        }
      }
#pragma unroll
      for (int ks = 0; ks < kKeysTile / 16; ++ks) {
        uint32_t a[2][4];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          const uint16_t* pa = p_s + (16 * mi + g) * TcSmem::kLdP + 16 * ks + c;
          a[mi][0] = ld32(pa);
          a[mi][1] = ld32(pa + 8 * TcSmem::kLdP);
          a[mi][2] = ld32(pa + 8);
          a[mi][3] = ld32(pa + 8 * TcSmem::kLdP + 8);
        }
        const uint16_t* vk = k_s + (16 * ks + c) * ld + d0 + g;  // B[k = key][n = dim]
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
          const uint16_t* v = vk + 8 * nt;
          const uint32_t b0 = pack2(v[0], v[ld]);
          const uint32_t b1 = pack2(v[8 * ld], v[9 * ld]);
          mma_bf16(acc[0][nt], a[0], b0, b1);
          mma_bf16(acc[1][nt], a[1], b0, b1);
        }
      }
    }
    __syncthreads();  // k_s, s_s, p_s are rewritten by the next tile
  }
  __syncthreads();  // m_s/l_s initialized by other threads when the range is empty

  const Dest out = dest(p, num_splits);
  const int64_t row0 = (static_cast<int64_t>(split) * p.T + t) * p.H + h0;
  if (pv_active) {
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int hr = 16 * mi + g + 8 * half;
        if (h0 + hr >= p.H) continue;
        const float l = l_s[hr];
        const float inv = l > 0.f ? 1.f / l : 0.f;
        float* orow = out.o + (row0 + hr) * p.R + d0 + c;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
          orow[8 * nt] = acc[mi][nt][2 * half] * inv;
          orow[8 * nt + 1] = acc[mi][nt][2 * half + 1] * inv;
        }
      }
    }
  }
  if (tid < kHeadsTile && h0 + tid < p.H) {
    const float l = l_s[tid];
    out.lse[row0 + tid] = l > 0.f ? m_s[tid] + logf(l) : kNegInf;
  }
}

}  // namespace

bool tensor_core_attention_supported(int64_t D, int64_t R) {
  return D % 16 == 0 && D <= 1024 && R % 64 == 0 && R > 0 && R <= 512 && R <= D;
}

int attention_num_splits(const PagedMlaAttentionParams& p) { return plan(p).splits; }

int64_t attention_workspace_floats(const PagedMlaAttentionParams& p) {
  const int splits = plan(p).splits;
  return splits == 1 ? 0 : static_cast<int64_t>(splits) * p.T * p.H * (p.R + 1);
}

void launch_paged_mla_attention(const PagedMlaAttentionParams& p, AttentionKernel kernel, StreamHandle stream) {
  if (p.T == 0 || p.H == 0) return;
  HELIX_CHECK(p.D <= 1024 && p.R <= p.D, "paged_mla_attention: needs D <= 1024 and R <= D, got D=", p.D, " R=", p.R);
  HELIX_CHECK(p.q_dtype == p.kv_dtype && (p.kv_dtype == DType::BFloat16 || p.kv_dtype == DType::Float32),
              "paged_mla_attention: q and the pool must both be bfloat16 or both float32");
  if (kernel == AttentionKernel::Auto) {
    kernel = p.kv_dtype == DType::BFloat16 && tensor_core_attention_supported(p.D, p.R) ? AttentionKernel::TensorCore
                                                                                        : AttentionKernel::Simple;
  }
  HELIX_CHECK(kernel != AttentionKernel::TensorCore || p.kv_dtype == DType::BFloat16,
              "paged_mla_attention: the tensor-core kernel needs bfloat16 q and pool");
  HELIX_CHECK(kernel != AttentionKernel::TensorCore || tensor_core_attention_supported(p.D, p.R),
              "paged_mla_attention: the tensor-core kernel needs D % 16 == 0, D <= 1024, R % 64 == 0, "
              "R <= 512; got D=",
              p.D, " R=", p.R);
  HELIX_CHECK(p.T <= 65535, "paged_mla_attention: at most 65535 query tokens per launch (grid.y), got ", p.T);
  const Launch L = plan(p);
  HELIX_CHECK(L.splits == 1 || p.workspace != nullptr,
              "paged_mla_attention: a split-KV launch needs a workspace of attention_workspace_floats()");
  const auto T = static_cast<unsigned>(p.T);
  if (kernel == AttentionKernel::TensorCore) {
    const size_t smem = TcSmem::bytes(p.D);
    // Above 48 KiB of dynamic shared memory needs the opt-in, once per device and size (not per launch).
    constexpr int kMaxDevices = 64;
    static thread_local size_t opted_in[kMaxDevices] = {};
    int dev = 0;
    HELIX_CUDA_CHECK(cudaGetDevice(&dev));
    if (dev >= kMaxDevices || opted_in[dev] < smem) {
      HELIX_CUDA_CHECK(cudaFuncSetAttribute(attention_tc_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(smem)));
      if (dev < kMaxDevices) opted_in[dev] = smem;
    }
    const dim3 grid(L.splits, T, detail::grid_dim(p.H, kHeadsTile));
    attention_tc_kernel<<<grid, kTcWarps * 32, smem, stream>>>(p, L.chunk, L.splits);
    HELIX_CUDA_CHECK_LAUNCH("attention_tc_kernel");
  } else {
    const dim3 grid(L.splits, T, detail::grid_dim(p.H, kSimpleWarps));
    if (p.kv_dtype == DType::Float32) {
      attention_simple_kernel<float><<<grid, kSimpleWarps * 32, 0, stream>>>(p, L.chunk, L.splits);
    } else {
      attention_simple_kernel<uint16_t><<<grid, kSimpleWarps * 32, 0, stream>>>(p, L.chunk, L.splits);
    }
    HELIX_CUDA_CHECK_LAUNCH("attention_simple_kernel");
  }
  if (L.splits > 1) {
    MergeStatesParams m;
    m.o_parts = p.workspace;
    m.lse_parts = p.workspace + static_cast<int64_t>(L.splits) * p.T * p.H * p.R;
    m.o = p.o;
    m.lse = p.lse;
    m.N = L.splits;
    m.M = p.T * p.H;
    m.D = p.R;
    launch_merge_states(m, stream);
  }
}

}  // namespace helix::cuda
