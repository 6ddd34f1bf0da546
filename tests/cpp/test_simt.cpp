// Tests of the SIMT emulator itself (HELIX_ENABLE_CUDA=EMULATOR builds only): the tensor-core fragment
// layouts against a plain matmul, shuffles as warp collectives, barrier divergence and deadlock
// detection, the real launch limits, copy-direction checks, deferred streams, schedule variation (threads
// and blocks), the launch-time check of kernel pointers and (under ASan) the poisoned allocation padding.
// Kernels here are plain functions launched with ::simt::launch (no translate.py step for tests).
#if HELIX_CUDA_EMULATOR

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
float from_bf16(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <class T>
T* device_copy(const std::vector<T>& host) {
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, host.size() * sizeof(T)), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  return static_cast<T*>(p);
}
template <class T>
std::vector<T> host_copy(const T* dev, size_t n) {
  std::vector<T> out(n);
  EXPECT_EQ(cudaMemcpy(out.data(), dev, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return out;
}

// ---- tensor core --------------------------------------------------------------------------------------

// One warp: A [16,16] row-major bf16, B [16 k, 8 n] row-major bf16, C/D [16,8] f32. The fragments are
// gathered with the register view of the PTX ISA tables (two consecutive elements per .b32 register).
void mma_kernel(const uint16_t* A, const uint16_t* B, float* D) {
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  auto pair_a = [&](int row, int col) { return uint32_t(A[row * 16 + col]) | uint32_t(A[row * 16 + col + 1]) << 16; };
  auto pair_b = [&](int k, int n) { return uint32_t(B[k * 8 + n]) | uint32_t(B[(k + 1) * 8 + n]) << 16; };
  const uint32_t a[4] = {pair_a(g, 2 * t), pair_a(g + 8, 2 * t), pair_a(g, 2 * t + 8), pair_a(g + 8, 2 * t + 8)};
  float d[4] = {D[g * 8 + 2 * t], D[g * 8 + 2 * t + 1], D[(g + 8) * 8 + 2 * t], D[(g + 8) * 8 + 2 * t + 1]};
  simt::mma_m16n8k16_bf16(d, a, pair_b(2 * t, g), pair_b(2 * t + 8, g));
  D[g * 8 + 2 * t] = d[0];
  D[g * 8 + 2 * t + 1] = d[1];
  D[(g + 8) * 8 + 2 * t] = d[2];
  D[(g + 8) * 8 + 2 * t + 1] = d[3];
}

TEST(SimtEmulator, MmaMatchesMatmul) {
  std::vector<uint16_t> A(256), B(128);
  std::vector<float> C(128);
  for (int i = 0; i < 256; ++i) A[i] = to_bf16(std::sin(0.37f * i) * 2.f);
  for (int i = 0; i < 128; ++i) B[i] = to_bf16(std::cos(0.11f * i + 1.f));
  for (int i = 0; i < 128; ++i) C[i] = 0.25f * (i % 7) - 0.5f;
  uint16_t* dA = device_copy(A);
  uint16_t* dB = device_copy(B);
  float* dD = device_copy(C);
  simt::launch(mma_kernel, "mma_kernel", "", 32, 1, 32)(dA, dB, dD);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const auto D = host_copy(dD, 128);
  for (int m = 0; m < 16; ++m) {
    for (int n = 0; n < 8; ++n) {
      double ref = C[m * 8 + n];
      for (int k = 0; k < 16; ++k) ref += double(from_bf16(A[m * 16 + k])) * from_bf16(B[k * 8 + n]);
      EXPECT_NEAR(D[m * 8 + n], ref, 1e-4 * (1 + std::fabs(ref))) << "m=" << m << " n=" << n;
    }
  }
  cudaFree(dA);
  cudaFree(dB);
  cudaFree(dD);
}

// ---- shuffles -----------------------------------------------------------------------------------------

void shuffle_kernel(float* out) {
  const int lane = threadIdx.x & 31;
  float v = static_cast<float>(threadIdx.x);
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  out[threadIdx.x] = v;                                                                  // warp sum
  out[64 + threadIdx.x] = __shfl_sync(0xffffffffu, static_cast<float>(threadIdx.x), 5);  // broadcast lane 5
  out[128 + threadIdx.x] = __shfl_down_sync(0xffffffffu, static_cast<float>(lane), 3);   // lane + 3, or own
}

TEST(SimtEmulator, ShufflesAreWarpCollectives) {
  float* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, 192 * 4), cudaSuccess);
  simt::launch(shuffle_kernel, "shuffle_kernel", "", 0, 1, 64)(d);
  const auto out = host_copy(d, 192);
  for (int i = 0; i < 64; ++i) {
    const int base = i / 32 * 32;
    EXPECT_EQ(out[i], static_cast<float>(32 * base + 496)) << i;  // sum of base..base+31
    EXPECT_EQ(out[64 + i], static_cast<float>(base + 5)) << i;
    const int lane = i % 32;
    EXPECT_EQ(out[128 + i], static_cast<float>(lane + 3 < 32 ? lane + 3 : lane)) << i;
  }
  cudaFree(d);
}

// ---- barriers -----------------------------------------------------------------------------------------

void divergent_barrier_kernel(int* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

void exited_threads_arrive_kernel(int* out) {
  if (threadIdx.x >= 40) return;  // the rest still pass the barrier below
  out[threadIdx.x] = 1;
  __syncthreads();
  out[threadIdx.x] += 1;
}

void warp_deadlock_kernel(int* out) {
  if (threadIdx.x == 0) __syncthreads();  // lane 0 never reaches the __syncwarp its warp waits in
  __syncwarp();
  if (threadIdx.x != 0) __syncthreads();
  out[threadIdx.x] = 1;
}

TEST(SimtEmulator, DivergentBarrierIsAnErrorNamingTheKernel) {
  int* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, 64 * 4), cudaSuccess);
  simt::launch(divergent_barrier_kernel, "divergent_barrier_kernel", "", 0, 1, 64)(d);
  const cudaError_t e = cudaDeviceSynchronize();
  EXPECT_EQ(e, cudaErrorLaunchFailure);
  const std::string msg = cudaGetErrorString(e);
  EXPECT_NE(msg.find("divergent_barrier_kernel"), std::string::npos) << msg;
  EXPECT_NE(msg.find("divergent __syncthreads"), std::string::npos) << msg;
  cudaGetLastError();

  simt::launch(warp_deadlock_kernel, "warp_deadlock_kernel", "", 0, 1, 64)(d);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
  const std::string msg2 = cudaGetErrorString(cudaErrorLaunchFailure);
  EXPECT_NE(msg2.find("warp_deadlock_kernel"), std::string::npos) << msg2;
  EXPECT_NE(msg2.find("deadlock"), std::string::npos) << msg2;
  cudaGetLastError();

  // The emulator recovers: a correct launch afterwards runs.
  simt::launch(exited_threads_arrive_kernel, "exited_threads_arrive_kernel", "", 0, 1, 64)(d);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto out = host_copy(d, 40);
  for (int v : out) EXPECT_EQ(v, 2);
  cudaFree(d);
}

// ---- launch limits ----------------------------------------------------------------------------------

void noop_kernel(int) {}

TEST(SimtEmulator, LaunchLimitsFailLikeOnAGpu) {
  cudaGetLastError();
  simt::launch(noop_kernel, "noop_kernel", "", 0, 1, 1025)(0);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  simt::launch(noop_kernel, "noop_kernel", "", 128, 1, 256)(0);  // __launch_bounds__(128)
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchOutOfResources);
  simt::launch(noop_kernel, "noop_kernel", "", 0, dim3(1, 65536), 32)(0);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  simt::launch(noop_kernel, "noop_kernel", "", 0, 1, 32, 64 * 1024)(0);  // > 48 KiB without opting in
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaFuncSetAttribute(noop_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 228 * 1024),
            cudaErrorInvalidValue);
  cudaGetLastError();
  ASSERT_EQ(cudaFuncSetAttribute(noop_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024), cudaSuccess);
  simt::launch(noop_kernel, "noop_kernel", "", 0, 1, 32, 64 * 1024)(0);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

// ---- memory -------------------------------------------------------------------------------------------

TEST(SimtEmulator, CopyDirectionAndRangeAreChecked) {
  cudaGetLastError();
  std::vector<float> host(16, 1.f), other(16);
  float* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, 16 * 4), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(other.data(), host.data(), 64, cudaMemcpyHostToDevice), cudaErrorInvalidValue);  // dst is host
  EXPECT_EQ(cudaMemcpy(d, host.data(), 64, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);             // src is host
  EXPECT_EQ(cudaMemcpy(d, host.data(), 68, cudaMemcpyHostToDevice), cudaErrorInvalidValue);             // past the end
  EXPECT_EQ(cudaMemsetAsync(host.data(), 0, 64), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpy(d, host.data(), 64, cudaMemcpyHostToDevice), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(other.data(), d, 64, cudaMemcpyDefault), cudaSuccess);
  EXPECT_EQ(other, host);
  void* huge = nullptr;
  EXPECT_EQ(cudaMalloc(&huge, size_t{1} << 50), cudaErrorMemoryAllocation);
  EXPECT_EQ(cudaFree(other.data()), cudaErrorInvalidValue);
  cudaGetLastError();
  cudaFree(d);
}

void fill_kernel(float* out, float v) { out[blockIdx.x * blockDim.x + threadIdx.x] = v; }

TEST(SimtEmulator, StreamWorkIsDeferredUntilSynchronized) {
  const char* mode = std::getenv("HELIX_SIMT_STREAMS");
  if (mode != nullptr && std::string(mode) == "sync") GTEST_SKIP() << "HELIX_SIMT_STREAMS=sync";
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  float* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, 64 * 4), cudaSuccess);
  simt::launch(fill_kernel, "fill_kernel", "", 0, 2, 32, 0, s)(d, 3.f);
  // Device memory is host memory here: peeking shows the kernel has not run (fresh memory is 0xFF).
  uint32_t bits;
  std::memcpy(&bits, d, 4);
  EXPECT_EQ(bits, 0xFFFFFFFFu);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ(d[63], 3.f);
  // A copy to pageable host memory returns complete.
  simt::launch(fill_kernel, "fill_kernel", "", 0, 2, 32, 0, s)(d, 5.f);
  std::vector<float> out(64);
  ASSERT_EQ(cudaMemcpyAsync(out.data(), d, 256, cudaMemcpyDeviceToHost, s), cudaSuccess);
  EXPECT_EQ(out[0], 5.f);
  cudaFree(d);
  cudaStreamDestroy(s);
}

// ---- schedules and shared memory -------------------------------------------------------------------------

// Thread i writes slot i, then (without a barrier: the bug) reads slot i + 1 of its neighbour.
void racy_kernel(float* out) {
  auto* s = static_cast<float*>(simt::detail::static_shared(reinterpret_cast<const void*>(&racy_kernel), 65 * 4, 4));
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncwarp();  // a warp-level sync only: neighbours in other warps may not have written yet
  out[threadIdx.x] = s[threadIdx.x + 1];
}

std::vector<float> run_racy(const char* schedule) {
  setenv("HELIX_SIMT_SCHEDULE", schedule, 1);
  float* d = nullptr;
  EXPECT_EQ(cudaMalloc(&d, 64 * 4), cudaSuccess);
  simt::launch(racy_kernel, "racy_kernel", "", 0, 1, 64)(d);
  auto out = host_copy(d, 64);
  unsetenv("HELIX_SIMT_SCHEDULE");
  cudaFree(d);
  return out;
}

TEST(SimtEmulator, MissingBarrierShowsUpAcrossSchedules) {
  const auto fwd = run_racy("forward"), rev = run_racy("reverse");
  // Thread 31 reads thread 32's slot: not yet written under the forward order (0xFF-filled shared
  // memory reads as NaN), written under the reverse one. The schedules disagree: the barrier is missing.
  EXPECT_TRUE(std::isnan(fwd[31]));
  EXPECT_EQ(rev[31], 32.f);
  EXPECT_TRUE(std::isnan(rev[63]));  // slot 64 is never written: uninitialized shared memory is NaN
  EXPECT_NE(std::memcmp(fwd.data(), rev.data(), 64 * 4), 0);
}

// Thread 0 of each block appends its linear block index (a data race on a GPU; here blocks run one at a
// time, so it records their order).
void block_order_kernel(int* next, int* order) {
  if (threadIdx.x == 0) order[(*next)++] = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
}

std::vector<int> run_block_order(const char* schedule) {
  setenv("HELIX_SIMT_SCHEDULE", schedule, 1);
  int *next = nullptr, *order = nullptr;
  EXPECT_EQ(cudaMalloc(&next, 4), cudaSuccess);
  EXPECT_EQ(cudaMalloc(&order, 24 * 4), cudaSuccess);
  EXPECT_EQ(cudaMemset(next, 0, 4), cudaSuccess);
  simt::launch(block_order_kernel, "block_order_kernel", "next,order", 0, dim3(2, 3, 4), 64)(next, order);
  auto out = host_copy(order, 24);
  unsetenv("HELIX_SIMT_SCHEDULE");
  cudaFree(next);
  cudaFree(order);
  return out;
}

TEST(SimtEmulator, BlocksRunInTheScheduleOrder) {
  std::vector<int> forward(24);
  for (int i = 0; i < 24; ++i) forward[i] = i;
  const std::vector<int> reverse(forward.rbegin(), forward.rend());
  EXPECT_EQ(run_block_order("forward"), forward);
  EXPECT_EQ(run_block_order("reverse"), reverse);
  const auto r1 = run_block_order("random:1"), r2 = run_block_order("random:2");
  EXPECT_EQ(run_block_order("random:1"), r1);  // reproducible from the seed
  EXPECT_NE(r1, r2);
  EXPECT_NE(r1, forward);
  for (auto r : {r1, r2}) {  // every block runs once
    std::sort(r.begin(), r.end());
    EXPECT_EQ(r, forward);
  }
}

// ---- kernel pointers -------------------------------------------------------------------------------------

struct CopyParams {
  const float* in;  // [n]
  float* out;       // [n]
  int64_t n = 0;
};

void params_kernel(CopyParams p, const int* flag) {
  if (threadIdx.x < p.n) p.out[threadIdx.x] = p.in[threadIdx.x] + (flag != nullptr ? 1.f : 0.f);
}

std::string launch_error(const CopyParams& p, const int* flag, const char* names = "p{in,out,n},flag") {
  cudaGetLastError();
  simt::launch(params_kernel, "params_kernel", names, 0, 1, 8)(p, flag);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? "" : std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
}

TEST(SimtEmulator, EveryKernelPointerMustBeDeviceMemory) {
  std::vector<float> host(8, 2.f);
  const int host_flag = 1;
  float* in = device_copy(host);
  float* out = device_copy(std::vector<float>(8, 0.f));
  int* flag = device_copy(std::vector<int>{1});
  EXPECT_EQ(launch_error({in, out, 8}, nullptr), "");       // device pointers and null
  EXPECT_EQ(launch_error({in + 8, out + 8, 0}, flag), "");  // one past the end: an empty range
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);

  std::string e = launch_error({host.data(), out, 8}, nullptr);
  EXPECT_NE(e.find("cudaErrorIllegalAddress"), std::string::npos) << e;
  EXPECT_NE(e.find("params_kernel"), std::string::npos) << e;
  EXPECT_NE(e.find("parameter p.in = "), std::string::npos) << e;
  EXPECT_NE(e.find("not device memory"), std::string::npos) << e;
  e = launch_error({in, out, 8}, &host_flag);
  EXPECT_NE(e.find("parameter flag = "), std::string::npos) << e;
  e = launch_error({in, out + 9, 8}, nullptr);  // past the end of its allocation
  EXPECT_NE(e.find("parameter p.out = "), std::string::npos) << e;
  e = launch_error({in, host.data(), 8}, nullptr, "");  // no names: positions
  EXPECT_NE(e.find("parameter #0.field #1 = "), std::string::npos) << e;
  e = launch_error({in, out, 8}, nullptr, "p{in,out},flag");  // names that miss a field
  EXPECT_NE(e.find("cudaErrorInvalidValue"), std::string::npos) << e;
  EXPECT_NE(e.find("translate.py"), std::string::npos) << e;
  float* freed = device_copy(host);
  ASSERT_EQ(cudaFree(freed), cudaSuccess);
  EXPECT_NE(launch_error({freed, out, 8}, nullptr).find("parameter p.in = "), std::string::npos);

  // Only the two good launches ran: out = in + 0 (the second wrote nothing).
  for (float v : host_copy(out, 8)) EXPECT_EQ(v, 2.f);
  cudaFree(in);
  cudaFree(out);
  cudaFree(flag);
}

// ---- allocation padding -------------------------------------------------------------------------------

[[maybe_unused]] void read_at_kernel(const float* in, float* out, int i) { out[0] = in[i]; }

TEST(SimtEmulatorDeathTest, OverrunIntoAllocationPaddingIsReported) {
#if !defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "needs AddressSanitizer: runs in the sanitizer build (build-asan/)";
#else
  float *in = nullptr, *out = nullptr;
  ASSERT_EQ(cudaMalloc(&in, 9 * 4), cudaSuccess);  // 36 bytes: cudaMalloc rounds to 256
  ASSERT_EQ(cudaMalloc(&out, 4), cudaSuccess);
  simt::launch(read_at_kernel, "read_at_kernel", "in,out,i", 0, 1, 1)(in, out, 8);  // the last element
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_DEATH(
      {
        simt::launch(read_at_kernel, "read_at_kernel", "in,out,i", 0, 1, 1)(in, out, 9);  // bytes 36..39
        cudaDeviceSynchronize();
      },
      "use-after-poison");
  cudaFree(in);
  cudaFree(out);
#endif
}

}  // namespace

#endif  // HELIX_CUDA_EMULATOR
