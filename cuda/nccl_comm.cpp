// NCCL communicator behind helix::Communicator. Buffers are device pointers; every collective is
// enqueued on the runtime's stream. A blocking communicator returns once the stream has finished it (the
// interface's contract); a stream-ordered one (the CUDA engine's) returns at once: later work on the same
// stream sees the result, the host after a stream synchronize. That saves a host round trip per collective. The unique
// id is bootstrapped over an existing (MPI or self) communicator.
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <utility>

#include "helix/cuda.hpp"
#include "helix/error.hpp"

namespace helix::cuda {

namespace {

static_assert(sizeof(ncclUniqueId) == kNcclUniqueIdBytes, "NcclUniqueId must match ncclUniqueId");

void check_nccl(ncclResult_t r, const char* expr, const char* file, int line) {
  if (r == ncclSuccess) return;
  throw Error(::helix::detail::concat(file, ":", line, ": ", expr, " failed: ", ncclGetErrorString(r)));
}
#define HELIX_NCCL_CHECK(expr) check_nccl((expr), #expr, __FILE__, __LINE__)

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int rank, int size, StreamHandle stream, bool stream_ordered)
      : comm_(comm), rank_(rank), size_(size), stream_(stream), stream_ordered_(stream_ordered) {}
  ~NcclCommunicator() override {
    if (comm_ != nullptr) ncclCommDestroy(comm_);
  }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  // Grouped point-to-point: one ncclSend and one ncclRecv per peer (the packed (o, lse) exchange).
  void all_to_all(const void* send, void* recv, size_t block_bytes) override {
    const auto* s = static_cast<const char*>(send);
    auto* r = static_cast<char*>(recv);
    HELIX_NCCL_CHECK(ncclGroupStart());
    for (int peer = 0; peer < size_; ++peer) {
      HELIX_NCCL_CHECK(ncclSend(s + peer * block_bytes, block_bytes, ncclChar, peer, comm_, stream_));
      HELIX_NCCL_CHECK(ncclRecv(r + peer * block_bytes, block_bytes, ncclChar, peer, comm_, stream_));
    }
    HELIX_NCCL_CHECK(ncclGroupEnd());
    finish();
  }

  // Note: NCCL sums bf16 in bf16 per reduction step (not in fp32 as the MPI backend does); with few
  // ranks the difference is within one bf16 rounding per step.
  void all_reduce_sum(void* data, int64_t count, DType dtype) override {
    HELIX_CHECK_ARG(dtype == DType::Float32 || dtype == DType::BFloat16,
                    "all_reduce_sum: dtype must be float32 or bfloat16, got ", dtype_name(dtype));
    const ncclDataType_t t = dtype == DType::Float32 ? ncclFloat32 : ncclBfloat16;
    HELIX_NCCL_CHECK(ncclAllReduce(data, data, static_cast<size_t>(count), t, ncclSum, comm_, stream_));
    finish();
  }

  void all_gather(const void* send, void* recv, size_t block_bytes) override {
    HELIX_NCCL_CHECK(ncclAllGather(send, recv, block_bytes, ncclChar, comm_, stream_));
    finish();
  }

  void broadcast(void* data, size_t bytes, int root) override {
    HELIX_CHECK_ARG(root >= 0 && root < size_, "broadcast: root ", root, " out of range [0, ", size_, ")");
    HELIX_NCCL_CHECK(ncclBroadcast(data, data, bytes, ncclChar, root, comm_, stream_));
    finish();
  }

  // An all-reduce of one float: no rank returns before every rank has entered (stream-ordered or not).
  void barrier() override {
    if (barrier_buf_ == nullptr) barrier_buf_ = std::make_unique<DeviceBuffer>(sizeof(float));
    HELIX_NCCL_CHECK(
        ncclAllReduce(barrier_buf_->data(), barrier_buf_->data(), 1, ncclFloat32, ncclSum, comm_, stream_));
    HELIX_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  std::unique_ptr<Communicator> split(int color, int key) override {
    ncclComm_t sub = nullptr;
    HELIX_NCCL_CHECK(ncclCommSplit(comm_, color, key, &sub, nullptr));
    HELIX_CHECK(sub != nullptr, "NCCL split: this rank's color gave no communicator");
    int r = 0, n = 0;
    HELIX_NCCL_CHECK(ncclCommUserRank(sub, &r));
    HELIX_NCCL_CHECK(ncclCommCount(sub, &n));
    return std::make_unique<NcclCommunicator>(sub, r, n, stream_, stream_ordered_);
  }

 private:
  void finish() {
    if (!stream_ordered_) HELIX_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  ncclComm_t comm_;
  int rank_, size_;
  StreamHandle stream_;
  bool stream_ordered_;
  std::unique_ptr<DeviceBuffer> barrier_buf_;
};

// Host buffers in and out, NCCL in between: every call stages its buffers through device memory on the
// shared stream (for Python and tests; the engine hands NCCL device buffers directly).
class NcclHostCommunicator final : public Communicator {
 public:
  NcclHostCommunicator(std::shared_ptr<Stream> stream, std::unique_ptr<Communicator> device_comm)
      : stream_(std::move(stream)), dev_(std::move(device_comm)) {}

  int rank() const override { return dev_->rank(); }
  int size() const override { return dev_->size(); }

  void all_to_all(const void* send, void* recv, size_t block_bytes) override {
    const size_t total = block_bytes * static_cast<size_t>(size());
    DeviceBuffer a = upload(send, total), b(std::max<size_t>(total, 1));
    dev_->all_to_all(a.data(), b.data(), block_bytes);
    b.copy_to_host(recv, total, stream_->handle());
  }
  void all_reduce_sum(void* data, int64_t count, DType dtype) override {
    HELIX_CHECK_ARG(count >= 0, "all_reduce_sum: count must be >= 0, got ", count);
    const size_t bytes = static_cast<size_t>(count) * dtype_size(dtype);
    DeviceBuffer a = upload(data, bytes);
    dev_->all_reduce_sum(a.data(), count, dtype);
    a.copy_to_host(data, bytes, stream_->handle());
  }
  void all_gather(const void* send, void* recv, size_t block_bytes) override {
    const size_t total = block_bytes * static_cast<size_t>(size());
    DeviceBuffer a = upload(send, block_bytes), b(std::max<size_t>(total, 1));
    dev_->all_gather(a.data(), b.data(), block_bytes);
    b.copy_to_host(recv, total, stream_->handle());
  }
  void broadcast(void* data, size_t bytes, int root) override {
    DeviceBuffer a = upload(data, bytes);
    dev_->broadcast(a.data(), bytes, root);
    a.copy_to_host(data, bytes, stream_->handle());
  }
  void barrier() override { dev_->barrier(); }
  std::unique_ptr<Communicator> split(int color, int key) override {
    return std::make_unique<NcclHostCommunicator>(stream_, dev_->split(color, key));
  }

 private:
  DeviceBuffer upload(const void* src, size_t bytes) {
    DeviceBuffer b(std::max<size_t>(bytes, 1));
    b.copy_from_host(src, bytes, stream_->handle());
    return b;
  }
  std::shared_ptr<Stream> stream_;  // shared with the communicators split from this one
  std::unique_ptr<Communicator> dev_;
};

}  // namespace

bool built_with_nccl() { return true; }

NcclUniqueId nccl_unique_id() {
  ncclUniqueId id;
  HELIX_NCCL_CHECK(ncclGetUniqueId(&id));
  NcclUniqueId out;
  std::memcpy(out.bytes, &id, sizeof id);
  return out;
}

std::unique_ptr<Communicator> make_nccl_communicator(int rank, int size, const NcclUniqueId& id, StreamHandle stream,
                                                     bool stream_ordered) {
  HELIX_CHECK_ARG(size >= 1 && rank >= 0 && rank < size, "make_nccl_communicator: rank ", rank,
                  " out of range for size ", size);
  require_device();
  ncclUniqueId nid;
  std::memcpy(&nid, id.bytes, sizeof nid);
  ncclComm_t comm = nullptr;
  HELIX_NCCL_CHECK(ncclCommInitRank(&comm, size, nid, rank));
  return std::make_unique<NcclCommunicator>(comm, rank, size, stream, stream_ordered);
}

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, StreamHandle stream,
                                                     bool stream_ordered) {
  NcclUniqueId id{};
  if (bootstrap.rank() == 0) id = nccl_unique_id();
  bootstrap.broadcast(id.bytes, sizeof id.bytes, 0);
  return make_nccl_communicator(bootstrap.rank(), bootstrap.size(), id, stream, stream_ordered);
}

}  // namespace helix::cuda

namespace helix::cuda {

std::unique_ptr<Communicator> make_nccl_host_communicator(Communicator& bootstrap) {
  require_device();
  auto stream = std::make_shared<Stream>();
  auto dev = make_nccl_communicator(bootstrap, stream->handle());
  return std::make_unique<NcclHostCommunicator>(std::move(stream), std::move(dev));
}

}  // namespace helix::cuda
