// The kernel side of the SIMT emulator: CUDA's device built-ins for code compiled by the host compiler.
//
// Every thread of a block is a fiber; blocks run one after another, in the schedule's order
// (cuda/emulator/simt.cpp). threadIdx, blockIdx, blockDim and gridDim read the running fiber's
// coordinates. __syncthreads is a block barrier (threads that exited count as arrived); __syncwarp, the
// shuffles and the tensor-core mma are true warp collectives: a lane blocks until every lane of the mask
// arrives at the same call, then all get their results. Deadlocks (e.g. a __syncthreads some threads never
// reach) stop the launch with an error that names the kernel and the source lines. Launches are written
// `::simt::launch(kernel, "name", "arg names", max_threads, grid, block, smem, stream)(args...)` by
// cuda/emulator/translate.py from `kernel<<<...>>>(args...)`; every pointer they pass must be null or
// device memory (simt_fields.hpp).
#pragma once

#include <math.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <source_location>
#include <tuple>
#include <type_traits>
#include <utility>

#include "simt_fields.hpp"

#ifndef HELIX_CUDA_EMULATOR
#define HELIX_CUDA_EMULATOR 1
#endif

struct CUstream_st;
typedef CUstream_st* cudaStream_t;

// ---- qualifiers -----------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// __shared__ declarations are rewritten by translate.py (per-block storage poisoned at every block
// start); one that reaches the compiler was not rewritten and must not compile.
#define __shared__ __shared___was_not_rewritten_by_translate_py

// ---- vector types (sizes and alignments of vector_types.h) -----------------------------------------
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
struct __attribute__((aligned(16))) uint4 {
  unsigned int x, y, z, w;
};
struct __attribute__((aligned(16))) int4 {
  int x, y, z, w;
};
struct __attribute__((aligned(16))) float4 {
  float x, y, z, w;
};
struct __attribute__((aligned(8))) float2 {
  float x, y;
};
struct __attribute__((aligned(8))) uint2 {
  unsigned int x, y;
};
inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) { return {x, y, z, w}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline uint2 make_uint2(unsigned int x, unsigned int y) { return {x, y}; }

// ---- device math and bit casts ----------------------------------------------------------------------
inline float __uint_as_float(unsigned int v) {
  float f;
  std::memcpy(&f, &v, 4);
  return f;
}
inline unsigned int __float_as_uint(float f) {
  unsigned int v;
  std::memcpy(&v, &f, 4);
  return v;
}
inline float __int_as_float(int v) { return __uint_as_float(static_cast<unsigned int>(v)); }
inline int __float_as_int(float f) { return static_cast<int>(__float_as_uint(f)); }
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
template <class T>
inline T __ldg(const T* p) {
  return *p;
}
// CUDA's device min/max overloads (integers of one type, float, double), unqualified in kernels.
template <class T, class = std::enable_if_t<std::is_arithmetic_v<T>>>
inline T min(T a, T b) {
  return b < a ? b : a;
}
template <class T, class = std::enable_if_t<std::is_arithmetic_v<T>>>
inline T max(T a, T b) {
  return a < b ? b : a;
}

namespace simt {

namespace detail {
// Coordinates of the running fiber and its launch (plain globals: launches are serialized by a mutex
// and run on the launching host thread).
extern uint3 g_thread_idx;
extern uint3 g_block_idx;
extern dim3 g_block_dim;
extern dim3 g_grid_dim;
extern unsigned char* g_dynamic_smem;

// Storage of one __shared__ variable of the running launch, keyed by its declaration; 0xFF-filled at
// the start of every block (uninitialized floats read as NaN).
void* static_shared(const void* key, size_t bytes, size_t align);

void syncthreads(const std::source_location& loc);
// A warp collective: every lane of `mask` arrives with `data`; the last one runs complete(lane_data)
// (lane_data[l] is lane l's `data`, null for lanes outside the mask) and all continue.
using CompleteFn = void (*)(void* const* lane_data, unsigned mask);
void warp_collective(unsigned mask, CompleteFn complete, void* data, const char* what, const std::source_location& loc);

struct ShflData {
  const void* in;
  void* out;
  int src_lane;
  size_t bytes;
};
void complete_shfl(void* const* lane_data, unsigned mask);

template <class T>
inline T shfl(unsigned mask, T v, int src_lane, const char* what, const std::source_location& loc) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffles move 4 or 8 bytes");
  T out{};
  ShflData d{&v, &out, src_lane, sizeof(T)};
  warp_collective(mask, complete_shfl, &d, what, loc);
  return out;
}
inline int lane_id() {
  return static_cast<int>(g_thread_idx.x + g_block_dim.x * (g_thread_idx.y + g_block_dim.y * g_thread_idx.z)) & 31;
}
}  // namespace detail

// D = A * B + D of one mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (a warp collective).
// a, b0, b1, d are this lane's fragments in the PTX ISA layouts (implemented in simt.cpp).
void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1,
                       const std::source_location& loc = std::source_location::current());

// ---- launches ---------------------------------------------------------------------------------------
struct LaunchConfig {
  const char* name;  // the kernel's name, for errors
  // Its parameter names for errors, from translate.py: "p{field,...},chunk" (a struct parameter lists
  // its fields); "" when unknown (positions are named instead).
  const char* arg_names;
  const void* func;  // identity of the kernel (cudaFuncSetAttribute)
  int max_threads;   // __launch_bounds__ (0: none)
  dim3 grid, block;
  size_t dynamic_smem;
  cudaStream_t stream;
};
// Checks the configuration like a GPU launch (errors come back from cudaGetLastError) and runs or
// queues the grid on the stream.
void submit(const LaunchConfig& config, std::function<void()> thread_body);
namespace detail {
// True when every pointer in args is null or points into (or one past the end of) a live device
// allocation; otherwise records cudaErrorIllegalAddress naming the kernel, parameter and field (a GPU
// faults when the kernel dereferences a host pointer). Also refuses arg_names that disagree with the
// parameters' types (translate.py misread a struct).
bool check_kernel_args(const LaunchConfig& config, const KernelArgs& args);
}  // namespace detail

template <class... P>
class Launcher {
 public:
  Launcher(void (*kernel)(P...), LaunchConfig config) : kernel_(kernel), config_(config) {}
  // Arguments are converted to the kernel's parameter types and copied at launch time, like CUDA does;
  // a launch whose pointers are not all device memory (or null) fails and does not run.
  template <class... A>
  void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong number of arguments");
    std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
    if (!detail::check_kernel_args(config_, detail::kernel_args(params))) return;
    submit(config_, [kernel = kernel_, params = std::move(params)]() { std::apply(kernel, params); });
  }

 private:
  void (*kernel_)(P...);
  LaunchConfig config_;
};

template <class... P>
Launcher<P...> launch(void (*kernel)(P...), const char* name, const char* arg_names, int max_threads, dim3 grid,
                      dim3 block, size_t dynamic_smem = 0, cudaStream_t stream = nullptr) {
  return Launcher<P...>(kernel, LaunchConfig{name, arg_names, reinterpret_cast<const void*>(kernel), max_threads, grid,
                                             block, dynamic_smem, stream});
}

// Dynamic shared memory of the running block (the launch's size, 0xFF-filled at every block start).
inline unsigned char* dynamic_shared() { return detail::g_dynamic_smem; }

}  // namespace simt

#define threadIdx (::simt::detail::g_thread_idx)
#define blockIdx (::simt::detail::g_block_idx)
#define blockDim (::simt::detail::g_block_dim)
#define gridDim (::simt::detail::g_grid_dim)
constexpr int warpSize = 32;

inline void __syncthreads(const std::source_location& loc = std::source_location::current()) {
  ::simt::detail::syncthreads(loc);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const std::source_location& loc = std::source_location::current()) {
  ::simt::detail::warp_collective(mask, nullptr, nullptr, "__syncwarp", loc);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32,
                         const std::source_location& loc = std::source_location::current()) {
  const int lane = ::simt::detail::lane_id();
  // Lanes in segments of `width`; a source outside the caller's segment reads the caller's own value.
  const int src = lane ^ lane_mask;
  const int seg = lane & ~(width - 1);
  return ::simt::detail::shfl(mask, v, (src >= seg && src < seg + width) ? src : lane, "__shfl_xor_sync", loc);
}
template <class T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32,
                     const std::source_location& loc = std::source_location::current()) {
  const int lane = ::simt::detail::lane_id();
  return ::simt::detail::shfl(mask, v, (lane & ~(width - 1)) + (src_lane & (width - 1)), "__shfl_sync", loc);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32,
                          const std::source_location& loc = std::source_location::current()) {
  const int lane = ::simt::detail::lane_id();
  const int seg = lane & ~(width - 1);
  const int src = lane + static_cast<int>(delta);
  return ::simt::detail::shfl(mask, v, src < seg + width ? src : lane, "__shfl_down_sync", loc);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32,
                        const std::source_location& loc = std::source_location::current()) {
  const int lane = ::simt::detail::lane_id();
  const int seg = lane & ~(width - 1);
  const int src = lane - static_cast<int>(delta);
  return ::simt::detail::shfl(mask, v, src >= seg ? src : lane, "__shfl_up_sync", loc);
}
