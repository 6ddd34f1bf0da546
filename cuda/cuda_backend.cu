// The CUDA backend of the decoder (contract: cpp/include/helix/backend.hpp; the CPU twin: cpp/src/cpu_backend.cpp).
//
// Everything of a step runs on one stream: the step's host arrays go up in one copy (begin_step), the ops are
// launched in order, the collectives are NCCL (or host-staged) ordered on the stream, and finish_step
// synchronizes once per step, collects the CUDA-event timings and reports the first non-finite value flagged
// on the device (layer and sub-block), like the CPU backend. Activations are fp32; a GEMM with bf16 weights
// reads a bf16 copy of its input, and the attention reads bf16 queries when the cache is bf16.
// The routed experts of a decode step (T <= kMoeExpertsMaxTokens) stay on the device; longer chunks group
// their tokens by expert on the host (cuda/moe_grouped.cu).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "common.cuh"
#include "engine_kernels.cuh"
#include "helix/backend.hpp"
#include "moe_grouped.cuh"
#include "step_resources.cuh"

namespace helix::cuda {

namespace {

constexpr int kFlagsPerLayer = 3;  // attention residual, router logits, FFN residual

class CudaBackend final : public Backend {
 public:
  CudaBackend(const EngineConfig& config, Communicator& world, int device, CudaComm comm);
  ~CudaBackend() override { cudaSetDevice(device_); }  // the members' frees must target the engine's device

  Device device() const override { return Device::Cuda; }

  TensorView store_weight(const std::string& name, const TensorView& host) override;
  void* scratch(Buffer role, size_t bytes) override { return scratch_[static_cast<int>(role)].get(bytes); }
  void* kv_pool(int64_t layer) override { return pools_[static_cast<size_t>(layer)].data(); }
  int64_t memory_bytes() const override;
  void fill_kv_random(const std::vector<int64_t>& rows, const std::vector<int64_t>& positions, uint64_t seed,
                      float scale, bool mtp) override;
  void read_kv_rows(const std::vector<int64_t>& rows, void* host) override;
  void write_kv_rows(const std::vector<int64_t>& rows, const std::vector<int64_t>& positions,
                     const void* host) override;

  StepArrays begin_step(const StepInput& in) override;
  void mark(double* component) override { timer_.mark(s(), component); }
  void download(void* host, const void* src, size_t bytes) override {
    if (bytes > 0) HELIX_CUDA_CHECK(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, s()));
  }
  void upload(void* dst, const void* host, size_t bytes) override {
    if (bytes > 0) HELIX_CUDA_CHECK(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, s()));
  }
  void finish_step() override;

  void embedding(const EmbeddingParams& p) override { launch_embedding(p, s()); }
  void linear(const LinearParams& p) override {
    LinearParams q = p;
    q.x = gemm_input(static_cast<const float*>(p.x), p.T, p.ldx, p.K, p.w_dtype, q.ldx);
    q.x_dtype = p.w_dtype;
    launch_linear(q, s());
  }
  void head_linear(const HeadLinearParams& p) override {
    HeadLinearParams q = p;
    int64_t ld = p.ldx;
    q.x = gemm_input(static_cast<const float*>(p.x), p.T, p.ldx, p.ldx, p.w_dtype, ld);
    q.x_dtype = p.w_dtype;
    launch_head_linear(q, s());
  }
  void rms_norm(const RmsNormParams& p) override { launch_rms_norm(p, s()); }
  void rope(const RopeParams& p) override { launch_rope(p, s()); }
  void silu_mul(const SiluMulParams& p) override { launch_silu_mul(p, s()); }
  void gather_rows(float* dst, const float* src, int64_t ld_src, const int64_t* rows, int64_t n,
                   int64_t width) override {
    launch_gather_rows(src, rows, dst, n, width, ld_src, s());
  }
  void copy_rows(float* dst, int64_t ld_dst, const float* src, int64_t ld_src, int64_t width, int64_t rows) override {
    HELIX_CUDA_CHECK(
        cudaMemcpy2DAsync(dst, ld_dst * 4, src, ld_src * 4, width * 4, rows, cudaMemcpyDeviceToDevice, s()));
  }
  void zero(void* x, size_t bytes) override { HELIX_CUDA_CHECK(cudaMemsetAsync(x, 0, bytes, s())); }
  void convert(const float* x, void* y, DType y_dtype, int64_t n) override {
    if (y_dtype == DType::BFloat16) {
      detail::launch_to_bf16(x, static_cast<uint16_t*>(y), n, s());
    } else {
      HELIX_CUDA_CHECK(cudaMemcpyAsync(y, x, static_cast<size_t>(n) * 4, cudaMemcpyDeviceToDevice, s()));
    }
  }
  void add_residual(float* h, const float* y, int64_t n, int64_t layer, Block block) override {
    launch_add_residual(h, y, n, flag(layer, block == Block::Attention ? 0 : 2), s());
  }
  void helix_attention(const HelixAttentionParams& p, const HelixStageMark& mark) override;
  bool expanded_attention(const HelixAttentionParams&) override { return false; }  // absorbed only
  void moe_route(const MoeRouteParams& p, int64_t layer) override {
    launch_sanitize(const_cast<float*>(p.logits), p.T * p.E, flag(layer, 1), s());
    launch_moe_route(p, s());
  }
  void moe_experts(const MoeExpertsParams& p) override;
  void all_reduce(float* x, int64_t n) override {
    if (world_comm_) world_comm_->all_reduce_sum(x, n, DType::Float32);
  }
  void all_gather(const float* send, float* recv, int64_t n) override {
    if (world_comm_) {
      world_comm_->all_gather(send, recv, static_cast<size_t>(n) * 4);
    } else {
      HELIX_CUDA_CHECK(cudaMemcpyAsync(recv, send, static_cast<size_t>(n) * 4, cudaMemcpyDeviceToDevice, s()));
    }
  }

 private:
  StreamHandle s() const { return stream_.handle(); }
  int* flag(int64_t layer, int which) { return flags_.as<int>() + kFlagsPerLayer * layer + which; }
  // The input of a GEMM in the weight's dtype: x itself (f32), or a dense bf16 copy of its [rows, width] (ld
  // apart) in bf16_in_, whose row stride is returned in ld_out.
  const void* gemm_input(const float* x, int64_t rows, int64_t ld, int64_t width, DType w_dtype, int64_t& ld_out);
  std::vector<int> read_flags();
  void check_flags(const std::vector<int>& flags) const;

  EngineConfig c_;
  int device_;
  Stream stream_;
  std::unique_ptr<Communicator> world_comm_;  // device buffers over all ranks (null for one rank)
  std::unique_ptr<Communicator> cp_comm_;     // the CP group (NCCL / host-staged; a self stand-in when cp == 1)
  std::map<std::string, DeviceBuffer> weights_;
  std::vector<DeviceBuffer> pools_;  // per layer: [num_kv_blocks * tokens_per_block, R + P] of kv_dtype
  DeviceBuffer pool_pos_;            // int64 [num_kv_blocks * tokens_per_block]: global position of each row
  DeviceBuffer mtp_pool_pos_;        // the same for the MTP layer's pool (its own block table), if any
  DeviceBuffer flags_;               // int32 [kFlagsPerLayer * num_kv_layers]
  Scratch scratch_[kNumBuffers];
  Scratch meta_, bf16_in_, q_kv_, attention_ws_, moe_ws_;
  Upload upload_;  // the step's host arrays, read by the copy until finish_step's synchronize
  MoeGrouped moe_grouped_;
  StepTimer timer_;
};

CudaBackend::CudaBackend(const EngineConfig& config, Communicator& world, int device, CudaComm comm)
    : c_(config), device_(device), stream_((set_device(device), Stream())) {
  if (c_.world() > 1) {
    // Stream-ordered NCCL: every consumer of a collective's result is later work on the engine's stream.
    world_comm_ = comm == CudaComm::Nccl ? make_nccl_communicator(world, s(), /*stream_ordered=*/true)
                                         : make_host_staged_communicator(world.split(0, c_.rank), s());
  }
  cp_comm_ = c_.cp > 1 ? world_comm_->split(static_cast<int>(c_.tp_rank()), static_cast<int>(c_.cp_rank()))
                       : make_self_communicator();  // never exchanges: helix_attention with cp == 1 merges locally
  const int64_t rows = c_.num_kv_blocks * c_.tokens_per_block;
  const size_t pool_bytes = static_cast<size_t>(rows * c_.kv_row_width() * dtype_size(c_.kv_dtype));
  try {
    for (int64_t l = 0; l < c_.num_kv_layers(); ++l) {
      pools_.emplace_back(pool_bytes);
      pools_.back().fill_zero(s());
    }
    pool_pos_ = DeviceBuffer(static_cast<size_t>(rows) * sizeof(int64_t));
    if (c_.num_mtp_layers > 0) mtp_pool_pos_ = DeviceBuffer(static_cast<size_t>(rows) * sizeof(int64_t));
  } catch (const DeviceMemoryError& e) {
    throw DeviceMemoryError(::helix::detail::concat(
        "rank ", c_.rank, ": the KV cache (", c_.num_kv_layers(), " layers x ", c_.num_kv_blocks, " blocks x ",
        c_.tokens_per_block, " tokens x ", c_.kv_row_width(), " ", dtype_name(c_.kv_dtype), " = ",
        ::helix::detail::human_bytes(static_cast<double>(pool_bytes) * static_cast<double>(c_.num_kv_layers())),
        ") does not fit on the GPU: ", e.what(), ". Lower max_tokens, or use more CP ranks"));
  }
  flags_ = DeviceBuffer(static_cast<size_t>(kFlagsPerLayer * c_.num_kv_layers()) * sizeof(int));
  stream_.synchronize();
}

TensorView CudaBackend::store_weight(const std::string& name, const TensorView& host) {
  set_device(device_);
  DeviceBuffer buf;
  try {
    buf = DeviceBuffer(static_cast<size_t>(std::max<int64_t>(host.nbytes(), 1)));
  } catch (const DeviceMemoryError& e) {
    throw DeviceMemoryError(::helix::detail::concat(
        "rank ", c_.rank, ": weight '", name, "' ", shape_str(host.shape), " ", dtype_name(host.dtype), " (",
        ::helix::detail::human_bytes(static_cast<double>(host.nbytes())), ") does not fit on the GPU after ",
        ::helix::detail::human_bytes(static_cast<double>(memory_bytes())), " of weights, KV cache and workspaces: ",
        e.what(), ". Use more ranks (tp, cp), bfloat16 weights, or a smaller max_tokens"));
  }
  buf.copy_from_host(host.data, static_cast<size_t>(host.nbytes()), s());
  DeviceBuffer& stored = weights_[name] = std::move(buf);
  return TensorView{stored.data(), host.dtype, host.shape};
}

int64_t CudaBackend::memory_bytes() const {
  int64_t total = static_cast<int64_t>(pool_pos_.bytes() + flags_.bytes());
  for (const auto& [n, w] : weights_) total += static_cast<int64_t>(w.bytes());
  for (const auto& p : pools_) total += static_cast<int64_t>(p.bytes());
  for (const Scratch& sc : scratch_) total += static_cast<int64_t>(sc.bytes());
  for (const Scratch* sc : {&meta_, &bf16_in_, &q_kv_, &attention_ws_, &moe_ws_}) {
    total += static_cast<int64_t>(sc->bytes());
  }
  return total + moe_grouped_.bytes();
}

void CudaBackend::fill_kv_random(const std::vector<int64_t>& rows, const std::vector<int64_t>& positions, uint64_t seed,
                                 float scale, bool mtp) {
  set_device(device_);
  const auto n = static_cast<int64_t>(rows.size());
  if (n == 0) return;
  Upload up;
  const size_t o_rows = up.add(rows.data(), n), o_pos = up.add(positions.data(), n);
  auto* base = up.send(meta_, s());
  const auto* d_rows = reinterpret_cast<const int64_t*>(base + o_rows);
  launch_set_positions((mtp ? mtp_pool_pos_ : pool_pos_).as<int64_t>(), d_rows,
                       reinterpret_cast<const int64_t*>(base + o_pos), n, s());
  // The MTP layer's pool follows the model's (index num_layers).
  for (int64_t l = mtp ? c_.num_layers : 0; l < (mtp ? c_.num_kv_layers() : c_.num_layers); ++l) {
    const uint64_t layer_seed = seed + 0x632BE59BD9B4E019ull * static_cast<uint64_t>(l + 1);
    launch_fill_random(pools_[static_cast<size_t>(l)].data(), c_.kv_dtype, d_rows, n, c_.kv_row_width(), layer_seed,
                       scale, s());
  }
  stream_.synchronize();  // `up` is read by the copy until here
}

// Copies between host rows [num_layers, n, R + P] and pool rows `rows`, one cudaMemcpyAsync per run of
// consecutive pool rows (a block's rows are consecutive), then waits: the host bytes are the caller's.
namespace {
template <class Copy>
void for_each_row_run(const std::vector<int64_t>& rows, Copy copy) {
  for (size_t i = 0; i < rows.size();) {
    size_t j = i + 1;
    while (j < rows.size() && rows[j] == rows[j - 1] + 1) ++j;
    copy(rows[i], static_cast<int64_t>(i), static_cast<int64_t>(j - i));  // first pool row, host row, count
    i = j;
  }
}
}  // namespace

void CudaBackend::read_kv_rows(const std::vector<int64_t>& rows, void* host) {
  set_device(device_);
  const int64_t rb = c_.kv_row_width() * dtype_size(c_.kv_dtype), n = static_cast<int64_t>(rows.size());
  for (int64_t l = 0; l < c_.num_layers; ++l) {
    auto* dst = static_cast<unsigned char*>(host) + l * n * rb;
    const auto* pool = static_cast<const unsigned char*>(pools_[static_cast<size_t>(l)].data());
    for_each_row_run(rows, [&](int64_t row, int64_t at, int64_t count) {
      HELIX_CUDA_CHECK(cudaMemcpyAsync(dst + at * rb, pool + row * rb, static_cast<size_t>(count * rb),
                                       cudaMemcpyDeviceToHost, s()));
    });
  }
  stream_.synchronize();
}

void CudaBackend::write_kv_rows(const std::vector<int64_t>& rows, const std::vector<int64_t>& positions,
                                const void* host) {
  set_device(device_);
  const int64_t rb = c_.kv_row_width() * dtype_size(c_.kv_dtype), n = static_cast<int64_t>(rows.size());
  if (n == 0) return;
  for (int64_t l = 0; l < c_.num_layers; ++l) {
    const auto* src = static_cast<const unsigned char*>(host) + l * n * rb;
    auto* pool = static_cast<unsigned char*>(pools_[static_cast<size_t>(l)].data());
    for_each_row_run(rows, [&](int64_t row, int64_t at, int64_t count) {
      HELIX_CUDA_CHECK(cudaMemcpyAsync(pool + row * rb, src + at * rb, static_cast<size_t>(count * rb),
                                       cudaMemcpyHostToDevice, s()));
    });
  }
  Upload up;
  const size_t o_rows = up.add(rows.data(), n), o_pos = up.add(positions.data(), n);
  auto* base = up.send(meta_, s());
  launch_set_positions(pool_pos_.as<int64_t>(), reinterpret_cast<const int64_t*>(base + o_rows),
                       reinterpret_cast<const int64_t*>(base + o_pos), n, s());
  stream_.synchronize();  // `up` and `host` are read by the copies until here
}

StepArrays CudaBackend::begin_step(const StepInput& in) {
  set_device(device_);
  const int64_t T = in.step.T, B = in.step.B;
  const BatchView& batch = *in.batch;
  Upload& up = upload_;  // kept until finish_step's synchronize: the copy may read it until then
  up.clear();
  const size_t o_tokens = up.add(in.tokens, T), o_pos = up.add(in.step.positions, T),
               o_qsi = up.add(in.step.q_seq_index, T), o_new_rows = up.add(in.new_rows, T),
               o_rows = up.add(in.logit_rows, in.L), o_hidden_rows = up.add(in.hidden_rows, in.H),
               o_tables = up.add(batch.block_tables.data(), B * batch.max_blocks),
               o_slots = up.add(batch.num_slots.data(), B),
               o_freq = up.add(c_.rope_inv_freq.data(), static_cast<int64_t>(c_.rope_inv_freq.size()));
  timer_.start(s());
  unsigned char* base = up.send(meta_, s());
  const auto at = [base](size_t off) { return base + off; };
  HELIX_CUDA_CHECK(cudaMemsetAsync(flags_.data(), 0, flags_.bytes(), s()));
  StepArrays a;
  a.tokens = reinterpret_cast<const int64_t*>(at(o_tokens));
  a.positions = reinterpret_cast<const int64_t*>(at(o_pos));
  a.q_seq = reinterpret_cast<const int64_t*>(at(o_qsi));
  a.new_rows = reinterpret_cast<const int64_t*>(at(o_new_rows));
  a.logit_rows = reinterpret_cast<const int64_t*>(at(o_rows));
  a.hidden_rows = reinterpret_cast<const int64_t*>(at(o_hidden_rows));
  a.block_tables = reinterpret_cast<const int32_t*>(at(o_tables));
  a.num_slots = reinterpret_cast<const int64_t*>(at(o_slots));
  int64_t* kv_pos = (in.mtp ? mtp_pool_pos_ : pool_pos_).as<int64_t>();
  a.kv_pos = kv_pos;
  a.rope_inv_freq = reinterpret_cast<const float*>(at(o_freq));
  // The positions of the rows this step fills (the same rows in every pool of the table): they live with them.
  launch_set_positions(kv_pos, a.new_rows, a.positions, T, s());
  return a;
}

void CudaBackend::finish_step() {
  const std::vector<int> flags = read_flags();  // synchronizes the stream: the step's one host wait
  timer_.collect();
  check_flags(flags);
}

std::vector<int> CudaBackend::read_flags() {
  std::vector<int> f(static_cast<size_t>(kFlagsPerLayer * c_.num_kv_layers()));
  HELIX_CUDA_CHECK(cudaMemcpyAsync(f.data(), flags_.data(), f.size() * sizeof(int), cudaMemcpyDeviceToHost, s()));
  HELIX_CUDA_CHECK(cudaStreamSynchronize(s()));
  return f;
}

// Throws for the first flagged (layer, block) in layer order, as the CPU backend would have.
void CudaBackend::check_flags(const std::vector<int>& f) const {
  for (int64_t l = 0; l < c_.num_kv_layers(); ++l) {
    const int* layer = f.data() + kFlagsPerLayer * l;
    HELIX_CHECK(!layer[0], "non-finite hidden state (NaN or Inf) after the attention of layer ", l, " on rank ",
                c_.rank);
    HELIX_CHECK(!layer[1], "non-finite router logits (NaN or Inf) in layer ", l, " on rank ", c_.rank);
    HELIX_CHECK(!layer[2], "non-finite hidden state (NaN or Inf) after the FFN of layer ", l, " on rank ", c_.rank);
  }
}

const void* CudaBackend::gemm_input(const float* x, int64_t rows, int64_t ld, int64_t width, DType w_dtype,
                                    int64_t& ld_out) {
  ld_out = ld;
  if (w_dtype == DType::Float32) return x;
  auto* y = static_cast<uint16_t*>(bf16_in_.get(static_cast<size_t>(std::max<int64_t>(rows * ld, 1)) * 2));
  detail::launch_to_bf16(x, y, rows > 0 ? (rows - 1) * ld + width : 0, s());  // the rows' span, strides kept
  return y;
}

void CudaBackend::helix_attention(const HelixAttentionParams& p, const HelixStageMark& mark) {
  HelixAttentionParams q = p;
  if (p.kv_dtype == DType::BFloat16 && p.q_dtype == DType::Float32) {  // the kernels read q as the cache
    auto* qb = static_cast<uint16_t*>(q_kv_.get(static_cast<size_t>(p.T * p.H * p.D) * 2));
    detail::launch_to_bf16(static_cast<const float*>(p.q), qb, p.T * p.H * p.D, s());
    q.q = qb;
    q.q_dtype = DType::BFloat16;
  }
  q.workspace = attention_ws_.get(std::max<size_t>(helix_attention_workspace_bytes(q, c_.cp), 16));
  launch_helix_attention(q, *cp_comm_, s(), mark);
}

void CudaBackend::moe_experts(const MoeExpertsParams& p) {
  if (moe_experts_supported(p.T, p.top_k, p.n_local, p.hidden, p.F) && p.gate_up_dtype == p.down_dtype) {
    MoeExpertsParams q = p;
    q.workspace = moe_ws_.get(std::max<size_t>(moe_experts_workspace_bytes(p), 16));
    launch_moe_experts(q, s());
    return;
  }
  // A longer chunk: the routing comes to the host, so a flagged step ends here, before any expert runs on
  // garbage (the flags are read with the routing).
  moe_grouped_.route_to_host(p, s());
  check_flags(read_flags());
  moe_grouped_.run(p, *this, s());
}

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(const EngineConfig& config, Communicator& world, int device, CudaComm comm) {
  HELIX_CHECK_ARG(config.n_routed_experts == 0 ||
                      (config.n_routed_experts <= kMoeRouteMaxExperts && config.n_group <= kMoeRouteMaxGroups),
                  "the CUDA MoE router handles at most ", kMoeRouteMaxExperts, " routed experts in at most ",
                  kMoeRouteMaxGroups, " groups, got ", config.n_routed_experts, " experts in ", config.n_group,
                  " groups (use device 'cpu')");
  HELIX_CHECK_ARG(device >= 0, "argument 'device' must be >= 0, got ", device);
  require_device();
  HELIX_CHECK_ARG(device < device_count(), "argument 'device' is ", device, " but ", device_count(),
                  " CUDA devices are visible");
  return std::make_unique<CudaBackend>(config, world, device, comm);
}

}  // namespace helix::cuda
