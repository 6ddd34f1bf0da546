// Device discovery, error checking, and the RAII owners of device memory and streams.
#include <cuda_runtime.h>

#include <string>
#include <utility>

#include "common.cuh"

namespace helix::cuda {

bool built_with_cuda() { return true; }

#ifdef HELIX_CUDA_EMULATOR
bool emulated() { return true; }
#else
bool emulated() { return false; }
#endif

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

void require_device() {
  if (device_count() == 0) {
    throw Error("no CUDA device is visible (helix was built with CUDA, but this machine has no usable GPU)");
  }
}

void set_device(int device) {
  require_device();
  HELIX_CUDA_CHECK(cudaSetDevice(device));
}

const char* device_name() {
  require_device();
  static thread_local cudaDeviceProp prop;
  int dev = 0;
  HELIX_CUDA_CHECK(cudaGetDevice(&dev));
  HELIX_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  return prop.name;
}

int multiprocessor_count() {
  require_device();
  // Asked at every attention launch (the split plan): cached per device, which never changes it.
  constexpr int kMaxDevices = 64;
  static thread_local int count[kMaxDevices] = {};
  int dev = 0, n = 0;
  HELIX_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < kMaxDevices && count[dev] > 0) return count[dev];
  HELIX_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  if (dev < kMaxDevices) count[dev] = n;
  return n;
}

void synchronize() { HELIX_CUDA_CHECK(cudaDeviceSynchronize()); }

namespace detail {
void check_cuda(int code, const char* expr, const char* file, int line) {
  if (code == static_cast<int>(cudaSuccess)) return;
  const auto err = static_cast<cudaError_t>(code);
  // The runtime also keeps this error as its "last error" (returned by the next cudaGetLastError):
  // clear it, or the next kernel launch's check (HELIX_CUDA_CHECK_LAUNCH) reports this old failure
  // against an innocent kernel. Sticky errors (a faulted context) come back from every later call anyway.
  cudaGetLastError();
  throw Error(::helix::detail::concat(file, ":", line, ": ", expr, " failed: ", cudaGetErrorName(err), " (",
                                      cudaGetErrorString(err), ")"));
}
}  // namespace detail

// ---- Stream -----------------------------------------------------------------------------------------

Stream::Stream() {
  require_device();
  cudaStream_t s = nullptr;
  HELIX_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  stream_ = s;
}

Stream::~Stream() {
  if (stream_ != nullptr) cudaStreamDestroy(stream_);  // destructors never throw
}

Stream::Stream(Stream&& other) noexcept : stream_(std::exchange(other.stream_, nullptr)) {}

Stream& Stream::operator=(Stream&& other) noexcept {
  if (this != &other) {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    stream_ = std::exchange(other.stream_, nullptr);
  }
  return *this;
}

void Stream::synchronize() const { HELIX_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

// ---- DeviceBuffer -----------------------------------------------------------------------------------

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes == 0) return;
  require_device();
  const cudaError_t err = cudaMalloc(&data_, bytes);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // not sticky: clear it, as check_cuda does
    int dev = 0;
    size_t free = 0, total = 0;
    cudaGetDevice(&dev);
    cudaMemGetInfo(&free, &total);
    using ::helix::detail::human_bytes;
    throw DeviceMemoryError(::helix::detail::concat("out of GPU memory: cannot allocate ", human_bytes(bytes),
                                                    " on device ", dev, " (", device_name(), "), ", human_bytes(free),
                                                    " free of ", human_bytes(total)));
  }
  HELIX_CUDA_CHECK(err);
}

DeviceBuffer::~DeviceBuffer() {
  if (data_ != nullptr) cudaFree(data_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) cudaFree(data_);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::copy_from_host(const void* src, size_t bytes, StreamHandle stream) {
  HELIX_CHECK(bytes <= bytes_, "DeviceBuffer::copy_from_host: ", bytes, " bytes into a buffer of ", bytes_);
  if (bytes == 0) return;
  HELIX_CUDA_CHECK(cudaMemcpyAsync(data_, src, bytes, cudaMemcpyHostToDevice, stream));
  HELIX_CUDA_CHECK(cudaStreamSynchronize(stream));
}

void DeviceBuffer::copy_to_host(void* dst, size_t bytes, StreamHandle stream) const {
  HELIX_CHECK(bytes <= bytes_, "DeviceBuffer::copy_to_host: ", bytes, " bytes from a buffer of ", bytes_);
  if (bytes == 0) return;
  HELIX_CUDA_CHECK(cudaMemcpyAsync(dst, data_, bytes, cudaMemcpyDeviceToHost, stream));
  HELIX_CUDA_CHECK(cudaStreamSynchronize(stream));
}

void DeviceBuffer::fill_zero(StreamHandle stream) {
  if (bytes_ == 0) return;
  HELIX_CUDA_CHECK(cudaMemsetAsync(data_, 0, bytes_, stream));
}

}  // namespace helix::cuda
