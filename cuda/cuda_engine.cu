// The CUDA decoder engine (contract: cpp/include/helix/cuda_engine.hpp; the CPU twin: cpp/src/engine.cpp).
//
// One step, all on the engine's stream: embedding (vocabulary shard, all-reduce), then per layer
//   RMSNorm -> q_a / q_b (or q_proj) and kv_a (cuBLAS) -> kv_a_layernorm, RoPE -> W_UK absorb (batched
//   GEMM) -> append the owned latent rows to the device pool -> paged partial attention over the local
//   shard -> [W_UV] -> pack (o, lse) per destination -> ONE all-to-all over the CP group (NCCL) ->
//   merge_states -> [W_UV] -> o_proj -> all-reduce -> residual; FFN: dense MLP, or router + moe_route +
//   the routed experts (host-side grouping of the routed tokens, one GEMM pair per local expert that got
//   tokens) + shared experts -> all-reduce -> residual;
// then the final norm of the logit rows, the vocabulary-sharded lm_head and the all-gather of the logits.
// Activations are fp32; a linear with bf16 weights reads a bf16 copy of its input (fp32 accumulation).
// Non-finite hidden states are flagged on the device and reported after the step with the layer and the
// sub-block, like the CPU engine.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "common.cuh"
#include "helix/cuda_engine.hpp"
#include "helix/engine_common.hpp"
#include "helix/ops/attention.hpp"
#include "helix/ops/embedding.hpp"
#include "helix/ops/head_linear.hpp"
#include "helix/ops/kv_append.hpp"
#include "helix/ops/linear.hpp"
#include "helix/ops/merge_states.hpp"
#include "helix/ops/moe_experts.hpp"
#include "helix/ops/moe_route.hpp"
#include "helix/ops/rms_norm.hpp"
#include "helix/ops/rope.hpp"
#include "helix/ops/silu_mul.hpp"

namespace helix::cuda {

namespace {

using detail::load_as_float;
using detail::store_float;

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) {
  return std::min<unsigned>(detail::grid_dim(std::max<int64_t>(n, 1), kThreads), 65535u);
}

// ---- small kernels of the engine -------------------------------------------------------------------

// y[i] = bf16(x[i])
__global__ void to_bf16_kernel(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    y[i] = detail::float_to_bf16_bits(x[i]);
  }
}

// h += y; *flag = 1 when a result is NaN or Inf.
__global__ void add_residual_kernel(float* h, const float* y, int64_t n, int* flag) {
  bool bad = false;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = h[i] + y[i];
    h[i] = v;
    bad |= !isfinite(v);
  }
  if (bad) *flag = 1;
}

// Router logits that are not finite become 0 (so routing stays in bounds) and raise *flag: the step
// then fails with the layer named, as the CPU engine fails on the hidden state.
__global__ void sanitize_kernel(float* x, int64_t n, int* flag) {
  bool bad = false;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (!isfinite(x[i])) {
      x[i] = 0.f;
      bad = true;
    }
  }
  if (bad) *flag = 1;
}

// dst[i, :] = src[rows[i], :] (width elements, src rows ld apart).
template <class T, class Index>
__global__ void gather_rows_kernel(const T* src, const Index* rows, T* dst, int64_t n, int64_t width, int64_t ld) {
  const int64_t total = n * width;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / width, d = i % width;
    dst[i] = src[static_cast<int64_t>(rows[r]) * ld + d];
  }
}

// pool_pos[rows[i]] = pos[src ? src[i] : i]: the global positions of newly filled pool rows.
__global__ void set_positions_kernel(int64_t* pool_pos, const int64_t* rows, const int64_t* src, const int64_t* pos,
                                     int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    pool_pos[rows[i]] = pos[src ? src[i] : i];
  }
}

// y[tok[i], :] += w[i] * src[i, :]; the tok[i] of one launch are distinct (a token meets an expert once).
__global__ void scatter_add_weighted_kernel(float* y, const float* src, const int32_t* tok, const float* w, int64_t n,
                                            int64_t width) {
  const int64_t total = n * width;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / width, d = i % width;
    y[static_cast<int64_t>(tok[r]) * width + d] += w[r] * src[i];
  }
}

// Pool rows rows[i] (= block * tokens_per_block + row) of width D: uniform values in [-scale, scale) from a
// hash of (seed, pool row, d), so that a filled cache is the same on every run.
template <class T>
__global__ void fill_random_kernel(T* pool, const int64_t* rows, int64_t n, int64_t D, uint64_t seed, float scale) {
  const int64_t total = n * D;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = rows[i / D], d = i % D;
    uint64_t x = seed ^ (static_cast<uint64_t>(r) * 0x9E3779B97F4A7C15ull) ^ (static_cast<uint64_t>(d) << 32);
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    const float u = static_cast<float>(x >> 40) * (1.f / 16777216.f);  // [0, 1)
    store_float(pool, r * D + d, (2.f * u - 1.f) * scale);
  }
}

// ---- device memory helpers ---------------------------------------------------------------------------

struct DeviceWeight {
  DType dtype = DType::Float32;
  std::vector<int64_t> shape;
  DeviceBuffer buf;
  const void* data() const { return buf.data(); }
  const float* f32() const { return buf.as<float>(); }
};

// A device buffer that only grows. Growing first waits for the device: a queued kernel may still read
// the old buffer, and no documented rule makes cudaFree wait for it. Growth happens in the first steps.
class Scratch {
 public:
  void* get(size_t bytes) {
    if (bytes > buf_.bytes()) {
      if (buf_.bytes() > 0) HELIX_CUDA_CHECK(cudaDeviceSynchronize());
      const size_t grown = std::max(bytes, 2 * buf_.bytes());
      buf_ = DeviceBuffer();  // the old buffer goes first: its memory may be what the new one needs
      try {
        try {
          buf_ = DeviceBuffer(grown);
        } catch (const DeviceMemoryError&) {
          if (grown == bytes) throw;
          buf_ = DeviceBuffer(bytes);  // no room for the doubling: exactly what is asked
        }
      } catch (const DeviceMemoryError& e) {
        throw DeviceMemoryError(::helix::detail::concat(
            "a step's workspace (", ::helix::detail::human_bytes(static_cast<double>(bytes)),
            ") does not fit on the GPU: ", e.what(), ". Fewer tokens per step (max_batch_tokens) need less"));
      }
    }
    return buf_.data();
  }
  template <class T>
  T* as(int64_t count) {
    return static_cast<T*>(get(static_cast<size_t>(std::max<int64_t>(count, 1)) * sizeof(T)));
  }
  size_t bytes() const { return buf_.bytes(); }

 private:
  DeviceBuffer buf_;
};

// Host arrays packed into one staging vector and uploaded with one copy; offsets are 16-byte aligned.
class Upload {
 public:
  template <class T>
  size_t add(const T* data, int64_t count) {
    const size_t off = (bytes_.size() + 15) & ~size_t{15};
    bytes_.resize(off + static_cast<size_t>(count) * sizeof(T));
    if (count > 0) std::memcpy(bytes_.data() + off, data, static_cast<size_t>(count) * sizeof(T));
    return off;
  }
  // Copies to `dst` (grown as needed) on `stream`; returns the device base. The bytes must stay alive
  // until the stream has run the copy: cudaMemcpyAsync from pageable memory may return before it has
  // read them (CUDA "API synchronization behavior"), so keep this object until a stream synchronize.
  void clear() { bytes_.clear(); }
  unsigned char* send(Scratch& dst, StreamHandle stream) {
    auto* base = static_cast<unsigned char*>(dst.get(std::max<size_t>(bytes_.size(), 16)));
    if (!bytes_.empty()) {
      HELIX_CUDA_CHECK(cudaMemcpyAsync(base, bytes_.data(), bytes_.size(), cudaMemcpyHostToDevice, stream));
    }
    return base;
  }

 private:
  std::vector<unsigned char> bytes_;
};

// Component times from CUDA events: mark(acc) charges the time since the previous mark to *acc.
class StepTimer {
 public:
  ~StepTimer() {
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }
  void start(StreamHandle stream) {
    used_ = 0;
    charges_.clear();
    record(stream);
  }
  void mark(StreamHandle stream, double* acc) {
    record(stream);
    charges_.push_back(acc);
  }
  // After the stream has finished: adds every interval to its component.
  void collect() {
    for (size_t i = 0; i < charges_.size(); ++i) {
      float ms = 0.f;
      HELIX_CUDA_CHECK(cudaEventElapsedTime(&ms, events_[i], events_[i + 1]));
      *charges_[i] += ms * 1e-3;
    }
  }

 private:
  void record(StreamHandle stream) {
    if (used_ == events_.size()) {
      cudaEvent_t e = nullptr;
      HELIX_CUDA_CHECK(cudaEventCreate(&e));
      events_.push_back(e);
    }
    HELIX_CUDA_CHECK(cudaEventRecord(events_[used_++], stream));
  }
  std::vector<cudaEvent_t> events_;
  std::vector<double*> charges_;
  size_t used_ = 0;
};

}  // namespace

struct CudaEngine::Impl {
  EngineConfig config;
  int device = 0;
  Stream stream;
  std::unique_ptr<Communicator> world_comm, cp_comm;  // NCCL (null for a single rank / cp == 1)
  std::map<std::string, ExpectedWeight> expected;
  std::map<std::string, DeviceWeight> weights;
  std::unique_ptr<BlockTable> table;  // host bookkeeping shared by all layers (the same slots in every pool)
  std::vector<DeviceBuffer> pools;    // per layer: [num_kv_blocks, tokens_per_block, D] of kv_dtype
  DeviceBuffer pool_pos;              // int64 [num_kv_blocks, tokens_per_block]: global position of each row
  EngineTimings timings;
  StepTimer timer;
  DeviceBuffer flags;  // int32 [3 * num_layers]: per layer attention residual, router, FFN residual
  // Workspaces (grown on demand).
  Scratch meta_dev, ckv, app_rows, h, x, q, qa, kva, kv_rows, q_abs, q_att, o_part, lse_part, values, send, recv,
      o_parts, lse_parts, lse_out, attn, attn_v, y, gu, act, bf16_in, router, route_w, route_ids, attn_ws, moe_meta,
      moe_ws, xe, ye, logits_local, logits_all;
  Upload moe_upload;  // host staging of one MoE layer's token lists (kept until the stream has copied it)

  Impl(const EngineConfig& c, int dev) : config(c), device(dev), stream((set_device(dev), Stream())) {}

  const DeviceWeight& w(const std::string& name) const { return weights.at(name); }
  const DeviceWeight& lw(int64_t layer, const char* name) const { return w(layer_weight_name(layer, name)); }
  StreamHandle s() const { return stream.handle(); }

  // The input of a GEMM in the weight's dtype: x itself (f32) or a bf16 copy in `bf16_in`.
  const void* as_input(const float* x, int64_t n, DType dtype) {
    if (dtype == DType::Float32) return x;
    auto* y = bf16_in.as<uint16_t>(n);
    to_bf16_kernel<<<blocks_for(n), kThreads, 0, s()>>>(x, y, n);
    HELIX_CUDA_CHECK_LAUNCH("to_bf16_kernel");
    return y;
  }

  // y[T, N] (+)= x[T, K] @ w[N, K]^T; w_offset_elems selects a sub-matrix (an expert).
  void linear(const float* x, int64_t T, int64_t K, const DeviceWeight& wt, int64_t N, float* y, bool accumulate,
              int64_t w_offset_elems = 0) {
    LinearParams p;
    p.x = as_input(x, T * K, wt.dtype);
    p.w = static_cast<const unsigned char*>(wt.data()) + w_offset_elems * dtype_size(wt.dtype);
    p.y = y;
    p.T = T;
    p.K = K;
    p.N = N;
    p.ldx = K;
    p.ldy = N;
    p.x_dtype = p.w_dtype = wt.dtype;
    p.accumulate = accumulate;
    launch_linear(p, s());
  }

  // Per-head linear over H heads starting at first_head of w [H_all, N, K]; x rows ldx apart (elements).
  void head_linear(const float* x, int64_t T, int64_t ldx, int64_t x_head_stride, const DeviceWeight& wt, int64_t H,
                   int64_t N, int64_t K, float* y, int64_t ldy, int64_t y_head_stride, int64_t first_head) {
    HeadLinearParams p;
    p.x = as_input(x, T * ldx, wt.dtype);
    p.w = static_cast<const unsigned char*>(wt.data()) + first_head * N * K * dtype_size(wt.dtype);
    p.y = y;
    p.T = T;
    p.H = H;
    p.N = N;
    p.K = K;
    p.ldx = ldx;
    p.x_head_stride = x_head_stride;
    p.ldy = ldy;
    p.y_head_stride = y_head_stride;
    p.x_dtype = p.w_dtype = wt.dtype;
    launch_head_linear(p, s());
  }

  void rms_norm(const float* x, const float* wt, float* out, int64_t T, int64_t D, int64_t ld) {
    launch_rms_norm(RmsNormParams{x, wt, out, T, D, ld, ld, config.rms_norm_eps, DType::Float32}, s());
  }

  void all_reduce(float* buf, int64_t count) {
    if (world_comm) world_comm->all_reduce_sum(buf, count, DType::Float32);
  }

  void add_residual(float* hh, const float* yy, int64_t n, int flag_index) {
    add_residual_kernel<<<blocks_for(n), kThreads, 0, s()>>>(hh, yy, n, flags.as<int>() + flag_index);
    HELIX_CUDA_CHECK_LAUNCH("add_residual_kernel");
  }

  // Throws for the first flagged (layer, block) in layer order, as the CPU engine would have.
  void check_flags(const std::vector<int>& f) const {
    for (int64_t l = 0; l < config.num_layers; ++l) {
      HELIX_CHECK(!f[3 * l], "non-finite hidden state (NaN or Inf) after the attention of layer ", l, " on rank ",
                  config.rank);
      HELIX_CHECK(!f[3 * l + 1], "non-finite router logits (NaN or Inf) in layer ", l, " on rank ", config.rank);
      HELIX_CHECK(!f[3 * l + 2], "non-finite hidden state (NaN or Inf) after the FFN of layer ", l, " on rank ",
                  config.rank);
    }
  }
  std::vector<int> read_flags() {
    std::vector<int> f(static_cast<size_t>(3 * config.num_layers));
    flags.copy_to_host(f.data(), f.size() * sizeof(int), s());
    return f;
  }

  // The layers of a validated, committed step (new_rows [T] from BlockTable::commit_step).
  void forward(const TensorView& tokens, const StepTokens& step, const int64_t* new_rows, const TensorView& logit_rows,
               const TensorView& logits);
  void fill_rows_random(const std::vector<int64_t>& rows, const std::vector<int64_t>& pos, uint64_t seed, float scale);
  void moe_ffn(int64_t l, int64_t T, float* yy);
  void moe_experts_on_host(int64_t l, int64_t T, const float* xx, const MoeRouteParams& rp, int64_t n_local, int64_t Fe,
                           int64_t first, float* yy);
  void shared_experts(int64_t l, int64_t T, const float* xx, float* yy);
  void swiglu_mlp(int64_t l, const std::string& mlp, int64_t T, int64_t F, const float* xx, float* yy, bool accumulate);
  void dense_ffn(int64_t l, int64_t T, float* yy);
};

CudaEngine::CudaEngine(const EngineConfig& config, Communicator& world, int device, CudaComm comm) {
  validate_engine_config(config);
  check_engine_world(config, world);
  HELIX_CHECK_ARG(config.n_routed_experts == 0 || (config.n_routed_experts <= 1024 && config.n_group <= 32),
                  "CudaEngine: the CUDA MoE router handles at most 1024 routed experts in at most 32 groups, got ",
                  config.n_routed_experts, " experts in ", config.n_group, " groups (use device 'cpu')");
  HELIX_CHECK_ARG(device >= 0, "argument 'device' must be >= 0, got ", device);
  require_device();
  HELIX_CHECK_ARG(device < device_count(), "argument 'device' is ", device, " but ", device_count(),
                  " CUDA devices are visible");
  impl_ = std::make_unique<Impl>(config, device);
  Impl& m = *impl_;
  const EngineConfig& c = m.config;
  if (c.world() > 1) {
    // Stream-ordered NCCL: every consumer of a collective's result is later work on the engine's stream.
    m.world_comm = comm == CudaComm::Nccl ? make_nccl_communicator(world, m.s(), /*stream_ordered=*/true)
                                          : make_host_staged_communicator(world.split(0, c.rank), m.s());
    if (c.cp > 1) {
      const int64_t tp_rank = c.rank / c.cp, cp_rank = c.rank % c.cp;
      m.cp_comm = m.world_comm->split(static_cast<int>(tp_rank), static_cast<int>(cp_rank));
    }
  }
  const int64_t D = c.kv_lora_rank + c.qk_rope_head_dim;
  m.table = std::make_unique<BlockTable>(c.num_kv_blocks, c.tokens_per_block, c.rank % c.cp, c.cp);
  const size_t pool_bytes = static_cast<size_t>(c.num_kv_blocks * c.tokens_per_block * D * dtype_size(c.kv_dtype));
  try {
    for (int64_t l = 0; l < c.num_layers; ++l) {
      m.pools.emplace_back(pool_bytes);
      m.pools.back().fill_zero(m.s());
    }
    m.pool_pos = DeviceBuffer(static_cast<size_t>(c.num_kv_blocks * c.tokens_per_block) * sizeof(int64_t));
  } catch (const DeviceMemoryError& e) {
    throw DeviceMemoryError(::helix::detail::concat(
        "rank ", c.rank, ": the KV cache (", c.num_layers, " layers x ", c.num_kv_blocks, " blocks x ",
        c.tokens_per_block, " tokens x ", D, " ", dtype_name(c.kv_dtype), " = ",
        ::helix::detail::human_bytes(static_cast<double>(pool_bytes) * static_cast<double>(c.num_layers)),
        ") does not fit on the GPU: ", e.what(), ". Lower max_tokens, or use more CP ranks"));
  }
  m.flags = DeviceBuffer(static_cast<size_t>(3 * c.num_layers) * sizeof(int));
  m.expected = expected_weight_shapes(c);
  m.stream.synchronize();
}

CudaEngine::~CudaEngine() {
  if (impl_) cudaSetDevice(impl_->device);  // frees below must target the engine's device; never throws
}

const EngineConfig& CudaEngine::config() const { return impl_->config; }
const EngineTimings& CudaEngine::timings() const { return impl_->timings; }
int CudaEngine::device() const { return impl_->device; }

int64_t CudaEngine::device_bytes() const {
  const Impl& m = *impl_;
  int64_t total = 0;
  for (const auto& [n, wt] : m.weights) total += static_cast<int64_t>(wt.buf.bytes());
  for (const auto& p : m.pools) total += static_cast<int64_t>(p.bytes());
  total += static_cast<int64_t>(m.pool_pos.bytes() + m.flags.bytes());
  for (const Scratch* s :
       {&m.meta_dev, &m.ckv,          &m.app_rows,  &m.h,         &m.x,        &m.q,        &m.qa,     &m.kva,
        &m.kv_rows,  &m.q_abs,        &m.q_att,     &m.o_part,    &m.lse_part, &m.values,   &m.send,   &m.recv,
        &m.o_parts,  &m.lse_parts,    &m.lse_out,   &m.attn,      &m.attn_v,   &m.y,        &m.gu,     &m.act,
        &m.bf16_in,  &m.router,       &m.route_w,   &m.route_ids, &m.attn_ws,  &m.moe_meta, &m.moe_ws, &m.xe,
        &m.ye,       &m.logits_local, &m.logits_all}) {
    total += static_cast<int64_t>(s->bytes());
  }
  return total;
}

std::vector<std::string> CudaEngine::expected_weights() const {
  std::vector<std::string> names;
  for (const auto& [n, e] : impl_->expected) names.push_back(n);
  return names;
}

void CudaEngine::set_weight(const std::string& name, const TensorView& w) {
  Impl& m = *impl_;
  check_engine_weight(m.expected, name, w);
  set_device(m.device);
  DeviceWeight dst;
  dst.dtype = w.dtype;
  dst.shape = w.shape;
  try {
    dst.buf = DeviceBuffer(static_cast<size_t>(std::max<int64_t>(w.nbytes(), 1)));
  } catch (const DeviceMemoryError& e) {
    throw DeviceMemoryError(::helix::detail::concat(
        "rank ", m.config.rank, ": weight '", name, "' ", shape_str(w.shape), " ", dtype_name(w.dtype), " (",
        ::helix::detail::human_bytes(static_cast<double>(w.nbytes())), ") does not fit on the GPU after ",
        ::helix::detail::human_bytes(static_cast<double>(device_bytes())), " of weights, KV cache and workspaces: ",
        e.what(), ". Use more ranks (tp, cp), bfloat16 weights, or a smaller max_tokens"));
  }
  dst.buf.copy_from_host(w.data, static_cast<size_t>(w.nbytes()), m.s());
  m.weights[name] = std::move(dst);
}

void CudaEngine::check_weights() const {
  for (const auto& [n, e] : impl_->expected) {
    HELIX_CHECK(impl_->weights.count(n), "weight '", n, "' was never set on rank ", impl_->config.rank);
  }
}

void CudaEngine::add_sequence(int64_t seq_id, int64_t reserve_tokens) {
  impl_->table->add_sequence(seq_id, reserve_tokens);
}

void CudaEngine::free_sequence(int64_t seq_id) { impl_->table->free_sequence(seq_id); }

int64_t CudaEngine::num_free_blocks() const { return impl_->table->num_free_blocks(); }
int64_t CudaEngine::num_kv_blocks() const { return impl_->config.num_kv_blocks; }
const BlockTable& CudaEngine::block_table() const { return *impl_->table; }

void CudaEngine::fill_sequence_random(int64_t seq_id, int64_t num_tokens, uint64_t seed, float scale) {
  Impl& m = *impl_;
  BlockTable& table = *m.table;
  set_device(m.device);
  StepPlan plan;
  const std::vector<int64_t> new_rows = commit_fill(table, seq_id, num_tokens, plan);
  try {
    std::vector<int64_t> rows, pos;  // the pool rows this rank fills and their positions
    for (int64_t p = 0; p < num_tokens; ++p) {
      if (new_rows[p] < 0) continue;
      rows.push_back(new_rows[p]);
      pos.push_back(p);
    }
    m.fill_rows_random(rows, pos, seed, scale);
  } catch (...) {
    table.undo_step(plan);
    throw;
  }
}

// Pool rows `rows` of every layer get pseudo-random values (fill_random_kernel); pool_pos[rows] = pos.
void CudaEngine::Impl::fill_rows_random(const std::vector<int64_t>& rows, const std::vector<int64_t>& pos,
                                        uint64_t seed, float scale) {
  Impl& m = *this;
  const auto n = static_cast<int64_t>(rows.size());
  if (n == 0) return;
  const int64_t D = m.config.kv_lora_rank + m.config.qk_rope_head_dim;
  Upload up;
  const size_t off = up.add(rows.data(), n), off_pos = up.add(pos.data(), n);
  auto* base = up.send(m.meta_dev, m.s());
  const auto* d_rows = reinterpret_cast<const int64_t*>(base + off);
  set_positions_kernel<<<blocks_for(n), kThreads, 0, m.s()>>>(m.pool_pos.as<int64_t>(), d_rows, nullptr,
                                                              reinterpret_cast<const int64_t*>(base + off_pos), n);
  HELIX_CUDA_CHECK_LAUNCH("set_positions_kernel");
  for (int64_t l = 0; l < m.config.num_layers; ++l) {
    const uint64_t layer_seed = seed + 0x632BE59BD9B4E019ull * static_cast<uint64_t>(l + 1);
    if (m.config.kv_dtype == DType::Float32) {
      fill_random_kernel<float>
          <<<blocks_for(n * D), kThreads, 0, m.s()>>>(m.pools[l].as<float>(), d_rows, n, D, layer_seed, scale);
    } else {
      fill_random_kernel<uint16_t>
          <<<blocks_for(n * D), kThreads, 0, m.s()>>>(m.pools[l].as<uint16_t>(), d_rows, n, D, layer_seed, scale);
    }
    HELIX_CUDA_CHECK_LAUNCH("fill_random_kernel");
  }
  m.stream.synchronize();
}

// y (+)= down(silu(gate(x)) * up(x)): the layer's `<mlp>.gate_up_proj` [2F, hidden] and `<mlp>.down_proj`.
void CudaEngine::Impl::swiglu_mlp(int64_t l, const std::string& mlp, int64_t T, int64_t F, const float* xx, float* yy,
                                  bool accumulate) {
  const int64_t hid = config.hidden_size;
  float* g = gu.as<float>(T * 2 * F);
  float* a = act.as<float>(T * F);
  linear(xx, T, hid, lw(l, (mlp + ".gate_up_proj").c_str()), 2 * F, g, false);
  launch_silu_mul(SiluMulParams{g, a, T, F, DType::Float32}, s());
  linear(a, T, F, lw(l, (mlp + ".down_proj").c_str()), hid, yy, accumulate);
}

void CudaEngine::Impl::dense_ffn(int64_t l, int64_t T, float* yy) {
  const int64_t hid = config.hidden_size;
  swiglu_mlp(l, "mlp", T, config.intermediate_size / config.world(), x.as<float>(T * hid), yy, false);
}

// Routed experts. A decode step (T <= kMoeExpertsMaxTokens) stays on the device: launch_moe_experts groups
// the pairs by expert and runs a GEMV per expert that got tokens. Longer chunks bring the routing back to the
// host (T * top_k ids and weights), group the tokens by local expert, and run gate_up -> silu_mul -> down
// through cuBLAS on each expert's rows.
void CudaEngine::Impl::moe_ffn(int64_t l, int64_t T, float* yy) {
  const EngineConfig& c = config;
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, Fm = c.moe_intermediate_size, hid = c.hidden_size,
                N = c.world();
  const float* xx = x.as<float>(T * hid);
  float* logits = router.as<float>(T * E);
  linear(xx, T, hid, lw(l, "gate"), E, logits, false);
  sanitize_kernel<<<blocks_for(T * E), kThreads, 0, s()>>>(logits, T * E, flags.as<int>() + 3 * l + 1);
  HELIX_CUDA_CHECK_LAUNCH("sanitize_kernel");
  MoeRouteParams rp;
  rp.logits = logits;
  rp.bias = lw(l, "e_score_correction_bias").f32();
  rp.topk_weight = route_w.as<float>(T * K);
  rp.topk_idx = route_ids.as<int32_t>(T * K);
  rp.T = T;
  rp.E = E;
  rp.n_group = c.n_group;
  rp.topk_group = c.topk_group;
  rp.top_k = K;
  rp.routed_scaling_factor = c.routed_scaling_factor;
  rp.norm_topk_prob = c.norm_topk_prob;
  launch_moe_route(rp, s());

  const int64_t n_local = c.expert_tensor_parallel ? E : E / N;
  const int64_t Fe = c.expert_tensor_parallel ? Fm / N : Fm;
  const int64_t first = c.expert_tensor_parallel ? 0 : c.rank * n_local;
  const DeviceWeight& gate_up = lw(l, "experts.gate_up_proj");
  const DeviceWeight& down = lw(l, "experts.down_proj");
  HELIX_CUDA_CHECK(cudaMemsetAsync(yy, 0, static_cast<size_t>(T * hid) * 4, s()));
  if (moe_experts_supported(T, K, n_local, hid, Fe)) {
    MoeExpertsParams ep;
    ep.h = xx;
    ep.topk_idx = rp.topk_idx;
    ep.topk_weight = rp.topk_weight;
    ep.gate_up = gate_up.data();
    ep.down = down.data();
    ep.out = yy;
    ep.T = T;
    ep.top_k = K;
    ep.hidden = hid;
    ep.F = Fe;
    ep.local_first = first;
    ep.n_local = n_local;
    ep.gate_up_dtype = gate_up.dtype;
    ep.down_dtype = down.dtype;
    ep.workspace = moe_ws.as<unsigned char>(static_cast<int64_t>(moe_experts_workspace_bytes(ep)));
    launch_moe_experts(ep, s());
  } else {
    moe_experts_on_host(l, T, xx, rp, n_local, Fe, first, yy);
  }
  shared_experts(l, T, xx, yy);
}

// The routed experts of a longer chunk: routing to the host, tokens grouped by local expert, cuBLAS per expert.
void CudaEngine::Impl::moe_experts_on_host(int64_t l, int64_t T, const float* xx, const MoeRouteParams& rp,
                                           int64_t n_local, int64_t Fe, int64_t first, float* yy) {
  const int64_t K = config.num_experts_per_tok, hid = config.hidden_size;
  std::vector<int32_t> ids(static_cast<size_t>(T * K));
  std::vector<float> wts(static_cast<size_t>(T * K));
  HELIX_CUDA_CHECK(cudaMemcpyAsync(ids.data(), rp.topk_idx, ids.size() * 4, cudaMemcpyDeviceToHost, s()));
  HELIX_CUDA_CHECK(cudaMemcpyAsync(wts.data(), rp.topk_weight, wts.size() * 4, cudaMemcpyDeviceToHost, s()));
  HELIX_CUDA_CHECK(cudaStreamSynchronize(s()));
  check_flags(read_flags());  // a flagged step ends here, before any expert runs on garbage
  // Bucket (token, weight) by local expert, in token order (as moe_experts_cpu).
  std::vector<std::vector<int32_t>> tok(static_cast<size_t>(n_local));
  std::vector<std::vector<float>> wt(static_cast<size_t>(n_local));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t e = ids[static_cast<size_t>(t * K + k)] - first;
      if (e < 0 || e >= n_local) continue;
      tok[e].push_back(static_cast<int32_t>(t));
      wt[e].push_back(wts[static_cast<size_t>(t * K + k)]);
    }
  }
  Upload& up = moe_upload;  // read by the copy until the next synchronize (the next layer's routing)
  up.clear();
  std::vector<size_t> tok_off(static_cast<size_t>(n_local)), w_off(static_cast<size_t>(n_local));
  int64_t max_rows = 0;
  for (int64_t e = 0; e < n_local; ++e) {
    tok_off[e] = up.add(tok[e].data(), static_cast<int64_t>(tok[e].size()));
    w_off[e] = up.add(wt[e].data(), static_cast<int64_t>(wt[e].size()));
    max_rows = std::max<int64_t>(max_rows, static_cast<int64_t>(tok[e].size()));
  }
  auto* base = up.send(moe_meta, s());
  const DeviceWeight& gate_up = lw(l, "experts.gate_up_proj");
  const DeviceWeight& down = lw(l, "experts.down_proj");
  float* xr = xe.as<float>(max_rows * hid);
  float* g = gu.as<float>(max_rows * 2 * Fe);
  float* a = act.as<float>(max_rows * Fe);
  float* yr = ye.as<float>(max_rows * hid);
  for (int64_t e = 0; e < n_local; ++e) {
    const auto n = static_cast<int64_t>(tok[e].size());
    if (n == 0) continue;
    const auto* d_tok = reinterpret_cast<const int32_t*>(base + tok_off[e]);
    const auto* d_w = reinterpret_cast<const float*>(base + w_off[e]);
    gather_rows_kernel<float, int32_t><<<blocks_for(n * hid), kThreads, 0, s()>>>(xx, d_tok, xr, n, hid, hid);
    HELIX_CUDA_CHECK_LAUNCH("gather_rows_kernel");
    linear(xr, n, hid, gate_up, 2 * Fe, g, false, e * 2 * Fe * hid);
    launch_silu_mul(SiluMulParams{g, a, n, Fe, DType::Float32}, s());
    linear(a, n, Fe, down, hid, yr, false, e * hid * Fe);
    scatter_add_weighted_kernel<<<blocks_for(n * hid), kThreads, 0, s()>>>(yy, yr, d_tok, d_w, n, hid);
    HELIX_CUDA_CHECK_LAUNCH("scatter_add_weighted_kernel");
  }
}

// y += the shared experts (a dense SwiGLU MLP, F split over the ranks) of every token.
void CudaEngine::Impl::shared_experts(int64_t l, int64_t T, const float* xx, float* yy) {
  const EngineConfig& c = config;
  if (c.n_shared_experts == 0) return;
  swiglu_mlp(l, "shared_experts", T, c.n_shared_experts * c.moe_intermediate_size / c.world(), xx, yy, true);
}

void CudaEngine::step(const TensorView& tokens, const TensorView& positions, const TensorView& seq_ids,
                      const TensorView& q_seq_index, const TensorView& logit_rows, const TensorView& logits) {
  check_weights();
  Impl& m = *impl_;
  StepPlan plan = check_step_inputs(m.config, *m.table, tokens, positions, seq_ids, q_seq_index, logit_rows, logits);
  const std::vector<int64_t> new_rows = m.table->commit_step(plan);  // [T] pool row of each owned token, else -1
  try {
    set_device(m.device);
    m.forward(tokens, step_tokens(positions, seq_ids, q_seq_index), new_rows.data(), logit_rows, logits);
  } catch (...) {
    // A later failure (non-finite values, device or communication errors) takes the slots back.
    m.table->undo_step(plan);
    throw;
  }
  m.timings.steps += 1;
}

void CudaEngine::Impl::forward(const TensorView& tokens, const StepTokens& step, const int64_t* new_rows,
                               const TensorView& logit_rows, const TensorView& logits) {
  Impl& m = *this;
  const EngineConfig& c = m.config;
  const int64_t T = step.T, L = logit_rows.dim(0), B = step.B;
  const int64_t hid = c.hidden_size, N = c.world(), Htp = c.heads_tp(), Hc = c.heads_chunk(), R = c.kv_lora_rank,
                P = c.qk_rope_head_dim, Dn = c.qk_nope_head_dim, Dv = c.v_head_dim, D = R + P, Dq = Dn + P, cp = c.cp,
                cp_rank = c.rank % c.cp, tpb = c.tokens_per_block;
  const int64_t W = c.wuv_before_exchange ? Dv : R;
  const int64_t* pos = step.positions;
  const int64_t* sids = step.seq_ids;
  const int64_t* qsi = step.q_seq_index;
  const StreamHandle st = m.s();

  // The tokens this rank owns and the pool rows they go to (the same in every layer's pool).
  std::vector<int64_t> app_tok, app_row;
  for (int64_t t = 0; t < T; ++t) {
    if (new_rows[t] < 0) continue;
    app_tok.push_back(t);
    app_row.push_back(new_rows[t]);
  }
  // Block tables of the batch, [B, max_blocks] (the positions of the slots live on the device, pool_pos).
  int64_t max_blocks = 1, max_num_slots = 0;
  for (int64_t b = 0; b < B; ++b) {
    const SequenceView v = m.table->view(sids[b]);
    max_num_slots = std::max(max_num_slots, v.num_tokens);
    max_blocks = std::max(max_blocks, (v.num_tokens + tpb - 1) / tpb);
  }
  std::vector<int32_t> tables(static_cast<size_t>(B * max_blocks), 0);
  std::vector<int64_t> num_slots(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    const SequenceView v = m.table->view(sids[b]);
    num_slots[b] = v.num_tokens;
    std::copy_n(v.block_table, (v.num_tokens + tpb - 1) / tpb, tables.data() + b * max_blocks);
  }
  Upload up;
  const size_t o_tokens = up.add(tokens.ptr<int64_t>(), T), o_pos = up.add(pos, T), o_qsi = up.add(qsi, T),
               o_rows = up.add(logit_rows.ptr<int64_t>(), L),
               o_app_tok = up.add(app_tok.data(), static_cast<int64_t>(app_tok.size())),
               o_app_row = up.add(app_row.data(), static_cast<int64_t>(app_row.size())),
               o_tables = up.add(tables.data(), B * max_blocks), o_num_slots = up.add(num_slots.data(), B);
  const size_t o_freq = up.add(c.rope_inv_freq.data(), static_cast<int64_t>(c.rope_inv_freq.size()));

  m.timer.start(st);
  unsigned char* base = up.send(m.meta_dev, st);
  auto i64p = [&](size_t off) { return reinterpret_cast<const int64_t*>(base + off); };
  const int64_t* d_tokens = i64p(o_tokens);
  const int64_t* d_pos = i64p(o_pos);
  const int64_t* d_qsi = i64p(o_qsi);
  const int64_t* d_rows = i64p(o_rows);
  const int64_t* d_app_tok = i64p(o_app_tok);
  const int64_t* d_app_row = i64p(o_app_row);
  const auto* d_tables = reinterpret_cast<const int32_t*>(base + o_tables);
  const int64_t* d_num_slots = i64p(o_num_slots);
  const auto* d_freq = reinterpret_cast<const float*>(base + o_freq);
  const auto n_app = static_cast<int64_t>(app_tok.size());
  HELIX_CUDA_CHECK(cudaMemsetAsync(m.flags.data(), 0, m.flags.bytes(), st));
  if (n_app > 0) {
    set_positions_kernel<<<blocks_for(n_app), kThreads, 0, st>>>(m.pool_pos.as<int64_t>(), d_app_row, d_app_tok, d_pos,
                                                                 n_app);
    HELIX_CUDA_CHECK_LAUNCH("set_positions_kernel");
  }

  // ---- embedding --------------------------------------------------------------------------------------
  float* h = m.h.as<float>(T * hid);
  {
    const DeviceWeight& table = m.w("embed_tokens");
    const int64_t Vs = c.vocab_shard(), v0 = c.rank * Vs;
    launch_embedding(EmbeddingParams{d_tokens, table.data(), h, T, Vs, hid, v0, table.dtype}, st);
  }
  m.timer.mark(st, &m.timings.other_s);
  m.all_reduce(h, T * hid);
  m.timer.mark(st, &m.timings.allreduce_s);

  float* x = m.x.as<float>(T * hid);
  float* q = m.q.as<float>(T * Htp * Dq);
  float* kva = m.kva.as<float>(T * D);
  float* q_abs = m.q_abs.as<float>(T * Htp * D);
  float* y = m.y.as<float>(T * hid);
  float* qa = c.q_lora_rank > 0 ? m.qa.as<float>(T * c.q_lora_rank) : nullptr;
  const size_t kv_es = dtype_size(c.kv_dtype);

  for (int64_t l = 0; l < c.num_layers; ++l) {
    // --- attention -------------------------------------------------------------------------------------
    m.rms_norm(h, m.lw(l, "input_layernorm").f32(), x, T, hid, hid);
    if (c.q_lora_rank > 0) {
      m.linear(x, T, hid, m.lw(l, "q_a_proj"), c.q_lora_rank, qa, false);
      m.rms_norm(qa, m.lw(l, "q_a_layernorm").f32(), qa, T, c.q_lora_rank, c.q_lora_rank);
      m.linear(qa, T, c.q_lora_rank, m.lw(l, "q_b_proj"), Htp * Dq, q, false);
    } else {
      m.linear(x, T, hid, m.lw(l, "q_proj"), Htp * Dq, q, false);
    }
    m.linear(x, T, hid, m.lw(l, "kv_a_proj_with_mqa"), D, kva, false);
    m.timer.mark(st, &m.timings.linear_s);
    m.rms_norm(kva, m.lw(l, "kv_a_layernorm").f32(), kva, T, R, D);
    RopeParams rp;
    rp.pos = d_pos;
    rp.inv_freq = d_freq;
    rp.T = T;
    rp.P = P;
    rp.attention_factor = c.rope_attention_factor;
    rp.dtype = DType::Float32;
    rp.x = q;
    rp.H = Htp;
    rp.stride = Dq;
    rp.offset = Dn;
    launch_rope(rp, st);
    rp.x = kva;
    rp.H = 1;
    rp.stride = D;
    rp.offset = R;
    launch_rope(rp, st);
    // q_abs[t, h] = [W_UK[h] q_nope[t, h] | q_pe[t, h]]
    m.head_linear(q, T, Htp * Dq, Dq, m.lw(l, "w_uk"), Htp, R, Dn, q_abs, Htp * D, D, 0);
    HELIX_CUDA_CHECK(cudaMemcpy2DAsync(q_abs + R, D * 4, q + Dn, Dq * 4, P * 4, T * Htp, cudaMemcpyDeviceToDevice, st));
    // The cache dtype's copy of the new latent rows, and of q for the kernel.
    const void* new_kv = kva;
    const void* q_att = q_abs;
    if (c.kv_dtype == DType::BFloat16) {
      auto* kb = m.kv_rows.as<uint16_t>(T * D);
      to_bf16_kernel<<<blocks_for(T * D), kThreads, 0, st>>>(kva, kb, T * D);
      HELIX_CUDA_CHECK_LAUNCH("to_bf16_kernel");
      auto* qb = m.q_att.as<uint16_t>(T * Htp * D);
      to_bf16_kernel<<<blocks_for(T * Htp * D), kThreads, 0, st>>>(q_abs, qb, T * Htp * D);
      HELIX_CUDA_CHECK_LAUNCH("to_bf16_kernel");
      new_kv = kb;
      q_att = qb;
    }
    m.timer.mark(st, &m.timings.other_s);

    // Append this rank's rows: gather them, then kv_append into the layer's pool.
    if (n_app > 0) {
      void* rows = m.app_rows.get(static_cast<size_t>(n_app * D) * kv_es);
      if (c.kv_dtype == DType::BFloat16) {
        gather_rows_kernel<uint16_t, int64_t><<<blocks_for(n_app * D), kThreads, 0, st>>>(
            static_cast<const uint16_t*>(new_kv), d_app_tok, static_cast<uint16_t*>(rows), n_app, D, D);
      } else {
        gather_rows_kernel<float, int64_t><<<blocks_for(n_app * D), kThreads, 0, st>>>(
            static_cast<const float*>(new_kv), d_app_tok, static_cast<float*>(rows), n_app, D, D);
      }
      HELIX_CUDA_CHECK_LAUNCH("gather_rows_kernel");
      KvAppendParams ap;
      ap.pool = m.pools[l].data();
      ap.rows = rows;
      ap.dst_rows = d_app_row;
      ap.n = n_app;
      ap.row_bytes = D * static_cast<int64_t>(kv_es);
      launch_kv_append(ap, st);
    }
    // Partial attention over the local shard: o_part [T, Htp, R], lse_part [T, Htp].
    float* o_part = m.o_part.as<float>(T * Htp * R);
    float* lse_part = m.lse_part.as<float>(T * Htp);
    {
      PagedMlaAttentionParams ap;
      ap.q = q_att;
      ap.q_pos = d_pos;
      ap.q_seq = d_qsi;
      ap.pool = m.pools[l].data();
      ap.block_tables = d_tables;
      ap.kv_pos = m.pool_pos.as<int64_t>();
      ap.num_slots = d_num_slots;
      ap.o = o_part;
      ap.lse = lse_part;
      ap.T = T;
      ap.H = Htp;
      ap.D = D;
      ap.R = R;
      ap.B = B;
      ap.max_blocks = max_blocks;
      ap.tokens_per_block = tpb;
      ap.max_num_slots = max_num_slots;
      ap.scale = c.softmax_scale;
      ap.q_dtype = ap.kv_dtype = c.kv_dtype;
      ap.workspace = m.attn_ws.as<float>(attention_workspace_floats(ap));
      launch_paged_mla_attention(ap, AttentionKernel::Auto, st);
    }
    // Optional W_UV before the exchange (exact: the merge is linear): values [T, Htp, W].
    const float* values = o_part;
    if (c.wuv_before_exchange) {
      float* v = m.values.as<float>(T * Htp * W);
      m.head_linear(o_part, T, Htp * R, R, m.lw(l, "w_uv"), Htp, Dv, R, v, Htp * W, W, 0);
      values = v;
    }
    m.timer.mark(st, &m.timings.attention_s);

    // Pack, exchange, merge. Block c of the exchange = [T, Hc, W] values of head chunk c, then [T, Hc] lse.
    const float* merged = values;  // one CP rank: its partial state is the merged one (Hc == Htp)
    if (cp > 1) {
      float* merged_out = m.attn.as<float>(T * Hc * W);
      const int64_t block = T * Hc * (W + 1);
      float* send = m.send.as<float>(cp * block);
      float* recv = m.recv.as<float>(cp * block);
      for (int64_t ch = 0; ch < cp; ++ch) {
        HELIX_CUDA_CHECK(cudaMemcpy2DAsync(send + ch * block, Hc * W * 4, values + ch * Hc * W, Htp * W * 4, Hc * W * 4,
                                           T, cudaMemcpyDeviceToDevice, st));
        HELIX_CUDA_CHECK(cudaMemcpy2DAsync(send + ch * block + T * Hc * W, Hc * 4, lse_part + ch * Hc, Htp * 4, Hc * 4,
                                           T, cudaMemcpyDeviceToDevice, st));
      }
      m.timer.mark(st, &m.timings.attention_s);
      m.cp_comm->all_to_all(send, recv, static_cast<size_t>(block) * 4);
      m.timer.mark(st, &m.timings.exchange_s);
      float* o_parts = m.o_parts.as<float>(cp * T * Hc * W);
      float* lse_parts = m.lse_parts.as<float>(cp * T * Hc);
      HELIX_CUDA_CHECK(cudaMemcpy2DAsync(o_parts, T * Hc * W * 4, recv, block * 4, T * Hc * W * 4, cp,
                                         cudaMemcpyDeviceToDevice, st));
      HELIX_CUDA_CHECK(cudaMemcpy2DAsync(lse_parts, T * Hc * 4, recv + T * Hc * W, block * 4, T * Hc * 4, cp,
                                         cudaMemcpyDeviceToDevice, st));
      MergeStatesParams mp;
      mp.o_parts = o_parts;
      mp.lse_parts = lse_parts;
      mp.o = merged_out;
      mp.lse = m.lse_out.as<float>(T * Hc);
      mp.N = cp;
      mp.M = T * Hc;
      mp.D = W;
      launch_merge_states(mp, st);
      merged = merged_out;
      m.timer.mark(st, &m.timings.attention_s);
    }
    const float* attn_out = merged;  // [T, Hc, Dv] after W_UV
    if (!c.wuv_before_exchange) {
      // This rank's chunk is heads [cp_rank * Hc, (cp_rank + 1) * Hc) of its TP rank's W_UV.
      float* av = m.attn_v.as<float>(T * Hc * Dv);
      m.head_linear(merged, T, Hc * R, R, m.lw(l, "w_uv"), Hc, Dv, R, av, Hc * Dv, Dv, cp_rank * Hc);
      attn_out = av;
      m.timer.mark(st, &m.timings.attention_s);
    }
    m.linear(attn_out, T, Hc * Dv, m.lw(l, "o_proj"), hid, y, false);
    m.timer.mark(st, &m.timings.linear_s);
    m.all_reduce(y, T * hid);
    m.timer.mark(st, &m.timings.allreduce_s);
    m.add_residual(h, y, T * hid, static_cast<int>(3 * l));

    // --- FFN -------------------------------------------------------------------------------------------
    m.rms_norm(h, m.lw(l, "post_attention_layernorm").f32(), x, T, hid, hid);
    if (c.is_moe_layer(l)) {
      m.moe_ffn(l, T, y);
      m.timer.mark(st, &m.timings.moe_s);
    } else {
      m.dense_ffn(l, T, y);
      m.timer.mark(st, &m.timings.linear_s);
    }
    m.all_reduce(y, T * hid);
    m.timer.mark(st, &m.timings.allreduce_s);
    m.add_residual(h, y, T * hid, static_cast<int>(3 * l + 2));
  }

  // --- final norm of the logit rows, vocabulary-sharded lm_head, all-gather ---------------------------------
  const int64_t Vs = c.vocab_shard();
  float* xr = m.xe.as<float>(L * hid);
  gather_rows_kernel<float, int64_t><<<blocks_for(L * hid), kThreads, 0, st>>>(h, d_rows, xr, L, hid, hid);
  HELIX_CUDA_CHECK_LAUNCH("gather_rows_kernel");
  m.rms_norm(xr, m.w("norm").f32(), xr, L, hid, hid);
  float* local = m.logits_local.as<float>(L * Vs);
  m.linear(xr, L, hid, m.w("lm_head"), Vs, local, false);
  m.timer.mark(st, &m.timings.linear_s);
  float* all = local;
  if (N > 1) {
    all = m.logits_all.as<float>(N * L * Vs);
    m.world_comm->all_gather(local, all, static_cast<size_t>(L * Vs) * 4);
  }
  std::vector<float> host(static_cast<size_t>(N * L * Vs));
  HELIX_CUDA_CHECK(cudaMemcpyAsync(host.data(), all, host.size() * 4, cudaMemcpyDeviceToHost, st));
  m.timer.mark(st, &m.timings.allreduce_s);
  std::vector<int> flags(static_cast<size_t>(3 * c.num_layers));
  HELIX_CUDA_CHECK(
      cudaMemcpyAsync(flags.data(), m.flags.data(), flags.size() * sizeof(int), cudaMemcpyDeviceToHost, st));
  HELIX_CUDA_CHECK(cudaStreamSynchronize(st));
  m.timer.collect();
  m.check_flags(flags);
  float* out = logits.ptr<float>();
  for (int64_t r = 0; r < N; ++r) {
    const int64_t v0 = r * Vs, n = std::min(Vs, c.vocab_size - v0);
    if (n <= 0) continue;
    for (int64_t i = 0; i < L; ++i) {
      std::memcpy(out + i * c.vocab_size + v0, host.data() + (r * L + i) * Vs, static_cast<size_t>(n) * 4);
    }
  }
  for (int64_t i = 0; i < L * c.vocab_size; ++i) {
    HELIX_CHECK(std::isfinite(out[i]), "non-finite logits (NaN or Inf) for row ", i / c.vocab_size, " on rank ",
                c.rank);
  }
}

}  // namespace helix::cuda
