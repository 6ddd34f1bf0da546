// The device interface the decoder step is written against (cpp/src/decoder.cpp), once for every device:
// CpuBackend (cpp/src/cpu_backend.cpp) and CudaBackend (cuda/cuda_backend.cu). Every op is pure virtual,
// so a device that lacks one does not compile (make_cpu_backend / cuda::make_cuda_backend instantiate them).
//
// Memory: every pointer an op takes is in the backend's memory (host or device): the weights it stored,
// its KV pools, its step arrays and its scratch buffers. Ops take the Params of helix/ops/<op>.hpp (and
// helix/helix_attention.hpp) with float32 activations; a backend may round an activation to the dtype its
// kernel reads (CUDA: a bfloat16 GEMM input for bfloat16 weights, bfloat16 attention queries for a
// bfloat16 cache), never a weight or the cache. Ops are ordered: a backend may run them asynchronously
// (CUDA: one stream) until finish_step, which waits for them and reports the first non-finite value flagged
// by add_residual or moe_route (layer order), as a CPU backend throws it at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "helix/block_table.hpp"
#include "helix/comm.hpp"
#include "helix/device.hpp"
#include "helix/engine_config.hpp"
#include "helix/helix_attention.hpp"
#include "helix/ops/embedding.hpp"
#include "helix/ops/head_linear.hpp"
#include "helix/ops/linear.hpp"
#include "helix/ops/moe_experts.hpp"
#include "helix/ops/moe_route.hpp"
#include "helix/ops/rms_norm.hpp"
#include "helix/ops/rope.hpp"
#include "helix/ops/silu_mul.hpp"
#include "helix/tensor.hpp"

namespace helix {

// Time spent per component over the engine's life (seconds, this rank): host clock on the CPU, CUDA events
// on the engine's stream (exchange and all-reduce include the wait for the peers).
struct EngineTimings {
  double attention_s = 0, exchange_s = 0, linear_s = 0, moe_s = 0, allreduce_s = 0, other_s = 0;
  int64_t steps = 0;
};

// The scratch buffers of a step, by role (each grows as needed and keeps its memory between steps).
enum class Buffer : uint8_t {
  Hidden,             // [T, hidden] f32   the residual stream h
  Normed,             // [T, hidden] f32   rms_norm(h)
  QueryLora,          // [T, q_lora_rank]
  Query,              // [T, H_tp, Dn + P]
  KvLatent,           // [T, R + P] f32    kv_a output: c_kv | k_pe
  NewKv,              // [T, R + P]        kv_dtype: the rows helix_attention appends
  QueryAbsorbed,      // [T, H_tp, R + P]  f32
  Attention,          // [T, H_c, W]       helix_attention's output
  AttentionV,         // [T, H_c, Dv]      after W_UV
  Output,             // [T, hidden]       a block's output before the all-reduce
  GateUp,             // [T, 2F]
  Activation,         // [T, F]
  RouterLogits,       // [T, E]
  RouteIdx,           // [T, top_k] i32
  RouteWeight,        // [T, top_k] f32
  LogitRows,          // [L, hidden]       the normed rows whose logits are returned
  HiddenRows,         // [H, hidden]       the normed rows whose final hidden states are returned
  MtpInput,           // [T, 2 * hidden]   the MTP layer's [enorm(embed(next token)) | hnorm(hidden)]
  Logits,             // [L, vocab_shard]
  LogitsGathered,     // [world, L, vocab_shard]
  AttentionWorkspace  // helix_attention's partial states and exchange buffers (CPU; the GPU keeps its own)
};
inline constexpr int kNumBuffers = static_cast<int>(Buffer::AttentionWorkspace) + 1;

// Where a flagged non-finite hidden state came from (the error names the layer and this).
enum class Block : uint8_t { Attention, Ffn };

// What the engine validated and committed for one step (host memory).
struct StepInput {
  const int64_t* tokens = nullptr;      // [T]
  StepTokens step;                      // positions [T], q_seq_index [T], seq_ids [B]
  const int64_t* new_rows = nullptr;    // [T] pool row of each token this rank owns, -1 for the others
  const int64_t* logit_rows = nullptr;  // [L] in [0, T)
  int64_t L = 0;
  const int64_t* hidden_rows = nullptr;  // [H] in [0, T): rows whose final hidden states are returned
  int64_t H = 0;
  const BatchView* batch = nullptr;  // this rank's blocks and slots of the B sequences, after the commit
  const BlockTable* table = nullptr;
  bool mtp = false;  // a step of the MTP layer: `table` is its own, so are its pool rows' positions (kv_pos)
};

// The same arrays in the backend's memory, for the ops' Params.
struct StepArrays {
  const int64_t* tokens = nullptr;        // [T]
  const int64_t* positions = nullptr;     // [T]
  const int64_t* q_seq = nullptr;         // [T]
  const int64_t* new_rows = nullptr;      // [T]
  const int64_t* logit_rows = nullptr;    // [L]
  const int64_t* hidden_rows = nullptr;   // [H]
  const int32_t* block_tables = nullptr;  // [B, max_blocks]
  const int64_t* num_slots = nullptr;     // [B]
  const int64_t* kv_pos = nullptr;        // [num_kv_blocks * tokens_per_block] position of each pool row
  const float* rope_inv_freq = nullptr;   // [P / 2]
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;

  // ---- memory ----
  // Stores a copy of weight `name` (host memory, checked by the engine); returns the stored view.
  virtual TensorView store_weight(const std::string& name, const TensorView& host) = 0;
  // Scratch of at least `bytes` for `role`; valid until the next call for the same role.
  virtual void* scratch(Buffer role, size_t bytes) = 0;
  // [num_kv_blocks * tokens_per_block, R + P] of kv_dtype: the KV rows of layer `layer`.
  virtual void* kv_pool(int64_t layer) = 0;
  // Bytes of memory the backend holds (weights, KV pools, workspaces).
  virtual int64_t memory_bytes() const = 0;
  // Writes pseudo-random rows, uniform in [-scale, scale), at pool rows `rows`, which then hold global positions
  // `positions`: into every model layer's pool, or with `mtp` into the MTP layer's only (its own rows and
  // positions). Benchmark aid: fill_sequence_random, fill_mtp_sequence_random.
  virtual void fill_kv_random(const std::vector<int64_t>& rows, const std::vector<int64_t>& positions, uint64_t seed,
                              float scale, bool mtp) = 0;

  // The KV hand-off (helix/kv_transfer.hpp), synchronous: host [num_layers, n, R + P] of kv_dtype <-> pool
  // rows `rows` [n] of every layer; written rows then hold global positions `positions` [n].
  virtual void read_kv_rows(const std::vector<int64_t>& rows, void* host) = 0;
  virtual void write_kv_rows(const std::vector<int64_t>& rows, const std::vector<int64_t>& positions,
                             const void* host) = 0;

  // ---- a step ----
  virtual StepArrays begin_step(const StepInput& in) = 0;
  // Charges the time since the previous mark (or begin_step) to `component`.
  virtual void mark(double* component) = 0;
  // Copies `bytes` of backend memory to the host; the host bytes are valid after finish_step.
  virtual void download(void* host, const void* src, size_t bytes) = 0;
  // Copies `bytes` of host memory (kept by the caller until finish_step) into backend memory.
  virtual void upload(void* dst, const void* host, size_t bytes) = 0;
  // Waits for the step's work (the marks' times are added then) and throws for the first non-finite value
  // flagged.
  virtual void finish_step() = 0;

  // ---- ops ----
  virtual void embedding(const EmbeddingParams& p) = 0;
  virtual void linear(const LinearParams& p) = 0;
  virtual void head_linear(const HeadLinearParams& p) = 0;
  virtual void rms_norm(const RmsNormParams& p) = 0;
  virtual void rope(const RopeParams& p) = 0;
  virtual void silu_mul(const SiluMulParams& p) = 0;
  // dst[i, :width] = src[rows[i], :width] (f32 rows of src ld_src apart, dst dense), rows [n] in backend memory.
  virtual void gather_rows(float* dst, const float* src, int64_t ld_src, const int64_t* rows, int64_t n,
                           int64_t width) = 0;
  // `rows` rows of `width` f32 values: dst (pitch ld_dst elements) = src (pitch ld_src).
  virtual void copy_rows(float* dst, int64_t ld_dst, const float* src, int64_t ld_src, int64_t width, int64_t rows) = 0;
  virtual void zero(void* x, size_t bytes) = 0;
  // y[n] = x[n] in y_dtype (Float32: a copy; BFloat16: round to nearest even).
  virtual void convert(const float* x, void* y, DType y_dtype, int64_t n) = 0;
  // h[n] += y[n]; a non-finite result is reported with `layer` and `block` (CPU: now; CUDA: at finish_step).
  virtual void add_residual(float* h, const float* y, int64_t n, int64_t layer, Block block) = 0;
  // The step over this rank's CP group; `mark` is called as each stage ends.
  virtual void helix_attention(const HelixAttentionParams& p, const HelixStageMark& mark) = 0;
  // Whether helix_attention(p) runs the expanded form (CPU, helix_attention_expanded.hpp), which never reads
  // p.q: the caller may then skip the absorb. Decided from everything in p but q.
  virtual bool expanded_attention(const HelixAttentionParams& p) = 0;
  // Non-finite router logits are reported with `layer`; routing still runs (on zeros in their place).
  virtual void moe_route(const MoeRouteParams& p, int64_t layer) = 0;
  virtual void moe_experts(const MoeExpertsParams& p) = 0;
  // Sum over all ranks of the engine, in place (nothing with one rank).
  virtual void all_reduce(float* x, int64_t n) = 0;
  // recv [world, n] = every rank's send [n] (a copy with one rank).
  virtual void all_gather(const float* send, float* recv, int64_t n) = 0;
};

// How the ranks' GPUs talk: NCCL (one GPU per rank), or the host communicator with device buffers staged
// through host memory (ranks may share a GPU; slower).
enum class CudaComm : uint8_t { Nccl, Host };

// Where an engine runs.
struct EngineDevice {
  Device kind = Device::Cpu;
  int cuda_device = 0;  // this rank's CUDA device
  CudaComm comm = CudaComm::Nccl;
};

// The backends, for a validated config whose world matches `world` (the host communicator of all tp*cp
// ranks). The CPU backend splits its CP group from `world`; the CUDA backend bootstraps NCCL over it
// (or stages through it) and allocates its KV pools on the device (DeviceMemoryError naming what did not
// fit). Without CUDA, cuda::make_cuda_backend throws "built without CUDA" (cuda/no_cuda.cpp).
std::unique_ptr<Backend> make_cpu_backend(const EngineConfig& config, Communicator& world);
namespace cuda {
std::unique_ptr<Backend> make_cuda_backend(const EngineConfig& config, Communicator& world, int device, CudaComm comm);
}  // namespace cuda

}  // namespace helix
