// Built when the CUDA toolkit is absent (HELIX_ENABLE_CUDA=OFF or no nvcc): every CUDA entry point that
// would touch a device throws helix::Error("helix was built without CUDA"); device_count() returns 0.
#include "bench.hpp"
#include "helix/backend.hpp"
#include "helix/cuda.hpp"
#include "helix/error.hpp"
#include "helix/helix_attention.hpp"
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
[[noreturn]] void no_cuda() { throw Error("helix was built without CUDA"); }
}  // namespace

bool built_with_cuda() { return false; }
bool emulated() { return false; }
bool built_with_cublas() { return false; }
int device_count() { return 0; }
void require_device() { no_cuda(); }
void set_device(int) { no_cuda(); }
const char* device_name() { no_cuda(); }
int multiprocessor_count() { no_cuda(); }
void synchronize() { no_cuda(); }

namespace detail {
void check_cuda(int code, const char*, const char*, int) {
  if (code != 0) no_cuda();
}
}  // namespace detail

Stream::Stream() { no_cuda(); }
Stream::~Stream() = default;
Stream::Stream(Stream&& other) noexcept : stream_(other.stream_) { other.stream_ = nullptr; }
Stream& Stream::operator=(Stream&& other) noexcept {
  stream_ = other.stream_;
  other.stream_ = nullptr;
  return *this;
}
void Stream::synchronize() const { no_cuda(); }

DeviceBuffer::DeviceBuffer(size_t bytes) {
  if (bytes != 0) no_cuda();
}
DeviceBuffer::~DeviceBuffer() = default;
DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept : data_(other.data_), bytes_(other.bytes_) {
  other.data_ = nullptr;
  other.bytes_ = 0;
}
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  data_ = other.data_;
  bytes_ = other.bytes_;
  other.data_ = nullptr;
  other.bytes_ = 0;
  return *this;
}
void DeviceBuffer::copy_from_host(const void*, size_t, StreamHandle) { no_cuda(); }
void DeviceBuffer::copy_to_host(void*, size_t, StreamHandle) const { no_cuda(); }
void DeviceBuffer::fill_zero(StreamHandle) { no_cuda(); }

int attention_num_splits(const PagedMlaAttentionParams&) { no_cuda(); }
int64_t attention_workspace_floats(const PagedMlaAttentionParams&) { no_cuda(); }
bool tensor_core_attention_supported(int64_t D, int64_t R) {
  return D % 16 == 0 && D <= 1024 && R % 64 == 0 && R > 0 && R <= 512 && R <= D;
}
void launch_paged_mla_attention(const PagedMlaAttentionParams&, AttentionKernel, StreamHandle) { no_cuda(); }
void launch_merge_states(const MergeStatesParams&, StreamHandle) { no_cuda(); }
void launch_kv_append(const KvAppendParams&, StreamHandle) { no_cuda(); }
void launch_rms_norm(const RmsNormParams&, StreamHandle) { no_cuda(); }
void launch_rope(const RopeParams&, StreamHandle) { no_cuda(); }
void launch_silu_mul(const SiluMulParams&, StreamHandle) { no_cuda(); }
void launch_moe_route(const MoeRouteParams&, StreamHandle) { no_cuda(); }
size_t moe_experts_workspace_bytes(const MoeExpertsParams&) { no_cuda(); }
void launch_moe_experts(const MoeExpertsParams&, StreamHandle) { no_cuda(); }
void launch_linear(const LinearParams&, StreamHandle) { no_cuda(); }
void launch_head_linear(const HeadLinearParams&, StreamHandle) { no_cuda(); }
void launch_embedding(const EmbeddingParams&, StreamHandle) { no_cuda(); }
size_t helix_attention_workspace_bytes(const HelixAttentionParams&, int64_t) { no_cuda(); }
void launch_helix_attention(const HelixAttentionParams&, Communicator&, StreamHandle, const HelixStageMark&) {
  no_cuda();
}

std::unique_ptr<Communicator> make_host_staged_communicator(std::unique_ptr<Communicator>, StreamHandle) { no_cuda(); }
BenchResult bench_copy(size_t, int) { no_cuda(); }
BenchResult bench_gemm_bf16(int64_t, int64_t, int64_t, int) { no_cuda(); }
BenchResult bench_paged_mla_attention(int64_t, int64_t, int64_t, int64_t, int64_t, AttentionKernel, int, int) {
  no_cuda();
}
BenchResult bench_merge_states(int64_t, int64_t, int64_t, int) { no_cuda(); }
BenchResult bench_moe_experts(int64_t, int64_t, int64_t, int64_t, int64_t, int) { no_cuda(); }

std::unique_ptr<Backend> make_cuda_backend(const EngineConfig&, Communicator&, int, CudaComm) { no_cuda(); }

}  // namespace helix::cuda
