// The host side of the SIMT emulator: the CUDA runtime calls cuda/ makes, implemented on the CPU with
// the documented semantics that matter for catching host bugs:
//   - one device, "Helix SIMT emulator (CPU)", HELIX_SIMT_SMS multiprocessors (default 4);
//   - device memory is host memory kept in a registry; copies check their direction against it (a host
//     pointer where the kind says device, or a range past the end of an allocation, is
//     cudaErrorInvalidValue); fresh allocations are 0xFF-filled (uninitialized floats read as NaN) and
//     their rounding to 256 bytes is poisoned for AddressSanitizer; kernel launches check that every
//     pointer they pass is device memory (kernel_args.cpp);
//   - streams are faithful by default: kernels, memsets, device-side copies and host-to-device copies
//     (whose source is captured at call time, as for pageable memory) are queued per stream and run at
//     the next synchronizing call: cudaStreamSynchronize, cudaDeviceSynchronize, cudaEventSynchronize,
//     cudaFree, a copy to pageable host memory (which returns only once complete), cudaMemcpy.
//     HELIX_SIMT_STREAMS=sync runs everything at call time instead;
//   - launches are checked against the real limits (block <= 1024 threads and <= __launch_bounds__,
//     grid.y/z <= 65535, dynamic shared memory > 48 KiB only after cudaFuncSetAttribute and never above
//     227 KiB) and fail through cudaGetLastError like on a GPU.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "internal.hpp"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define SIMT_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define SIMT_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define SIMT_POISON(p, n) ((void)(p), (void)(n))
#define SIMT_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

struct CUstream_st {
  unsigned flags = 0;
  std::deque<simt::detail::StreamOp> queue;
  cudaError_t pending = cudaSuccess;  // first error of an op that ran; returned by the next sync
};

struct CUevent_st {
  cudaStream_t stream = nullptr;
  bool recorded = false;
  bool completed = false;
  std::chrono::steady_clock::time_point when;
};

namespace simt::detail {

namespace {

constexpr size_t kStaticSmemLimit = 48 * 1024;  // without opting in
constexpr size_t kOptinSmemLimit = 227 * 1024;  // H100: cudaDevAttrMaxSharedMemoryPerBlockOptin
constexpr size_t kDefaultMemoryBytes = size_t{16} << 30;

struct State {
  cudaError_t last = cudaSuccess;
  cudaError_t message_code = cudaSuccess;
  std::string message;
  std::map<uintptr_t, size_t> allocations;  // base -> bytes
  size_t allocated = 0;
  CUstream_st default_stream;
  std::set<cudaStream_t> streams;  // created, not destroyed (the default stream is nullptr)
  std::set<cudaEvent_t> events;
  std::map<const void*, int> max_dynamic_smem;  // cudaFuncAttributeMaxDynamicSharedMemorySize
  int device = 0;
};

State& st() {
  static State* s = new State;  // never destroyed: static destructors may still free device memory
  return *s;
}

bool deferred() {
  const char* v = std::getenv("HELIX_SIMT_STREAMS");
  return v == nullptr || std::strcmp(v, "sync") != 0;
}

CUstream_st* stream_state(cudaStream_t s) { return s == nullptr ? &st().default_stream : s; }

size_t memory_limit() {
  if (const char* v = std::getenv("HELIX_SIMT_MEMORY_BYTES"); v != nullptr && *v != '\0') {
    return static_cast<size_t>(std::strtoull(v, nullptr, 10));
  }
  return kDefaultMemoryBytes;
}

// The allocation containing p, or allocations().end().
std::map<uintptr_t, size_t>::const_iterator find_allocation(const void* p) {
  const auto& a = st().allocations;
  const auto addr = reinterpret_cast<uintptr_t>(p);
  auto it = a.upper_bound(addr);
  if (it == a.begin()) return a.end();
  --it;
  return addr < it->first + std::max<size_t>(it->second, 1) ? it : a.end();
}

bool touches_device(const void* p) { return find_allocation(p) != st().allocations.end(); }

std::string ptr_str(const void* p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%p", p);
  return buf;
}

const char* kind_name(cudaMemcpyKind k) {
  switch (k) {
    case cudaMemcpyHostToHost:
      return "cudaMemcpyHostToHost";
    case cudaMemcpyHostToDevice:
      return "cudaMemcpyHostToDevice";
    case cudaMemcpyDeviceToHost:
      return "cudaMemcpyDeviceToHost";
    case cudaMemcpyDeviceToDevice:
      return "cudaMemcpyDeviceToDevice";
    case cudaMemcpyDefault:
      return "cudaMemcpyDefault";
  }
  return "an invalid cudaMemcpyKind";
}

// Checks that [p, p + extent) is device memory (want_device) or not device memory at all.
cudaError_t check_side(const char* fn, const char* which, const void* p, size_t extent, bool want_device,
                       cudaMemcpyKind kind) {
  if (extent == 0) return cudaSuccess;
  if (want_device) {
    if (is_device_range(p, extent)) return cudaSuccess;
    const bool inside = touches_device(p);
    return set_error(cudaErrorInvalidValue,
                     std::string(fn) + ": " + which + " " + ptr_str(p) + " (" + std::to_string(extent) + " bytes) " +
                         (inside ? "runs past the end of its device allocation" : "is not device memory") +
                         " but the kind is " + kind_name(kind));
  }
  if (!touches_device(p) && !touches_device(static_cast<const char*>(p) + extent - 1)) return cudaSuccess;
  return set_error(cudaErrorInvalidValue, std::string(fn) + ": " + which + " " + ptr_str(p) +
                                              " is device memory but the kind is " + kind_name(kind));
}

cudaError_t check_copy(const char* fn, const void* dst, size_t dst_extent, const void* src, size_t src_extent,
                       cudaMemcpyKind& kind) {
  if (kind == cudaMemcpyDefault) {
    const bool d = touches_device(dst), s = touches_device(src);
    kind = d ? (s ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
             : (s ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
  }
  if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDeviceToDevice) {
    return set_error(cudaErrorInvalidMemcpyDirection, std::string(fn) + ": invalid cudaMemcpyKind");
  }
  const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (auto e = check_side(fn, "dst", dst, dst_extent, dst_dev, kind); e != cudaSuccess) return e;
  return check_side(fn, "src", src, src_extent, src_dev, kind);
}

cudaError_t run_op(CUstream_st* s, StreamOp& op) {
  const cudaError_t e = op();
  if (e != cudaSuccess && s->pending == cudaSuccess) s->pending = e;
  return e;
}

// A strided copy as one stream op (rows of `width` bytes, `height` rows). Host-to-device sources are
// captured now; everything else reads at run time.
cudaError_t copy_2d(const char* fn, void* dst, size_t dpitch, const void* src, size_t spitch, size_t width,
                    size_t height, cudaMemcpyKind kind, cudaStream_t stream, bool sync_call) {
  std::lock_guard lock(api_mutex());
  if (!valid_stream(stream)) return set_error(cudaErrorInvalidResourceHandle, std::string(fn) + ": invalid stream");
  if (width == 0 || height == 0) return cudaSuccess;
  if (dpitch < width || spitch < width) {
    return set_error(cudaErrorInvalidValue, std::string(fn) + ": pitch smaller than the row width");
  }
  const size_t dst_extent = (height - 1) * dpitch + width, src_extent = (height - 1) * spitch + width;
  if (auto e = check_copy(fn, dst, dst_extent, src, src_extent, kind); e != cudaSuccess) return e;
  auto* d = static_cast<unsigned char*>(dst);
  const auto* s = static_cast<const unsigned char*>(src);
  StreamOp op;
  if (kind == cudaMemcpyHostToDevice || kind == cudaMemcpyHostToHost) {
    auto staged = std::make_shared<std::vector<unsigned char>>(height * width);
    for (size_t r = 0; r < height; ++r) std::memcpy(staged->data() + r * width, s + r * spitch, width);
    op = [d, dpitch, width, height, staged]() {
      for (size_t r = 0; r < height; ++r) std::memcpy(d + r * dpitch, staged->data() + r * width, width);
      return cudaSuccess;
    };
  } else {
    op = [d, dpitch, s, spitch, width, height]() {
      for (size_t r = 0; r < height; ++r) std::memmove(d + r * dpitch, s + r * spitch, width);
      return cudaSuccess;
    };
  }
  if (auto e = enqueue(stream, std::move(op)); e != cudaSuccess) return e;
  // A copy into pageable host memory returns only once complete; so does the synchronous cudaMemcpy.
  if (sync_call || kind == cudaMemcpyDeviceToHost) return flush(stream);
  return cudaSuccess;
}

}  // namespace

std::recursive_mutex& api_mutex() {
  static std::recursive_mutex m;
  return m;
}

cudaError_t set_error(cudaError_t err, const std::string& message) {
  auto& s = st();
  s.last = err;
  s.message_code = err;
  s.message = message;
  return err;
}

bool valid_stream(cudaStream_t stream) { return stream == nullptr || st().streams.count(stream) != 0; }

cudaError_t enqueue(cudaStream_t stream, StreamOp op) {
  std::lock_guard lock(api_mutex());
  if (!valid_stream(stream)) return set_error(cudaErrorInvalidResourceHandle, "invalid (destroyed?) stream");
  CUstream_st* s = stream_state(stream);
  if (!deferred()) {
    run_op(s, op);
    return cudaSuccess;
  }
  s->queue.push_back(std::move(op));
  return cudaSuccess;
}

cudaError_t flush(cudaStream_t stream) {
  std::lock_guard lock(api_mutex());
  if (!valid_stream(stream)) return set_error(cudaErrorInvalidResourceHandle, "invalid (destroyed?) stream");
  CUstream_st* s = stream_state(stream);
  while (!s->queue.empty()) {
    StreamOp op = std::move(s->queue.front());
    s->queue.pop_front();
    run_op(s, op);
  }
  const cudaError_t e = s->pending;
  s->pending = cudaSuccess;
  return e;
}

cudaError_t flush_all() {
  std::lock_guard lock(api_mutex());
  cudaError_t first = flush(nullptr);
  const std::vector<cudaStream_t> all(st().streams.begin(), st().streams.end());
  for (cudaStream_t s : all) {
    const cudaError_t e = flush(s);
    if (first == cudaSuccess) first = e;
  }
  return first;
}

}  // namespace simt::detail

namespace simt {

bool is_device_range(const void* ptr, size_t bytes) {
  std::lock_guard lock(detail::api_mutex());
  const auto it = detail::find_allocation(ptr);
  if (it == detail::st().allocations.end()) return false;
  return reinterpret_cast<uintptr_t>(ptr) + bytes <= it->first + it->second;
}

void submit(const LaunchConfig& c, std::function<void()> body) {
  using namespace detail;
  std::lock_guard lock(api_mutex());
  const std::string who = kernel_label(c);
  const unsigned long long threads = 1ull * c.block.x * c.block.y * c.block.z;
  if (!valid_stream(c.stream)) {
    set_error(cudaErrorInvalidResourceHandle, who + ": invalid stream");
    return;
  }
  if (threads == 0 || c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0) {
    set_error(cudaErrorInvalidConfiguration, who + ": a zero grid or block dimension");
    return;
  }
  if (threads > 1024 || c.block.x > 1024 || c.block.y > 1024 || c.block.z > 64) {
    set_error(cudaErrorInvalidConfiguration, who + ": more than 1024 threads per block (or block.z > 64)");
    return;
  }
  if (c.max_threads > 0 && threads > static_cast<unsigned long long>(c.max_threads)) {
    set_error(cudaErrorLaunchOutOfResources, who + ": " + std::to_string(threads) +
                                                 " threads exceed __launch_bounds__(" + std::to_string(c.max_threads) +
                                                 ")");
    return;
  }
  if (c.grid.x > 0x7fffffffu || c.grid.y > 65535 || c.grid.z > 65535) {
    set_error(cudaErrorInvalidConfiguration, who + ": grid.y and grid.z must be <= 65535 (grid.x <= 2^31 - 1)");
    return;
  }
  if (c.dynamic_smem > kStaticSmemLimit) {
    const auto it = st().max_dynamic_smem.find(c.func);
    const size_t allowed = it == st().max_dynamic_smem.end() ? kStaticSmemLimit : static_cast<size_t>(it->second);
    if (c.dynamic_smem > allowed) {
      set_error(cudaErrorInvalidValue, who + ": " + std::to_string(c.dynamic_smem) +
                                           " bytes of dynamic shared memory need cudaFuncSetAttribute("
                                           "cudaFuncAttributeMaxDynamicSharedMemorySize) >= that size (set: " +
                                           std::to_string(allowed) + ")");
      return;
    }
  }
  auto shared_body = std::make_shared<std::function<void()>>(std::move(body));
  LaunchConfig config = c;
  enqueue(c.stream, [config, shared_body]() { return run_grid(config, *shared_body); });
}

}  // namespace simt

using simt::detail::api_mutex;
using simt::detail::set_error;
using simt::detail::st;

// ---- errors ---------------------------------------------------------------------------------------

cudaError_t cudaGetLastError() {
  std::lock_guard lock(api_mutex());
  const cudaError_t e = st().last;
  st().last = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError() {
  std::lock_guard lock(api_mutex());
  return st().last;
}

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError:
      return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer:
      return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection:
      return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorNoDevice:
      return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle:
      return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady:
      return "cudaErrorNotReady";
    case cudaErrorIllegalAddress:
      return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources:
      return "cudaErrorLaunchOutOfResources";
    case cudaErrorLaunchFailure:
      return "cudaErrorLaunchFailure";
    case cudaErrorUnknown:
      return "cudaErrorUnknown";
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t error) {
  std::lock_guard lock(api_mutex());
  if (error != cudaSuccess && error == st().message_code && !st().message.empty()) {
    static thread_local std::string s;
    s = "[SIMT emulator] " + st().message;
    return s.c_str();
  }
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle:
      return "invalid resource handle";
    case cudaErrorNotReady:
      return "device not ready";
    case cudaErrorLaunchOutOfResources:
      return "too many resources requested for launch";
    case cudaErrorLaunchFailure:
      return "unspecified launch failure";
    default:
      return "unknown error";
  }
}

// ---- device ---------------------------------------------------------------------------------------

namespace {
int sm_count() {
  if (const char* v = std::getenv("HELIX_SIMT_SMS"); v != nullptr && *v != '\0') {
    const int n = std::atoi(v);
    if (n >= 1) return n;
  }
  return 4;
}
}  // namespace

cudaError_t cudaGetDeviceCount(int* count) {
  if (count == nullptr) return set_error(cudaErrorInvalidValue, "cudaGetDeviceCount: null count");
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  std::lock_guard lock(api_mutex());
  if (device != 0) return set_error(cudaErrorInvalidDevice, "cudaSetDevice: the emulator has one device (0)");
  st().device = device;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  std::lock_guard lock(api_mutex());
  if (device == nullptr) return set_error(cudaErrorInvalidValue, "cudaGetDevice: null device");
  *device = st().device;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (prop == nullptr) return set_error(cudaErrorInvalidValue, "cudaGetDeviceProperties: null prop");
  if (device != 0) return set_error(cudaErrorInvalidDevice, "cudaGetDeviceProperties: no such device");
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof prop->name, "%s", "Helix SIMT emulator (CPU)");
  prop->totalGlobalMem = simt::detail::memory_limit();
  prop->sharedMemPerBlock = simt::detail::kStaticSmemLimit;
  prop->sharedMemPerBlockOptin = simt::detail::kOptinSmemLimit;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  prop->maxThreadsDim[0] = prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 0x7fffffff;
  prop->maxGridSize[1] = prop->maxGridSize[2] = 65535;
  prop->multiProcessorCount = sm_count();
  prop->major = 9;
  prop->minor = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (value == nullptr) return set_error(cudaErrorInvalidValue, "cudaDeviceGetAttribute: null value");
  if (device != 0) return set_error(cudaErrorInvalidDevice, "cudaDeviceGetAttribute: no such device");
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock:
      *value = 1024;
      break;
    case cudaDevAttrMaxGridDimY:
      *value = 65535;
      break;
    case cudaDevAttrMaxSharedMemoryPerBlock:
      *value = static_cast<int>(simt::detail::kStaticSmemLimit);
      break;
    case cudaDevAttrWarpSize:
      *value = 32;
      break;
    case cudaDevAttrMultiProcessorCount:
      *value = sm_count();
      break;
    case cudaDevAttrComputeCapabilityMajor:
      *value = 9;
      break;
    case cudaDevAttrComputeCapabilityMinor:
      *value = 0;
      break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = static_cast<int>(simt::detail::kOptinSmemLimit);
      break;
    default:
      return set_error(cudaErrorInvalidValue, "cudaDeviceGetAttribute: attribute not emulated");
  }
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() { return simt::detail::flush_all(); }

// ---- memory ---------------------------------------------------------------------------------------

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  std::lock_guard lock(api_mutex());
  if (ptr == nullptr) return set_error(cudaErrorInvalidValue, "cudaMalloc: null ptr");
  *ptr = nullptr;
  if (bytes == 0) return cudaSuccess;
  auto& s = st();
  const size_t limit = simt::detail::memory_limit();
  if (bytes > limit || s.allocated + bytes > limit) {
    return set_error(cudaErrorMemoryAllocation,
                     "cudaMalloc: " + std::to_string(bytes) + " bytes exceed the emulated device memory (" +
                         std::to_string(limit - s.allocated) + " free; HELIX_SIMT_MEMORY_BYTES)");
  }
  const size_t rounded = (bytes + 255) / 256 * 256;  // cudaMalloc's alignment
  void* p = std::aligned_alloc(256, rounded);
  if (p == nullptr) return set_error(cudaErrorMemoryAllocation, "cudaMalloc: host allocation failed");
  std::memset(p, 0xFF, bytes);  // cudaMalloc memory is uninitialized: read before written -> NaN
  // The rounding is there on a GPU too, so an overrun into it goes unnoticed there: ASan reports it here.
  SIMT_POISON(static_cast<char*>(p) + bytes, rounded - bytes);
  s.allocations[reinterpret_cast<uintptr_t>(p)] = bytes;
  s.allocated += bytes;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free, size_t* total) {
  std::lock_guard lock(api_mutex());
  if (free == nullptr || total == nullptr) return set_error(cudaErrorInvalidValue, "cudaMemGetInfo: null pointer");
  *total = simt::detail::memory_limit();
  *free = *total > st().allocated ? *total - st().allocated : 0;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  std::lock_guard lock(api_mutex());
  if (ptr == nullptr) return cudaSuccess;
  const cudaError_t sync = simt::detail::flush_all();  // cudaFree synchronizes the device
  auto& a = st().allocations;
  const auto it = a.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == a.end())
    return set_error(cudaErrorInvalidValue,
                     "cudaFree: " + simt::detail::ptr_str(ptr) + " is not a live cudaMalloc allocation");
  st().allocated -= it->second;
  SIMT_UNPOISON(ptr, (it->second + 255) / 256 * 256);
  a.erase(it);
  std::free(ptr);
  return sync;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  return simt::detail::copy_2d("cudaMemcpy", dst, bytes, src, bytes, bytes, 1, kind, nullptr, true);
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream) {
  return simt::detail::copy_2d("cudaMemcpyAsync", dst, bytes, src, bytes, bytes, 1, kind, stream, false);
}

cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind kind, cudaStream_t stream) {
  return simt::detail::copy_2d("cudaMemcpy2DAsync", dst, dpitch, src, spitch, width, height, kind, stream, false);
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream) {
  std::lock_guard lock(api_mutex());
  if (bytes == 0) return cudaSuccess;
  if (!simt::is_device_range(ptr, bytes)) {
    return set_error(cudaErrorInvalidValue, "cudaMemsetAsync: " + simt::detail::ptr_str(ptr) + " (" +
                                                std::to_string(bytes) + " bytes) is not inside one device allocation");
  }
  return simt::detail::enqueue(stream, [ptr, value, bytes]() {
    std::memset(ptr, value, bytes);
    return cudaSuccess;
  });
}

cudaError_t cudaMemset(void* ptr, int value, size_t bytes) {
  std::lock_guard lock(api_mutex());
  if (auto e = cudaMemsetAsync(ptr, value, bytes, nullptr); e != cudaSuccess) return e;
  return simt::detail::flush(nullptr);
}

cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attributes, const void* ptr) {
  std::lock_guard lock(api_mutex());
  if (attributes == nullptr) return set_error(cudaErrorInvalidValue, "cudaPointerGetAttributes: null attributes");
  *attributes = cudaPointerAttributes{};
  if (simt::detail::touches_device(ptr)) {
    attributes->type = cudaMemoryTypeDevice;
    attributes->device = 0;
    attributes->devicePointer = const_cast<void*>(ptr);
  } else {
    attributes->type = cudaMemoryTypeUnregistered;
    attributes->device = -2;
  }
  return cudaSuccess;
}

// ---- streams and events ---------------------------------------------------------------------------

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags) {
  std::lock_guard lock(api_mutex());
  if (stream == nullptr) return set_error(cudaErrorInvalidValue, "cudaStreamCreate: null stream");
  auto* s = new CUstream_st;
  s->flags = flags;
  st().streams.insert(s);
  *stream = s;
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, cudaStreamDefault); }

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  std::lock_guard lock(api_mutex());
  if (stream == nullptr || st().streams.count(stream) == 0) {
    return set_error(cudaErrorInvalidResourceHandle, "cudaStreamDestroy: not a live stream");
  }
  // Work already queued still completes (the CUDA documentation: destroy returns at once, the device
  // finishes the stream's work).
  simt::detail::flush(stream);
  st().streams.erase(stream);
  delete stream;
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) { return simt::detail::flush(stream); }

cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) {
  std::lock_guard lock(api_mutex());
  if (event == nullptr) return set_error(cudaErrorInvalidValue, "cudaEventCreate: null event");
  *event = new CUevent_st;
  st().events.insert(*event);
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  std::lock_guard lock(api_mutex());
  if (st().events.erase(event) == 0)
    return set_error(cudaErrorInvalidResourceHandle, "cudaEventDestroy: not a live event");
  // A queued record may still point at it: keep the object alive (leaked; events are few).
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  std::lock_guard lock(api_mutex());
  if (st().events.count(event) == 0)
    return set_error(cudaErrorInvalidResourceHandle, "cudaEventRecord: not a live event");
  event->stream = stream;
  event->recorded = true;
  event->completed = false;
  return simt::detail::enqueue(stream, [event]() {
    event->completed = true;
    event->when = std::chrono::steady_clock::now();
    return cudaSuccess;
  });
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  std::lock_guard lock(api_mutex());
  if (st().events.count(event) == 0)
    return set_error(cudaErrorInvalidResourceHandle, "cudaEventSynchronize: not a live event");
  if (!event->recorded) return cudaSuccess;
  return simt::detail::flush(event->stream);
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
  std::lock_guard lock(api_mutex());
  if (st().events.count(event) == 0)
    return set_error(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent: not a live event");
  if (!event->recorded) return cudaSuccess;
  cudaStream_t other = event->stream;
  return simt::detail::enqueue(stream, [other]() { return simt::detail::flush(other); });
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  std::lock_guard lock(api_mutex());
  if (ms == nullptr) return set_error(cudaErrorInvalidValue, "cudaEventElapsedTime: null ms");
  if (st().events.count(start) == 0 || st().events.count(end) == 0) {
    return set_error(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: not a live event");
  }
  if (!start->completed || !end->completed)
    return set_error(cudaErrorNotReady, "cudaEventElapsedTime: an event has not completed");
  *ms = std::chrono::duration<float, std::milli>(end->when - start->when).count();
  return cudaSuccess;
}

// ---- kernels --------------------------------------------------------------------------------------

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  std::lock_guard lock(api_mutex());
  if (func == nullptr) return set_error(cudaErrorInvalidValue, "cudaFuncSetAttribute: null function");
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || static_cast<size_t>(value) > simt::detail::kOptinSmemLimit) {
      return set_error(cudaErrorInvalidValue,
                       "cudaFuncSetAttribute(MaxDynamicSharedMemorySize): " + std::to_string(value) +
                           " bytes exceed the 227 KiB a block may opt in to");
    }
    st().max_dynamic_smem[func] = value;
    return cudaSuccess;
  }
  if (attr == cudaFuncAttributePreferredSharedMemoryCarveout) return cudaSuccess;
  return set_error(cudaErrorInvalidValue, "cudaFuncSetAttribute: attribute not emulated");
}
