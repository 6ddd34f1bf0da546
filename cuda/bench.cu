// Benchmarks on device-resident data, timed with CUDA events (warm-up call first, then `iters` calls).
// Each result carries the bytes that must move and the FLOPs of one call, so callers can compare the
// achieved rates with ceilings measured in the same run (bench_copy, bench_gemm_bf16).
#include <algorithm>
#include <functional>
#include <vector>

#include "bench.hpp"
#include "common.cuh"
#include "helix/ops/linear.hpp"
#include "helix/ops/merge_states.hpp"
#include "helix/ops/moe_experts.hpp"

namespace helix::cuda {

namespace {

__global__ void copy_kernel(const uint4* __restrict__ src, uint4* __restrict__ dst, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = src[i];
  }
}

// Deterministic pseudo-random fill: bf16 values in [-1, 1) (keys, queries) or fp32 (partials, LSE).
__global__ void fill_bf16_kernel(uint16_t* x, int64_t n, uint32_t seed, float scale) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    x[i] = detail::float_to_bf16_bits(scale * ((h & 0xffffff) / 8388608.f - 1.f));
  }
}

__global__ void fill_f32_kernel(float* x, int64_t n, uint32_t seed, float scale) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    x[i] = scale * ((h & 0xffffff) / 8388608.f - 1.f);
  }
}

void fill_bf16(DeviceBuffer& b, uint32_t seed, float scale) {
  fill_bf16_kernel<<<1024, 256>>>(b.as<uint16_t>(), static_cast<int64_t>(b.bytes() / 2), seed, scale);
  HELIX_CUDA_CHECK_LAUNCH("fill_bf16_kernel");
}

void fill_f32(DeviceBuffer& b, uint32_t seed, float scale) {
  fill_f32_kernel<<<1024, 256>>>(b.as<float>(), static_cast<int64_t>(b.bytes() / 4), seed, scale);
  HELIX_CUDA_CHECK_LAUNCH("fill_f32_kernel");
}

// Mean milliseconds of `fn` over `iters` launches on the default stream.
double time_ms(const std::function<void()>& fn, int iters) {
  iters = std::max(iters, 1);
  fn();  // warm-up (also surfaces launch errors before timing)
  HELIX_CUDA_CHECK(cudaDeviceSynchronize());
  cudaEvent_t start, stop;
  HELIX_CUDA_CHECK(cudaEventCreate(&start));
  HELIX_CUDA_CHECK(cudaEventCreate(&stop));
  HELIX_CUDA_CHECK(cudaEventRecord(start));
  for (int i = 0; i < iters; ++i) fn();
  HELIX_CUDA_CHECK(cudaEventRecord(stop));
  HELIX_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0.f;
  HELIX_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return static_cast<double>(ms) / iters;
}

// Inputs smaller than the L2 cache (50 MB on H100, 60 MB on H200) would be timed from the cache when
// one buffer is reused: the attention and merge benchmarks rotate among enough copies to span this.
constexpr size_t kRotateBytes = size_t{256} << 20;
int64_t copies_for(size_t bytes) {
  return std::max<int64_t>(1, static_cast<int64_t>((kRotateBytes + bytes - 1) / std::max<size_t>(bytes, 1)));
}

}  // namespace

BenchResult bench_copy(size_t bytes, int iters) {
  require_device();
  bytes = bytes / 16 * 16;
  DeviceBuffer src(bytes), dst(bytes);
  src.fill_zero();
  const int64_t n = static_cast<int64_t>(bytes / 16);
  const unsigned grid = static_cast<unsigned>(4 * multiprocessor_count());
  BenchResult r;
  r.ms = time_ms([&] { copy_kernel<<<grid, 512>>>(src.as<uint4>(), dst.as<uint4>(), n); }, iters);
  HELIX_CUDA_CHECK_LAUNCH("copy_kernel");
  r.bytes = 2.0 * static_cast<double>(bytes);
  return r;
}

BenchResult bench_gemm_bf16(int64_t m, int64_t n, int64_t k, int iters) {
  require_device();
  DeviceBuffer x(m * k * 2), w(n * k * 2), y(m * n * 2);
  fill_bf16(x, 1, 1.f);
  fill_bf16(w, 2, 1.f);
  LinearParams p;
  p.x = x.as<bf16_t>();
  p.w = w.as<bf16_t>();
  p.y = y.data();
  p.T = m;
  p.N = n;
  p.K = k;
  p.ldx = k;
  p.ldy = n;
  p.x_dtype = p.w_dtype = p.y_dtype = DType::BFloat16;
  BenchResult r;
  r.ms = time_ms([&] { launch_linear(p, nullptr); }, iters);
  r.flops = 2.0 * m * n * k;
  r.bytes = 2.0 * (m * k + n * k + m * n);
  return r;
}

BenchResult bench_paged_mla_attention(int64_t batch, int64_t context, int64_t heads, int64_t D, int64_t R,
                                      AttentionKernel kernel, int iters, int num_splits) {
  require_device();
  constexpr int64_t kBlock = 64;
  const int64_t blocks_per_seq = (context + kBlock - 1) / kBlock;
  const int64_t num_blocks = batch * blocks_per_seq;
  // `copies` caches in one pool; launch i reads copy i % copies through its own block tables.
  const int64_t copies = copies_for(static_cast<size_t>(num_blocks * kBlock * D * 2));
  DeviceBuffer q(batch * heads * D * 2), pool(copies * num_blocks * kBlock * D * 2);
  fill_bf16(q, 3, 1.f);
  fill_bf16(pool, 4, 1.f);
  // Host-made tables: in copy c, sequence b owns blocks c * num_blocks + [b * blocks_per_seq, ...); slot k
  // has position k, so pool row r holds position r % (blocks_per_seq * kBlock).
  std::vector<int32_t> tables(copies * num_blocks);
  for (int64_t i = 0; i < copies * num_blocks; ++i) tables[i] = static_cast<int32_t>(i);
  std::vector<int64_t> kv_pos(copies * num_blocks * kBlock), num_slots(batch, context), q_pos(batch, context - 1),
      q_seq(batch);
  for (int64_t r = 0; r < static_cast<int64_t>(kv_pos.size()); ++r) kv_pos[r] = r % (blocks_per_seq * kBlock);
  for (int64_t b = 0; b < batch; ++b) q_seq[b] = b;
  DeviceBuffer d_tables(tables.size() * 4), d_kv_pos(kv_pos.size() * 8), d_num_slots(batch * 8), d_q_pos(batch * 8),
      d_q_seq(batch * 8), o(batch * heads * R * 4), lse(batch * heads * 4);
  d_tables.copy_from_host(tables.data(), tables.size() * 4);
  d_kv_pos.copy_from_host(kv_pos.data(), kv_pos.size() * 8);
  d_num_slots.copy_from_host(num_slots.data(), num_slots.size() * 8);
  d_q_pos.copy_from_host(q_pos.data(), q_pos.size() * 8);
  d_q_seq.copy_from_host(q_seq.data(), q_seq.size() * 8);
  PagedMlaAttentionParams p;
  p.q = q.as<bf16_t>();
  p.q_pos = d_q_pos.as<int64_t>();
  p.q_seq = d_q_seq.as<int64_t>();
  p.pool = pool.as<bf16_t>();
  p.block_tables = d_tables.as<int32_t>();
  p.kv_pos = d_kv_pos.as<int64_t>();
  p.num_slots = d_num_slots.as<int64_t>();
  p.o = o.as<float>();
  p.lse = lse.as<float>();
  p.T = batch;
  p.H = heads;
  p.D = D;
  p.R = R;
  p.B = batch;
  p.max_blocks = blocks_per_seq;
  p.tokens_per_block = kBlock;
  p.max_num_slots = context;
  p.scale = 1.f / 24.f;
  p.num_splits = num_splits;
  DeviceBuffer ws(static_cast<size_t>(attention_workspace_floats(p)) * 4);
  p.workspace = ws.as<float>();
  BenchResult r;
  int64_t launch = 0;
  r.ms = time_ms(
      [&] {
        p.block_tables = d_tables.as<int32_t>() + (launch++ % copies) * num_blocks;
        launch_paged_mla_attention(p, kernel, nullptr);
      },
      iters);
  // Must move: every key once (bf16; not its 8-byte position, which a decode-only kernel could skip), the
  // queries and the outputs. FLOPs: QK^T over D and PV over R.
  r.bytes = 2.0 * batch * context * D + 2.0 * batch * heads * D + 4.0 * batch * heads * (R + 1);
  r.flops = 2.0 * batch * heads * context * (D + R);
  return r;
}

BenchResult bench_merge_states(int64_t N, int64_t M, int64_t D, int iters) {
  require_device();
  const int64_t copies = copies_for(static_cast<size_t>(N * M * (D + 1) * 4));  // see bench_paged_mla_attention
  DeviceBuffer o_parts(copies * N * M * D * 4), lse_parts(copies * N * M * 4), o(M * D * 4), lse(M * 4);
  fill_f32(o_parts, 5, 1.f);
  fill_f32(lse_parts, 6, 4.f);
  MergeStatesParams p;
  p.o = o.as<float>();
  p.lse = lse.as<float>();
  p.N = N;
  p.M = M;
  p.D = D;
  BenchResult r;
  int64_t launch = 0;
  r.ms = time_ms(
      [&] {
        const int64_t c = launch++ % copies;
        p.o_parts = o_parts.as<float>() + c * N * M * D;
        p.lse_parts = lse_parts.as<float>() + c * N * M;
        launch_merge_states(p, nullptr);
      },
      iters);
  r.bytes = 4.0 * (N * M * D + N * M + M * D + M);
  return r;
}

BenchResult bench_moe_experts(int64_t T, int64_t top_k, int64_t n_local, int64_t hidden, int64_t F, int iters) {
  require_device();
  HELIX_CHECK(moe_experts_supported(T, top_k, n_local, hidden, F) && top_k <= n_local,
              "bench_moe_experts: unsupported shape");
  DeviceBuffer h(T * hidden * 4), w(T * top_k * 4), out(T * hidden * 4), idx(T * top_k * 4),
      gate_up(n_local * 2 * F * hidden * 2), down(n_local * hidden * F * 2);
  fill_f32(h, 7, 1.f);
  fill_f32(w, 8, 1.f);
  fill_bf16(gate_up, 9, 0.02f);
  fill_bf16(down, 10, 0.02f);
  std::vector<int32_t> ids(static_cast<size_t>(T * top_k));
  for (int64_t i = 0; i < T * top_k; ++i) ids[static_cast<size_t>(i)] = static_cast<int32_t>(i % n_local);
  idx.copy_from_host(ids.data(), ids.size() * 4);  // (t * top_k + k) % n_local
  MoeExpertsParams p;
  p.h = h.as<float>();
  p.topk_idx = idx.as<int32_t>();
  p.topk_weight = w.as<float>();
  p.gate_up = gate_up.data();
  p.down = down.data();
  p.out = out.as<float>();
  p.T = T;
  p.top_k = top_k;
  p.hidden = hidden;
  p.F = F;
  p.n_local = n_local;
  p.gate_up_dtype = p.down_dtype = DType::BFloat16;
  DeviceBuffer ws(moe_experts_workspace_bytes(p));
  p.workspace = ws.data();
  BenchResult r;
  r.ms = time_ms([&] { launch_moe_experts(p, nullptr); }, iters);
  const double experts = static_cast<double>(std::min(T * top_k, n_local));
  r.bytes = experts * 3.0 * hidden * F * 2 + 8.0 * T * hidden;
  r.flops = 6.0 * T * top_k * hidden * F;
  return r;
}

}  // namespace helix::cuda
