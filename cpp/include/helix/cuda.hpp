// The CUDA backend's host API. Implemented in cuda/ when built with CUDA, else by cuda/no_cuda.cpp and
// cuda/no_nccl.cpp, whose functions report that the backend is absent: every function that would touch a
// device throws helix::Error("helix was built without CUDA"); device_count() returns 0.
//
// No CUDA header is included here (cpp/ stays CUDA-free): a stream is passed as the opaque `StreamHandle`
// (the same type as cudaStream_t), and every pointer in a params struct is a device pointer.
// Launch functions validate nothing: the op boundary (bindings, engine) checks shapes once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "helix/comm.hpp"
#include "helix/dtype.hpp"
#include "helix/ops/merge_states.hpp"

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace helix::cuda {

using StreamHandle = CUstream_st*;  // nullptr is the legacy default stream

bool built_with_cuda();
// True when the CUDA backend is the SIMT emulator (cuda/ compiled as C++ and run on the CPU, docs/cuda.md).
bool emulated();
bool built_with_nccl();
// Number of visible CUDA devices; 0 without CUDA or without a GPU (never throws).
int device_count();
// Throws helix::Error unless the backend is built and at least one device is visible.
void require_device();
void set_device(int device);
// Name of the current device, e.g. "NVIDIA H100 80GB HBM3".
const char* device_name();
int multiprocessor_count();
void synchronize();

namespace detail {
// Throws helix::Error("<file>:<line>: <expr> failed: <cudaGetErrorString>") unless code == cudaSuccess.
void check_cuda(int code, const char* expr, const char* file, int line);
}  // namespace detail

}  // namespace helix::cuda

// HELIX_CUDA_CHECK(cudaMalloc(...)): every CUDA runtime call goes through this (cuda/ only).
#define HELIX_CUDA_CHECK(expr) ::helix::cuda::detail::check_cuda(static_cast<int>(expr), #expr, __FILE__, __LINE__)

namespace helix::cuda {

// An owned CUDA stream (non-blocking with respect to the default stream).
class Stream {
 public:
  Stream();
  ~Stream();
  Stream(Stream&& other) noexcept;
  Stream& operator=(Stream&& other) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  StreamHandle handle() const { return stream_; }
  void synchronize() const;

 private:
  StreamHandle stream_ = nullptr;
};

// Owned device memory (cudaMalloc / cudaFree). Size 0 holds no allocation.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t bytes() const { return bytes_; }
  // Synchronous copies (the stream is synchronized before returning). `bytes` <= this->bytes().
  void copy_from_host(const void* src, size_t bytes, StreamHandle stream = nullptr);
  void copy_to_host(void* dst, size_t bytes, StreamHandle stream = nullptr) const;
  void fill_zero(StreamHandle stream = nullptr);

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// ---- kernels --------------------------------------------------------------------------------------

// Paged MLA partial attention (the CPU twin: ops/attention.hpp). Keys of query token t come from
// sequence b = q_seq[t]: slot k of b is pool row r = block_tables[b, k / tpb] * tpb + k % tpb, whose
// global position is kv_pos[r] (positions live with the rows, so a decode step uploads no per-slot data);
// slots k < num_slots[b] are valid. Key s is visible to t iff its position <= q_pos[t].
// o[t,h] = softmax-weighted sum of kv[:, :R]; lse natural log; nothing visible gives (0, -inf). Storage bf16 (or fp32
// for the Simple kernel), accumulation fp32.
struct PagedMlaAttentionParams {
  const void* q;                // [T, H, D] of dtype
  const int64_t* q_pos;         // [T]
  const int64_t* q_seq;         // [T] in [0, B)
  const void* pool;             // [num_blocks, tokens_per_block, D] of dtype
  const int32_t* block_tables;  // [B, max_blocks]
  const int64_t* kv_pos;        // [num_blocks, tokens_per_block] position of each pool row
  const int64_t* num_slots;     // [B], each <= max_blocks * tokens_per_block
  float* o;                     // [T, H, R]
  float* lse;                   // [T, H]
  float* workspace;             // [workspace_floats(...)] split-KV partials; may be null when num_splits == 1
  int64_t T = 0, H = 0, D = 0, R = 0;
  int64_t B = 0, max_blocks = 0, tokens_per_block = 0;
  int64_t max_num_slots = 0;  // max over b of num_slots[b] (host-known; sizes the split)
  float scale = 1.f;
  int num_splits = 0;             // 0: chosen from the device's SM count; else 1..256
  DType dtype = DType::BFloat16;  // of q and pool: BFloat16 (both kernels) or Float32 (Simple only)
};

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

// LSE merge of N <= 256 partial states (contract: ops/merge_states.hpp); pointers are device pointers.
// Rows with D % 4 == 0 use 16-byte loads.
void launch_merge_states(const MergeStatesParams& p, StreamHandle stream);

// Copies n rows into the paged pool: pool row dst_rows[i] (= block * tokens_per_block + row) <- rows[i].
struct KvAppendParams {
  void* pool;               // [num_pool_rows, row_bytes] bytes (bf16 or f32 rows)
  const void* rows;         // [n, row_bytes]
  const int64_t* dst_rows;  // [n] in [0, num_pool_rows)
  int64_t n = 0, row_bytes = 0;
};
void launch_kv_append(const KvAppendParams& p, StreamHandle stream);

// out[t,:] = x[t,:] * rsqrt(mean(x[t,:]^2) + eps) * weight; fp32 math; x, weight, out of `dtype`.
struct RmsNormParams {
  const void* x;       // [T, N]
  const void* weight;  // [N]
  void* out;           // [T, N] (may alias x)
  int64_t T = 0, N = 0;
  float eps = 1e-6f;
  DType dtype = DType::Float32;  // Float32 or BFloat16
};
void launch_rms_norm(const RmsNormParams& p, StreamHandle stream);

// Interleaved-pair RoPE in place on channels [offset, offset + P) of every head:
//   (x0, x1) <- (x0 c - x1 s, x0 s + x1 c),  c = cos(pos * inv_freq[i]) * attention_factor, s likewise.
// The angle is computed in float64 (positions up to 2^20 keep full fp32 accuracy).
struct RopeParams {
  void* x;                   // [T, heads, width] of dtype
  const int64_t* positions;  // [T] global positions
  const float* inv_freq;     // [P / 2]
  int64_t T = 0, heads = 0, width = 0, offset = 0, P = 0;
  float attention_factor = 1.f;
  DType dtype = DType::Float32;  // Float32 or BFloat16
};
void launch_rope(const RopeParams& p, StreamHandle stream);

// out[t,i] = silu(gate[t,i]) * up[t,i]; rows strided so that a fused [T, 2I] gate|up buffer works.
struct SiluMulParams {
  const void* gate;  // [T, gate_stride], first I used
  const void* up;    // [T, up_stride], first I used
  void* out;         // [T, I]
  int64_t T = 0, I = 0, gate_stride = 0, up_stride = 0;
  DType dtype = DType::Float32;  // Float32 or BFloat16
};
void launch_silu_mul(const SiluMulParams& p, StreamHandle stream);

// DeepSeek noaux_tc routing (FACTS.md §3): s = sigmoid(logits); selection on s + bias; group score = sum
// of the top-2 biased scores of each of n_group groups; keep topk_group groups; top_k experts among
// them (ties: lower index); weights = s (unbiased), renormalized when norm_topk_prob, times scaling.
// Experts come out in descending biased-score order.
struct MoeRouteParams {
  const float* logits;  // [T, E] router logits (h @ gate^T) in fp32
  const float* bias;    // [E] e_score_correction_bias
  float* weights;       // [T, top_k]
  int64_t* ids;         // [T, top_k]
  int64_t T = 0, E = 0, n_group = 1, topk_group = 1, top_k = 1;
  float routed_scaling_factor = 1.f;
  bool norm_topk_prob = true;
};
// E <= 1024, n_group <= 32, E % n_group == 0, top_k <= topk_group * E / n_group.
void launch_moe_route(const MoeRouteParams& p, StreamHandle stream);

// The routed experts of a decode step on the device, with no host round trip (CPU twin: moe_experts_cpu):
//   out[t] += sum over k with local_first <= topk_idx[t,k] < local_first + n_local of
//             topk_weight[t,k] * down_e(silu(gate_e(h[t])) * up_e(h[t])),   e = topk_idx[t,k] - local_first
// Each expert that got tokens reads its weights once (a GEMV over its <= kMoeExpertsMaxTokens rows); with
// bf16 weights h and the activation are rounded to bf16 first, like the inputs of the cuBLAS path, and all
// sums are fp32. For more tokens (prefill) the engine groups them on the host and runs cuBLAS per expert.
constexpr int64_t kMoeExpertsMaxTokens = 16;
struct MoeExpertsParams {
  const float* h;            // [T, hidden]
  const int64_t* topk_idx;   // [T, top_k] global expert ids (non-local ones are skipped)
  const float* topk_weight;  // [T, top_k]
  const void* gate_up;       // [n_local, 2F, hidden] of dtype: gate rows, then up rows
  const void* down;          // [n_local, hidden, F] of dtype
  float* out;                // [T, hidden], accumulated into
  void* workspace;           // [moe_experts_workspace_bytes(p)] bytes, 16-byte aligned
  int64_t T = 0, top_k = 0, hidden = 0, F = 0, local_first = 0, n_local = 0;
  DType dtype = DType::BFloat16;  // of gate_up and down: BFloat16 or Float32
};
// The shapes launch_moe_experts takes (its plan is one block of 1024 threads; rows load 8 at a time).
inline bool moe_experts_supported(int64_t T, int64_t top_k, int64_t n_local, int64_t hidden, int64_t F) {
  return T >= 1 && T <= kMoeExpertsMaxTokens && top_k >= 1 && T * top_k <= 1024 && n_local >= 1 && n_local <= 1024 &&
         hidden >= 8 && hidden % 8 == 0 && F >= 8 && F % 8 == 0;
}
size_t moe_experts_workspace_bytes(const MoeExpertsParams& p);
void launch_moe_experts(const MoeExpertsParams& p, StreamHandle stream);

// y (+)= x @ w^T through cuBLAS (cublasGemmEx, fp32 compute). x and w share `dtype`: BFloat16 (y f32 or
// bf16) or Float32 (y f32; strict fp32, no TF32).
struct LinearParams {
  const void* x;  // [T, K] of dtype
  const void* w;  // [N, K] of dtype (PyTorch Linear layout)
  void* y;        // [T, N] of y_dtype
  int64_t T = 0, K = 0, N = 0;
  DType y_dtype = DType::Float32;  // Float32 or BFloat16
  DType dtype = DType::BFloat16;   // of x and w
  bool accumulate = false;         // y += x @ w^T instead of y =
};
bool built_with_cublas();
void linear(const LinearParams& p, StreamHandle stream);

// Per-head linear (the CUDA twin of ops/head_linear.hpp) as one strided batched GEMM:
//   y[t, h*y_head_stride + n] = sum_k w[h, n, k] * x[t, h*x_head_stride + k]   for h < H.
struct HeadLinearParams {
  const void* x;  // [T, ldx] of dtype; head h reads K values at h * x_head_stride
  const void* w;  // [H, N, K] of dtype
  float* y;       // [T, ldy] f32; head h writes N values at h * y_head_stride
  int64_t T = 0, H = 0, N = 0, K = 0, ldx = 0, x_head_stride = 0, ldy = 0, y_head_stride = 0;
  DType dtype = DType::BFloat16;  // Float32 or BFloat16
};
void head_linear(const HeadLinearParams& p, StreamHandle stream);

// ---- NCCL ---------------------------------------------------------------------------------------

constexpr size_t kNcclUniqueIdBytes = 128;  // sizeof(ncclUniqueId)
struct NcclUniqueId {
  unsigned char bytes[kNcclUniqueIdBytes];
};
NcclUniqueId nccl_unique_id();
// An NCCL communicator of `size` ranks from an id every rank holds. Buffers passed to it are device
// pointers; every collective runs on `stream` and returns after the stream has finished it, or, when
// stream_ordered, as soon as it is enqueued (later work on `stream` sees the result; the host after a
// stream synchronize; no host round trip per collective).
std::unique_ptr<Communicator> make_nccl_communicator(int rank, int size, const NcclUniqueId& id, StreamHandle stream,
                                                     bool stream_ordered = false);
// Collective over `bootstrap`: rank 0 makes the id and broadcasts it over the host communicator;
// the NCCL communicator has bootstrap's rank and size.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, StreamHandle stream,
                                                     bool stream_ordered = false);
// For host callers (Python, tests): an NCCL communicator over bootstrap's ranks whose buffers are HOST
// pointers, staged through device memory on its own stream. Collective over `bootstrap`; the current
// device must be set first.
std::unique_ptr<Communicator> make_nccl_host_communicator(Communicator& bootstrap);

// Device buffers over a host communicator (e.g. MPI): each collective is staged through host memory on
// `stream` (cuda/host_staged_comm.cu). For ranks sharing a GPU, where NCCL cannot run. Owns `host`.
std::unique_ptr<Communicator> make_host_staged_communicator(std::unique_ptr<Communicator> host, StreamHandle stream);

// ---- benchmarks (device-resident data, timed with CUDA events) ----------------------------------

struct BenchResult {
  double ms = 0;     // mean time per call
  double bytes = 0;  // bytes that must move per call
  double flops = 0;  // floating-point operations per call
};
// Device-to-device copy of `bytes` (read + write counted) with a vectorized copy kernel.
BenchResult bench_copy(size_t bytes, int iters);
// Square-ish bf16 GEMM (fp32 accumulate) through cuBLAS: [m, k] x [k, n].
BenchResult bench_gemm_bf16(int64_t m, int64_t n, int64_t k, int iters);
// Decode partial attention: `batch` sequences of `context` keys, one query token each, block 64;
// num_splits 0 = the launch's own plan. Inputs rotate among copies spanning 256 MiB (never L2-resident).
BenchResult bench_paged_mla_attention(int64_t batch, int64_t context, int64_t heads, int64_t D, int64_t R,
                                      AttentionKernel kernel, int iters, int num_splits = 0);
BenchResult bench_merge_states(int64_t N, int64_t M, int64_t D, int iters);
// launch_moe_experts on bf16 weights: token t takes local experts (t * top_k + k) % n_local, so
// min(T * top_k, n_local) experts are read per call (bytes: their weights; FLOPs: 6 hidden F per pair).
BenchResult bench_moe_experts(int64_t T, int64_t top_k, int64_t n_local, int64_t hidden, int64_t F, int iters);

}  // namespace helix::cuda
