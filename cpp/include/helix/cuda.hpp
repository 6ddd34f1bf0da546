// The CUDA backend's host API. Implemented in cuda/ when built with CUDA, else by cuda/no_cuda.cpp and
// cuda/no_nccl.cpp, whose functions report that the backend is absent: every function that would touch a
// device throws helix::Error("helix was built without CUDA"); device_count() returns 0.
//
// No CUDA header is included here (cpp/ stays CUDA-free): a stream is passed as the opaque `StreamHandle`
// (helix/device.hpp, the same type as cudaStream_t), and every pointer in a params struct is a device pointer.
// Launch functions validate nothing: the op boundary (bindings, engine) checks shapes once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "helix/comm.hpp"
#include "helix/device.hpp"
#include "helix/dtype.hpp"

namespace helix::cuda {

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

// ---- kernels ------------------------------------------------------------------------------------

// One header per op, cpp/include/helix/ops/<op>.hpp: its Params, check_<op>_args, <op>_cpu and
// cuda::launch_<op>.

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

}  // namespace helix::cuda
