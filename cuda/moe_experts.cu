// The routed experts of a decode step entirely on the device (CPU twin: moe_experts_cpu), so that a step
// never waits for its routing on the host. Three kernels on the stream:
//   moe_plan:    one block groups the (token, k) pairs by local expert, stably (token order within an
//                expert, experts ascending, as moe_experts_cpu buckets them);
//   moe_linear:  per expert that got tokens, a GEMV over its (<= kMaxRows) rows, its weights read once:
//                gate_up on the gathered h rows, then down on silu(gate) * up (computed as it is loaded);
//   moe_combine: out[t] += sum over k of topk_weight[t,k] * y[pair (t,k)] for the local pairs, in k order.
#include <algorithm>

#include "common.cuh"
#include "helix/ops/moe_experts.hpp"

namespace helix::cuda {

namespace {

constexpr int kPlanThreads = 1024;
constexpr int kMaxRows = kMoeExpertsMaxTokens;  // rows of one expert: a token meets an expert at most once
constexpr int kWarps = 8;
constexpr int kCols = 4;                    // output columns per warp
constexpr int kBlockCols = kWarps * kCols;  // per block
// The x tile [rows, K tile] fp32 in 64 KiB of dynamic shared memory: a block's K tile is as long as its
// group's rows allow (one row: 16K values, the whole of V3's hidden 7168 or F 2048, so the common decode
// case streams its weights with no barrier at all; 16 rows: 1024).
constexpr int kSmemBytes = 64 << 10;
constexpr int kSmemFloats = kSmemBytes / 4;

// Device views of the workspace (all sized for P = T * top_k pairs).
struct Plan {
  int* counts;      // [2]: M local pairs, G experts with tokens
  int* pair_of;     // [P]: slot of pair (t, k) in expert order, or -1 when its expert is not local
  int* pair_tok;    // [P]: token of slot s (s < M)
  int* grp_expert;  // [P]: local expert of group g (g < G)
  int* grp_start;   // [P + 1]: first slot of group g; grp_start[G] = M
  float* pair_w;    // [P]: routing weight of slot s
  float* gu;        // [P, 2F]: gate | up of slot s
  float* y;         // [P, hidden]: expert output of slot s
};

size_t align16(size_t n) { return (n + 15) / 16 * 16; }

Plan plan_of(const MoeExpertsParams& p) {
  const size_t P = static_cast<size_t>(p.T * p.top_k);
  auto* base = static_cast<unsigned char*>(p.workspace);
  size_t off = 0;
  auto take = [&](size_t bytes) {
    unsigned char* at = base + off;
    off += align16(bytes);
    return at;
  };
  Plan plan;
  plan.counts = reinterpret_cast<int*>(take(2 * 4));
  plan.pair_of = reinterpret_cast<int*>(take(P * 4));
  plan.pair_tok = reinterpret_cast<int*>(take(P * 4));
  plan.grp_expert = reinterpret_cast<int*>(take(P * 4));
  plan.grp_start = reinterpret_cast<int*>(take((P + 1) * 4));
  plan.pair_w = reinterpret_cast<float*>(take(P * 4));
  plan.gu = reinterpret_cast<float*>(take(P * 2 * static_cast<size_t>(p.F) * 4));
  plan.y = reinterpret_cast<float*>(take(P * static_cast<size_t>(p.hidden) * 4));
  return plan;
}

// Exclusive prefix sums of a[0..n) and b[0..n) in place (n <= blockDim.x: one element per thread);
// returns the totals. All threads of the block call it.
__device__ void block_exclusive_scan2(int* a, int* b, int n, int& total_a, int& total_b) {
  __shared__ int sums_a[kPlanThreads / 32], sums_b[kPlanThreads / 32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int va = tid < n ? a[tid] : 0, vb = tid < n ? b[tid] : 0;
  int sa = va, sb = vb;  // inclusive within the warp
  for (int o = 1; o < 32; o <<= 1) {
    const int xa = __shfl_up_sync(0xffffffffu, sa, o), xb = __shfl_up_sync(0xffffffffu, sb, o);
    if (lane >= o) {
      sa += xa;
      sb += xb;
    }
  }
  if (lane == 31) {
    sums_a[warp] = sa;
    sums_b[warp] = sb;
  }
  __syncthreads();
  int before_a = 0, before_b = 0;
  total_a = total_b = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x) / 32; ++w) {
    if (w < warp) {
      before_a += sums_a[w];
      before_b += sums_b[w];
    }
    total_a += sums_a[w];
    total_b += sums_b[w];
  }
  if (tid < n) {
    a[tid] = before_a + sa - va;
    b[tid] = before_b + sb - vb;
  }
  __syncthreads();
}

// Counting without atomics: expert e's thread counts its pairs (P <= kPlanThreads), so the plan is the
// same on every run.
__global__ void __launch_bounds__(kPlanThreads) moe_plan_kernel(MoeExpertsParams p, Plan plan) {
  extern __shared__ int smem[];
  const int n = static_cast<int>(p.n_local), P = static_cast<int>(p.T * p.top_k), tid = threadIdx.x;
  int* cnt = smem;      // [n] pairs per local expert, then its first slot
  int* used = cnt + n;  // [n] 1 if the expert got pairs, then its group index
  int* key = used + n;  // [P] local expert of pair i, or -1
  for (int i = tid; i < P; i += blockDim.x) {
    const int64_t e = p.topk_idx[i] - p.local_first;
    key[i] = e >= 0 && e < n ? static_cast<int>(e) : -1;
  }
  __syncthreads();
  for (int e = tid; e < n; e += blockDim.x) {
    int c = 0;
    for (int i = 0; i < P; ++i) c += key[i] == e;
    cnt[e] = c;
    used[e] = c > 0;
  }
  __syncthreads();
  int M = 0, G = 0;
  block_exclusive_scan2(cnt, used, n, M, G);  // cnt: first slot of the expert; used: its group index
  for (int i = tid; i < P; i += blockDim.x) {
    const int e = key[i];
    int slot = -1;
    if (e >= 0) {
      slot = cnt[e];
      for (int j = 0; j < i; ++j) slot += key[j] == e;  // earlier pairs of the same expert
      plan.pair_tok[slot] = i / static_cast<int>(p.top_k);
      plan.pair_w[slot] = p.topk_weight[i];
    }
    plan.pair_of[i] = slot;
  }
  for (int e = tid; e < n; e += blockDim.x) {
    if ((e + 1 < n ? cnt[e + 1] : M) > cnt[e]) {  // the expert got pairs
      plan.grp_expert[used[e]] = e;
      plan.grp_start[used[e]] = cnt[e];
    }
  }
  if (tid == 0) {
    plan.counts[0] = M;
    plan.counts[1] = G;
    plan.grp_start[G] = M;
  }
}

template <class W>
__device__ __forceinline__ void load8(const W* w, float (&out)[8]);
template <>
__device__ __forceinline__ void load8<float>(const float* w, float (&out)[8]) {
  const float4 a = reinterpret_cast<const float4*>(w)[0], b = reinterpret_cast<const float4*>(w)[1];
  out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w, out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
}
template <>
__device__ __forceinline__ void load8<uint16_t>(const uint16_t* w, float (&out)[8]) {
  const uint4 v = *reinterpret_cast<const uint4*>(w);
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = __uint_as_float(words[i] << 16);
    out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
  }
}

enum class Stage { GateUp, Down };

// Block (column tile, group g): y[slot, n] = sum_k x[slot, k] w_e[n, k] for the group's slots, where x is
// h[pair_tok[slot]] (GateUp: N = 2F, K = hidden) or silu(gu[slot, :F]) * gu[slot, F:] (Down: N = hidden,
// K = F). With bf16 weights x is rounded to bf16 first, as the cuBLAS path does. Lane l covers k = 8 l +
// 256 i of each K tile; each warp owns kCols columns and keeps [kMaxRows, kCols] fp32 sums.
// Dynamic shared memory: kSmemBytes.
template <class W, Stage S>
__global__ void __launch_bounds__(kWarps * 32) moe_linear_kernel(MoeExpertsParams p, Plan plan) {
  extern __shared__ __align__(16) float xs[];  // [rows, ktile]
  const int g = blockIdx.y;
  if (g >= plan.counts[1]) return;  // whole block: fewer experts got tokens than the grid allows
  const int e = plan.grp_expert[g], s0 = plan.grp_start[g], rows = plan.grp_start[g + 1] - s0;
  const int ktile = kSmemFloats / rows / 8 * 8;
  const int64_t N = S == Stage::GateUp ? 2 * p.F : p.hidden, K = S == Stage::GateUp ? p.hidden : p.F;
  const W* w = static_cast<const W*>(S == Stage::GateUp ? p.gate_up : p.down) + static_cast<int64_t>(e) * N * K;
  float* y = S == Stage::GateUp ? plan.gu : plan.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kBlockCols + warp * kCols;
  constexpr bool kRound = sizeof(W) == 2;

  float acc[kMaxRows][kCols];
#pragma unroll
  for (int r = 0; r < kMaxRows; ++r)
#pragma unroll
    for (int c = 0; c < kCols; ++c) acc[r][c] = 0.f;

  for (int64_t k0 = 0; k0 < K; k0 += ktile) {
    const int kt = static_cast<int>(K - k0 < ktile ? K - k0 : ktile);  // a multiple of 8, as K is
    if (k0 > 0) __syncthreads();                                       // the previous tile is consumed
    for (int i = tid; i < rows * kt; i += blockDim.x) {
      const int r = i / kt, k = i % kt;
      const int64_t slot = s0 + r;
      float v;
      if (S == Stage::GateUp) {
        v = p.h[static_cast<int64_t>(plan.pair_tok[slot]) * p.hidden + k0 + k];
      } else {
        const float gate = plan.gu[slot * 2 * p.F + k0 + k], up = plan.gu[slot * 2 * p.F + p.F + k0 + k];
        v = gate / (1.f + expf(-gate)) * up;
      }
      if (kRound) v = detail::bf16_bits_to_float(detail::float_to_bf16_bits(v));
      xs[r * kt + k] = v;
    }
    __syncthreads();
    for (int k = 8 * lane; k < kt; k += 256) {
      float wv[kCols][8];
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        if (n0 + c < N) {
          load8<W>(w + (n0 + c) * K + k0 + k, wv[c]);
        } else {
#pragma unroll
          for (int j = 0; j < 8; ++j) wv[c][j] = 0.f;
        }
      }
#pragma unroll
      for (int r = 0; r < kMaxRows; ++r) {
        if (r >= rows) break;  // uniform over the block
        const float4 a = *reinterpret_cast<const float4*>(&xs[r * kt + k]);
        const float4 b = *reinterpret_cast<const float4*>(&xs[r * kt + k + 4]);
        const float x[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
        for (int c = 0; c < kCols; ++c)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[r][c] = fmaf(x[j], wv[c][j], acc[r][c]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kMaxRows; ++r) {
    if (r >= rows) break;
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const float sum = detail::warp_sum(acc[r][c]);
      if (lane == 0 && n0 + c < N) y[(s0 + r) * N + n0 + c] = sum;
    }
  }
}

__global__ void moe_combine_kernel(MoeExpertsParams p, Plan plan) {
  const int64_t total = p.T * p.hidden;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / p.hidden, d = i % p.hidden;
    float sum = 0.f;
    for (int64_t k = 0; k < p.top_k; ++k) {
      const int slot = plan.pair_of[t * p.top_k + k];
      if (slot >= 0) sum = fmaf(plan.pair_w[slot], plan.y[slot * p.hidden + d], sum);
    }
    p.out[i] += sum;
  }
}

// More than 48 KiB of dynamic shared memory needs the opt-in, once per kernel and device.
template <class W, Stage S>
void opt_in_shared_memory() {
  constexpr int kMaxDevices = 64;
  static thread_local bool done[kMaxDevices] = {};
  int dev = 0;
  HELIX_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < kMaxDevices && done[dev]) return;
  HELIX_CUDA_CHECK(
      cudaFuncSetAttribute(moe_linear_kernel<W, S>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
  if (dev < kMaxDevices) done[dev] = true;
}

template <class W>
void launch_linear_stages(const MoeExpertsParams& p, const Plan& plan, StreamHandle stream) {
  // One grid row per possible group: at most min(P, n_local) experts can get tokens.
  const auto groups = static_cast<unsigned>(std::min<int64_t>(p.T * p.top_k, p.n_local));
  opt_in_shared_memory<W, Stage::GateUp>();
  opt_in_shared_memory<W, Stage::Down>();
  moe_linear_kernel<W, Stage::GateUp>
      <<<dim3(detail::grid_dim(2 * p.F, kBlockCols), groups), kWarps * 32, kSmemBytes, stream>>>(p, plan);
  HELIX_CUDA_CHECK_LAUNCH("moe_linear_kernel");
  moe_linear_kernel<W, Stage::Down>
      <<<dim3(detail::grid_dim(p.hidden, kBlockCols), groups), kWarps * 32, kSmemBytes, stream>>>(p, plan);
  HELIX_CUDA_CHECK_LAUNCH("moe_linear_kernel");
}

}  // namespace

size_t moe_experts_workspace_bytes(const MoeExpertsParams& p) {
  const size_t P = static_cast<size_t>(p.T * p.top_k);
  return align16(8) + 3 * align16(P * 4) + align16((P + 1) * 4) + align16(P * 4) +
         align16(P * 2 * static_cast<size_t>(p.F) * 4) + align16(P * static_cast<size_t>(p.hidden) * 4);
}

void launch_moe_experts(const MoeExpertsParams& p, StreamHandle stream) {
  HELIX_CHECK(moe_experts_supported(p.T, p.top_k, p.n_local, p.hidden, p.F), "moe_experts: unsupported shape T=", p.T,
              " top_k=", p.top_k, " n_local=", p.n_local, " hidden=", p.hidden, " F=", p.F,
              " (see moe_experts_supported)");
  HELIX_CHECK(
      (p.gate_up_dtype == DType::Float32 || p.gate_up_dtype == DType::BFloat16) && p.down_dtype == p.gate_up_dtype,
      "moe_experts: weights must be float32 or bfloat16, gate_up and down of one dtype");
  HELIX_CHECK(p.workspace != nullptr, "moe_experts: workspace is null");
  const Plan plan = plan_of(p);
  const size_t plan_smem = static_cast<size_t>(2 * p.n_local + p.T * p.top_k) * sizeof(int);  // <= 12 KiB
  moe_plan_kernel<<<1, kPlanThreads, plan_smem, stream>>>(p, plan);
  HELIX_CUDA_CHECK_LAUNCH("moe_plan_kernel");
  if (p.gate_up_dtype == DType::Float32) {
    launch_linear_stages<float>(p, plan, stream);
  } else {
    launch_linear_stages<uint16_t>(p, plan, stream);
  }
  moe_combine_kernel<<<std::min<unsigned>(detail::grid_dim(p.T * p.hidden, 256), 65535u), 256, 0, stream>>>(p, plan);
  HELIX_CUDA_CHECK_LAUNCH("moe_combine_kernel");
}

}  // namespace helix::cuda
