// Linear layers through cuBLAS (contracts: cpp/include/helix/ops/linear.hpp, head_linear.hpp):
// y[T, N] = x[T, K] @ w[N, K]^T with bf16 or fp32 inputs and fp32 compute. Row-major y (row stride ldy) is
// column-major y^T [N, T] = w (col-major [K, N], transposed) x x^T (col-major [K, T], leading dimension ldx).
#include "common.cuh"
#include "helix/ops/head_linear.hpp"
#include "helix/ops/linear.hpp"

#if HELIX_HAVE_CUBLAS
#include <cublas_v2.h>
#endif

namespace helix::cuda {

#if HELIX_HAVE_CUBLAS

namespace {

void check_cublas(cublasStatus_t status, const char* expr, const char* file, int line) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  throw Error(::helix::detail::concat(file, ":", line, ": ", expr, " failed: ", cublasGetStatusName(status), " (",
                                      cublasGetStatusString(status), ")"));
}
#define HELIX_CUBLAS_CHECK(expr) check_cublas((expr), #expr, __FILE__, __LINE__)

// One handle per thread and device, created on first use. Never destroyed: destroying it from a static
// destructor can run after the CUDA runtime has shut down.
cublasHandle_t handle() {
  constexpr int kMaxDevices = 64;
  static thread_local cublasHandle_t handles[kMaxDevices] = {};
  int dev = 0;
  HELIX_CUDA_CHECK(cudaGetDevice(&dev));
  HELIX_CHECK(dev < kMaxDevices, "linear: device index ", dev, " out of range");
  if (handles[dev] == nullptr) HELIX_CUBLAS_CHECK(cublasCreate(&handles[dev]));
  return handles[dev];
}

}  // namespace

bool built_with_cublas() { return true; }

namespace {

// cuBLAS types of a (x, w) input dtype: bf16 (fp32 compute) or strict fp32 (no TF32: the default math mode).
cudaDataType_t input_type(DType dtype) {
  HELIX_CHECK(dtype == DType::Float32 || dtype == DType::BFloat16, "linear: inputs must be float32 or bfloat16");
  return dtype == DType::Float32 ? CUDA_R_32F : CUDA_R_16BF;
}

}  // namespace

void launch_linear(const LinearParams& p, StreamHandle stream) {
  if (p.T == 0 || p.N == 0) return;
  HELIX_CHECK(p.y_dtype == DType::Float32 || p.y_dtype == DType::BFloat16,
              "linear: output dtype must be float32 or bfloat16");
  HELIX_CHECK(p.x_dtype == p.w_dtype, "linear: x and w must have one dtype on cuda");
  HELIX_CHECK(p.x_dtype == DType::BFloat16 || p.y_dtype == DType::Float32,
              "linear: float32 inputs need a float32 output");
  HELIX_CHECK(p.T <= 0x7fffffff && p.N <= 0x7fffffff && p.K <= 0x7fffffff && p.ldx <= 0x7fffffff && p.ldy <= 0x7fffffff,
              "linear: dimension too large");
  const cudaDataType_t in = input_type(p.x_dtype);
  if (p.K == 0) {
    if (!p.accumulate) {
      const size_t es = dtype_size(p.y_dtype);  // y = 0: one row at a time (rows ldy apart; K == 0 is rare)
      for (int64_t t = 0; t < p.T; ++t) {
        HELIX_CUDA_CHECK(cudaMemsetAsync(static_cast<unsigned char*>(p.y) + t * p.ldy * es, 0, p.N * es, stream));
      }
    }
    return;
  }
  cublasHandle_t h = handle();
  HELIX_CUBLAS_CHECK(cublasSetStream(h, stream));
  const float alpha = 1.f, beta = p.accumulate ? 1.f : 0.f;
  const int m = static_cast<int>(p.N), n = static_cast<int>(p.T), k = static_cast<int>(p.K);
  HELIX_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, p.w, in, k, p.x, in,
                                  static_cast<int>(p.ldx), &beta, p.y,
                                  p.y_dtype == DType::Float32 ? CUDA_R_32F : CUDA_R_16BF, static_cast<int>(p.ldy),
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// Batch h: y_h^T [N, T] (col-major, ld ldy) = w_h^T (w_h row-major [N, K] = col-major [K, N]) x x_h^T
// (x_h row-major [T, K] with row stride ldx = col-major [K, T], ld ldx).
void launch_head_linear(const HeadLinearParams& p, StreamHandle stream) {
  if (p.T == 0 || p.N == 0 || p.H == 0) return;
  HELIX_CHECK(p.K > 0, "head_linear: K must be positive");
  HELIX_CHECK(p.T <= 0x7fffffff && p.N <= 0x7fffffff && p.K <= 0x7fffffff && p.H <= 0x7fffffff && p.ldx <= 0x7fffffff &&
                  p.ldy <= 0x7fffffff,
              "head_linear: dimension too large");
  HELIX_CHECK(p.x_dtype == p.w_dtype, "head_linear: x and w must have one dtype on cuda");
  const cudaDataType_t in = input_type(p.x_dtype);
  cublasHandle_t h = handle();
  HELIX_CUBLAS_CHECK(cublasSetStream(h, stream));
  const float alpha = 1.f, beta = 0.f;
  HELIX_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(p.N), static_cast<int>(p.T), static_cast<int>(p.K), &alpha, p.w, in,
      static_cast<int>(p.K), p.N * p.K, p.x, in, static_cast<int>(p.ldx), p.x_head_stride, &beta, p.y, CUDA_R_32F,
      static_cast<int>(p.ldy), p.y_head_stride, static_cast<int>(p.H), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

#else

bool built_with_cublas() { return false; }

void launch_linear(const LinearParams&, StreamHandle) {
  throw Error("linear: helix was built with CUDA but without cuBLAS (install nvidia-cublas and reconfigure)");
}

void launch_head_linear(const HeadLinearParams&, StreamHandle) {
  throw Error("head_linear: helix was built with CUDA but without cuBLAS (install nvidia-cublas and reconfigure)");
}

#endif

}  // namespace helix::cuda
