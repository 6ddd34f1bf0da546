// The CPU backend of the decoder (contract: helix/backend.hpp): host memory, the CPU kernels, the CP group
// split from the host communicator, host-clock timings; non-finite values throw as they are found.
#include <chrono>
#include <cmath>
#include <cstring>
#include <random>

#include "helix/backend.hpp"
#include "helix/helix_attention_expanded.hpp"
#include "helix/kv_pool.hpp"

namespace helix {

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

class CpuBackend final : public Backend {
 public:
  CpuBackend(const EngineConfig& config, Communicator& world)
      : c_(config),
        world_(world),
        cp_comm_(world.split(static_cast<int>(c_.tp_rank()), static_cast<int>(c_.cp_rank()))) {
    pools_.reserve(static_cast<size_t>(c_.num_kv_layers()));
    for (int64_t l = 0; l < c_.num_kv_layers(); ++l) {
      pools_.emplace_back(c_.num_kv_blocks, c_.tokens_per_block, c_.kv_row_width(), c_.kv_dtype);
    }
  }

  Device device() const override { return Device::Cpu; }

  TensorView store_weight(const std::string& name, const TensorView& host) override {
    std::vector<unsigned char>& dst = weights_[name];
    const auto* src = static_cast<const unsigned char*>(host.data);
    dst.assign(src, src + host.nbytes());
    return TensorView{dst.data(), host.dtype, host.shape};
  }
  void* scratch(Buffer role, size_t bytes) override {
    std::vector<unsigned char>& buf = scratch_[static_cast<size_t>(role)];
    if (buf.size() < bytes) buf.resize(bytes);
    return buf.data();
  }
  void* kv_pool(int64_t layer) override { return pools_[static_cast<size_t>(layer)].data(); }
  int64_t memory_bytes() const override {
    int64_t total = 0;
    for (const auto& [name, w] : weights_) total += static_cast<int64_t>(w.size());
    for (const KVPool& p : pools_) total += p.num_rows() * p.row_bytes();
    for (const auto& s : scratch_) total += static_cast<int64_t>(s.size());
    return total;
  }
  void fill_kv_random(const std::vector<int64_t>& rows, const std::vector<int64_t>&, uint64_t seed, float scale,
                      bool mtp) override {
    std::vector<float> values(static_cast<size_t>(c_.kv_row_width()));  // one row
    // The MTP layer's pool follows the model's (index num_layers).
    for (int64_t l = mtp ? c_.num_layers : 0; l < (mtp ? c_.num_kv_layers() : c_.num_layers); ++l) {
      std::mt19937_64 rng(seed + 0x632BE59BD9B4E019ull * static_cast<uint64_t>(l + 1));
      std::uniform_real_distribution<float> uniform(-scale, scale);
      for (int64_t row : rows) {
        for (float& v : values) v = uniform(rng);
        convert(values.data(), pools_[static_cast<size_t>(l)].row(row), c_.kv_dtype, c_.kv_row_width());
      }
    }
  }

  void read_kv_rows(const std::vector<int64_t>& rows, void* host) override {
    auto* dst = static_cast<unsigned char*>(host);
    for (int64_t l = 0; l < c_.num_layers; ++l) {  // the model's layers: the MTP layer's rows stay
      const KVPool& pool = pools_[static_cast<size_t>(l)];
      for (int64_t row : rows) {
        std::memcpy(dst, pool.row(row), static_cast<size_t>(pool.row_bytes()));
        dst += pool.row_bytes();
      }
    }
  }
  void write_kv_rows(const std::vector<int64_t>& rows, const std::vector<int64_t>&, const void* host) override {
    const auto n = static_cast<int64_t>(rows.size());
    const auto* src = static_cast<const unsigned char*>(host);
    for (int64_t l = 0; l < c_.num_layers; ++l) {
      KVPool& pool = pools_[static_cast<size_t>(l)];
      pool.write_rows(rows.data(), n, src);
      src += n * pool.row_bytes();
    }
  }

  StepArrays begin_step(const StepInput& in) override {
    last_mark_ = now();
    return StepArrays{in.tokens,
                      in.step.positions,
                      in.step.q_seq_index,
                      in.new_rows,
                      in.logit_rows,
                      in.hidden_rows,
                      in.batch->block_tables.data(),
                      in.batch->num_slots.data(),
                      in.table->row_positions(),
                      c_.rope_inv_freq.data()};
  }
  void mark(double* component) override {
    const double t = now();
    *component += t - last_mark_;
    last_mark_ = t;
  }
  void download(void* host, const void* src, size_t bytes) override {
    if (bytes > 0) std::memcpy(host, src, bytes);  // a step may return no logit rows (host == nullptr)
  }
  void upload(void* dst, const void* host, size_t bytes) override {
    if (bytes > 0) std::memcpy(dst, host, bytes);
  }
  void finish_step() override {}

  void embedding(const EmbeddingParams& p) override { embedding_cpu(p); }
  void linear(const LinearParams& p) override { linear_cpu(p); }
  void head_linear(const HeadLinearParams& p) override { head_linear_cpu(p); }
  void rms_norm(const RmsNormParams& p) override { rms_norm_cpu(p); }
  void rope(const RopeParams& p) override { rope_cpu(p); }
  void silu_mul(const SiluMulParams& p) override { silu_mul_cpu(p); }
  void gather_rows(float* dst, const float* src, int64_t ld_src, const int64_t* rows, int64_t n,
                   int64_t width) override {
    for (int64_t i = 0; i < n; ++i)
      std::memcpy(dst + i * width, src + rows[i] * ld_src, static_cast<size_t>(width) * 4);
  }
  void copy_rows(float* dst, int64_t ld_dst, const float* src, int64_t ld_src, int64_t width, int64_t rows) override {
    for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * ld_dst, src + r * ld_src, static_cast<size_t>(width) * 4);
  }
  void zero(void* x, size_t bytes) override { std::memset(x, 0, bytes); }
  void convert(const float* x, void* y, DType y_dtype, int64_t n) override {
    if (y_dtype == DType::Float32) {
      std::memcpy(y, x, static_cast<size_t>(n) * 4);
    } else {
      auto* out = static_cast<bf16_t*>(y);
      for (int64_t i = 0; i < n; ++i) out[i] = float_to_bf16(x[i]);
    }
  }
  // h is replicated (after the all-reduce), so every rank throws the same error at the same point.
  void add_residual(float* h, const float* y, int64_t n, int64_t layer, Block block) override {
    bool finite = true;
    for (int64_t i = 0; i < n; ++i) {
      h[i] += y[i];
      finite &= std::isfinite(h[i]);
    }
    HELIX_CHECK(finite, "non-finite hidden state (NaN or Inf) after the ",
                block == Block::Attention ? "attention" : "FFN", " of layer ", layer, " on rank ", c_.rank);
  }
  bool expanded_attention(const HelixAttentionParams& p) override {
    return choose_attention_form(p) == AttentionForm::Expanded;
  }
  void helix_attention(const HelixAttentionParams& p, const HelixStageMark& mark) override {
    HelixAttentionParams with_workspace = p;
    with_workspace.workspace =
        scratch(Buffer::AttentionWorkspace, helix_attention_workspace_bytes_cpu(p, cp_comm_->size()));
    helix_attention_cpu(with_workspace, *cp_comm_, mark);
  }
  void moe_route(const MoeRouteParams& p, int64_t layer) override {
    for (int64_t i = 0; i < p.T * p.E; ++i) {
      HELIX_CHECK(std::isfinite(p.logits[i]), "non-finite router logits (NaN or Inf) in layer ", layer, " on rank ",
                  c_.rank);
    }
    moe_route_cpu(p);
  }
  void moe_experts(const MoeExpertsParams& p) override { moe_experts_cpu(p); }
  void all_reduce(float* x, int64_t n) override {
    if (c_.world() > 1) world_.all_reduce_sum(x, n, DType::Float32);
  }
  void all_gather(const float* send, float* recv, int64_t n) override {
    world_.all_gather(send, recv, static_cast<size_t>(n) * 4);
  }

 private:
  const EngineConfig c_;
  Communicator& world_;
  std::unique_ptr<Communicator> cp_comm_;  // consecutive ranks: the CP group of this TP rank
  std::vector<KVPool> pools_;              // per layer: [num_kv_blocks * tokens_per_block, R + P]
  std::map<std::string, std::vector<unsigned char>> weights_;
  std::vector<unsigned char> scratch_[kNumBuffers];
  double last_mark_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(const EngineConfig& config, Communicator& world) {
  return std::make_unique<CpuBackend>(config, world);
}

}  // namespace helix
