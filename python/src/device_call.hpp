// Runs one CUDA op on host (NumPy) arrays, so that helix._core.cuda's twin of a CPU op takes the same
// arguments and returns the same types: every array the op reads or writes is copied to the device before
// the launch, and every output back into its host array after it. The same host array maps to one device
// buffer (an in-place op's x and out). Raises helix.HelixError without CUDA or without a device.
#pragma once

#include <utility>
#include <vector>

#include "helix/cuda.hpp"
#include "helix/tensor.hpp"

namespace helix::bind {

class DeviceCall {
 public:
  DeviceCall();
  // The device copy of `host` (made on first use).
  template <class T>
  T* in(const TensorView& host) {
    return static_cast<T*>(copy(host));
  }
  // The device copy of `host`, copied back into `host` by finish() (its contents are uploaded too, for
  // accumulating and in-place ops).
  template <class T>
  T* out(const TensorView& host) {
    outputs_.push_back(host);
    return static_cast<T*>(copy(host));
  }
  // Device scratch of `bytes` (e.g. a kernel's workspace).
  void* scratch(size_t bytes);
  // Waits for the device and copies every output back.
  void finish();

 private:
  void* copy(const TensorView& host);
  std::vector<std::pair<const void*, cuda::DeviceBuffer>> buffers_;  // by host address
  std::vector<TensorView> outputs_;
  std::vector<cuda::DeviceBuffer> scratch_;
};

}  // namespace helix::bind
