#include "device_call.hpp"

#include <algorithm>

namespace helix::bind {

DeviceCall::DeviceCall() { cuda::require_device(); }

void* DeviceCall::copy(const TensorView& host) {
  for (auto& [addr, buf] : buffers_) {
    if (addr == host.data) return buf.data();
  }
  cuda::DeviceBuffer buf(static_cast<size_t>(std::max<int64_t>(host.nbytes(), 16)));
  buf.copy_from_host(host.data, static_cast<size_t>(host.nbytes()));
  buffers_.emplace_back(host.data, std::move(buf));
  return buffers_.back().second.data();
}

void* DeviceCall::scratch(size_t bytes) {
  scratch_.emplace_back(std::max<size_t>(bytes, 16));
  return scratch_.back().data();
}

void DeviceCall::finish() {
  cuda::synchronize();
  for (const TensorView& host : outputs_) {
    for (auto& [addr, buf] : buffers_) {
      if (addr == host.data) buf.copy_to_host(host.data, static_cast<size_t>(host.nbytes()));
    }
  }
}

}  // namespace helix::bind
