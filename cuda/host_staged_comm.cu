// Device buffers over a host communicator (MPI): every collective copies its device buffers to host
// memory on the engine's stream, runs on the host communicator, and copies the result back. For ranks
// that share a GPU (NCCL refuses two ranks on one device) and for builds without NCCL; two PCIe copies
// per collective make it slower than NCCL.
#include <cuda_runtime.h>

#include <utility>
#include <vector>

#include "common.cuh"

namespace helix::cuda {

namespace {

class HostStagedCommunicator final : public Communicator {
 public:
  HostStagedCommunicator(std::unique_ptr<Communicator> host, StreamHandle stream)
      : host_(std::move(host)), stream_(stream) {}

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }

  void all_to_all(const void* send, void* recv, size_t block_bytes) override {
    const size_t total = block_bytes * static_cast<size_t>(size());
    down(send, total, a_);
    b_.resize(total);
    host_->all_to_all(a_.data(), b_.data(), block_bytes);
    up(b_, recv, total);
  }
  void all_reduce_sum(void* data, int64_t count, DType dtype) override {
    HELIX_CHECK_ARG(count >= 0, "all_reduce_sum: count must be >= 0, got ", count);
    const size_t bytes = static_cast<size_t>(count) * dtype_size(dtype);
    down(data, bytes, a_);
    host_->all_reduce_sum(a_.data(), count, dtype);
    up(a_, data, bytes);
  }
  void all_gather(const void* send, void* recv, size_t block_bytes) override {
    const size_t total = block_bytes * static_cast<size_t>(size());
    down(send, block_bytes, a_);
    b_.resize(total);
    host_->all_gather(a_.data(), b_.data(), block_bytes);
    up(b_, recv, total);
  }
  void broadcast(void* data, size_t bytes, int root) override {
    HELIX_CHECK_ARG(root >= 0 && root < size(), "broadcast: root ", root, " out of range [0, ", size(), ")");
    down(data, bytes, a_);
    host_->broadcast(a_.data(), bytes, root);
    up(a_, data, bytes);
  }
  void barrier() override {
    HELIX_CUDA_CHECK(cudaStreamSynchronize(stream_));  // as NCCL's: the rank's queued work is done first
    host_->barrier();
  }
  std::unique_ptr<Communicator> split(int color, int key) override {
    return std::make_unique<HostStagedCommunicator>(host_->split(color, key), stream_);
  }

 private:
  // Device -> host once the stream has produced the bytes.
  void down(const void* dev, size_t bytes, std::vector<unsigned char>& host) {
    host.resize(bytes);
    if (bytes > 0) HELIX_CUDA_CHECK(cudaMemcpyAsync(host.data(), dev, bytes, cudaMemcpyDeviceToHost, stream_));
    HELIX_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  // Host -> device; waits for the copy, since the host buffer is reused by the next call.
  void up(const std::vector<unsigned char>& host, void* dev, size_t bytes) {
    if (bytes == 0) return;
    HELIX_CUDA_CHECK(cudaMemcpyAsync(dev, host.data(), bytes, cudaMemcpyHostToDevice, stream_));
    HELIX_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  std::unique_ptr<Communicator> host_;
  StreamHandle stream_;
  std::vector<unsigned char> a_, b_;  // host staging, reused
};

}  // namespace

std::unique_ptr<Communicator> make_host_staged_communicator(std::unique_ptr<Communicator> host, StreamHandle stream) {
  HELIX_CHECK_ARG(host != nullptr, "make_host_staged_communicator: argument 'host' is null");
  return std::make_unique<HostStagedCommunicator>(std::move(host), stream);
}

}  // namespace helix::cuda
