// Device memory of the CUDA backend's steps (internal to cuda/): scratch buffers that only grow, host
// arrays packed into one upload, and component timings from CUDA events.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "helix/cuda.hpp"
#include "helix/error.hpp"

namespace helix::cuda {

// A device buffer that only grows. Growing first waits for the device: a queued kernel may still read
// the old buffer, and no documented rule makes cudaFree wait for it. Growth happens in the first steps.
class Scratch {
 public:
  void* get(size_t bytes) {
    if (bytes > buf_.bytes()) {
      if (buf_.bytes() > 0) HELIX_CUDA_CHECK(cudaDeviceSynchronize());
      const size_t grown = std::max(bytes, 2 * buf_.bytes());
      buf_ = DeviceBuffer();  // the old buffer goes first: its memory may be what the new one needs
      try {
        try {
          buf_ = DeviceBuffer(grown);
        } catch (const DeviceMemoryError&) {
          if (grown == bytes) throw;
          buf_ = DeviceBuffer(bytes);  // no room for the doubling: exactly what is asked
        }
      } catch (const DeviceMemoryError& e) {
        throw DeviceMemoryError(::helix::detail::concat(
            "a step's workspace (", ::helix::detail::human_bytes(static_cast<double>(bytes)),
            ") does not fit on the GPU: ", e.what(), ". Fewer tokens per step (max_batch_tokens) need less"));
      }
    }
    return buf_.data();
  }
  template <class T>
  T* as(int64_t count) {
    return static_cast<T*>(get(static_cast<size_t>(std::max<int64_t>(count, 1)) * sizeof(T)));
  }
  size_t bytes() const { return buf_.bytes(); }

 private:
  DeviceBuffer buf_;
};

// Host arrays packed into one staging vector and uploaded with one copy; offsets are 16-byte aligned.
class Upload {
 public:
  template <class T>
  size_t add(const T* data, int64_t count) {
    const size_t off = (bytes_.size() + 15) & ~size_t{15};
    bytes_.resize(off + static_cast<size_t>(count) * sizeof(T));
    if (count > 0) std::memcpy(bytes_.data() + off, data, static_cast<size_t>(count) * sizeof(T));
    return off;
  }
  // Copies to `dst` (grown as needed) on `stream`; returns the device base. The bytes must stay alive
  // until the stream has run the copy: cudaMemcpyAsync from pageable memory may return before it has
  // read them (CUDA "API synchronization behavior"), so keep this object until a stream synchronize.
  void clear() { bytes_.clear(); }
  unsigned char* send(Scratch& dst, StreamHandle stream) {
    auto* base = static_cast<unsigned char*>(dst.get(std::max<size_t>(bytes_.size(), 16)));
    if (!bytes_.empty()) {
      HELIX_CUDA_CHECK(cudaMemcpyAsync(base, bytes_.data(), bytes_.size(), cudaMemcpyHostToDevice, stream));
    }
    return base;
  }

 private:
  std::vector<unsigned char> bytes_;
};

// Component times from CUDA events: mark(acc) charges the time since the previous mark to *acc.
class StepTimer {
 public:
  ~StepTimer() {
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }
  void start(StreamHandle stream) {
    used_ = 0;
    charges_.clear();
    record(stream);
  }
  void mark(StreamHandle stream, double* acc) {
    record(stream);
    charges_.push_back(acc);
  }
  // After the stream has finished: adds every interval to its component.
  void collect() {
    for (size_t i = 0; i < charges_.size(); ++i) {
      float ms = 0.f;
      HELIX_CUDA_CHECK(cudaEventElapsedTime(&ms, events_[i], events_[i + 1]));
      *charges_[i] += ms * 1e-3;
    }
  }

 private:
  void record(StreamHandle stream) {
    if (used_ == events_.size()) {
      cudaEvent_t e = nullptr;
      HELIX_CUDA_CHECK(cudaEventCreate(&e));
      events_.push_back(e);
    }
    HELIX_CUDA_CHECK(cudaEventRecord(events_[used_++], stream));
  }
  std::vector<cudaEvent_t> events_;
  std::vector<double*> charges_;
  size_t used_ = 0;
};

}  // namespace helix::cuda
